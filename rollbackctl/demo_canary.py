"""Demo steps: a Phase 3 canary promoting through its four stages (10 days run in a minute with
--time-scale 14400), then a second canary rolling back on a fault injected at the simulator.
Signing is on: each start is signed, and since Phase 3 turns global_betting_enabled on (two-person
rule) the second super admin approves it (`rollbackctl confirm <canary id>`) before anything applies.

Appended to rollbackctl.demo's STEPS when the demo imports this module (SCENARIOS).
"""

from __future__ import annotations

import json
import time

import httpx

from rollbackctl.demo import Demo, DemoError, step

SCALE = "14400"  # 10 days in 60 s; check intervals at least 1 s, gate re-pages at least 30 s apart
PHASE1 = (("global_betting_enabled", "false", "alice"), ("routing_mode", "HL_MODE", "rita"),
          ("betting_traffic_pct", "100", "rita"), ("auto_mode_switch", "false", "rita"))


def _status(demo: Demo, target: str) -> dict:
    return json.loads(demo.cli("canary", "status", target, "--json", show=False).stdout)


def _wait(demo: Demo, target: str, what: str, pred, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        s = _status(demo, target)
        if (s["stage"], s["status"]) != last:
            last = (s["stage"], s["status"])
            where = f"stage {s['stage']}/{s['stages']} {s['stage_name']}" if s["stage"] else ""
            print(f"  ... {s['status']:<13} {where}", flush=True)
        if pred(s):
            return s
        time.sleep(0.5)
    raise DemoError(f"timed out waiting for {what}")


def _second_approval(demo: Demo, wid: str, reason: str, show_refusal: bool = False) -> None:
    """The start waits for a second super admin (nothing applied yet): the other one approves it."""
    _wait(demo, wid, "the start to wait for a second approval", lambda s: s["status"] == "awaiting_approval", 30)
    if show_refusal:
        demo.cli("canary", "status", wid)
        print(f"\nNothing is applied yet: {demo.super_admin} may not approve her own start a second time:")
        demo.cli("confirm", wid, "--as", demo.super_admin, ok=(3,))
        print()
    demo.cli("confirm", wid, "--as", demo.second_super_admin, "--reason", reason)


def _phase1(demo: Demo) -> None:
    """The configuration before the canary (Phase 2 done): internalization off, every order to HL."""
    for name, value, who in PHASE1:
        # --yes: a scripted reset; 5% -> 100% would otherwise be asked again (a 20x move from the safe value)
        demo.cli("switch", "set", name, value, "--as", who, "--reason", "demo: Phase 1 before the Phase 3 canary",
                 "--yes", show=False)
    httpx.delete(f"{demo.core_url}/sim/faults", timeout=5)


@step("The Phase 3 canary plan: four stages, each with its profile, pass criteria, gate and reasons")
def show_plan(demo: Demo) -> None:
    demo.cli("operator", "add", "oscar", "on_call", "--as", demo.super_admin, ok=(0, 4), show=False)
    demo.cli("canary", "plan", "phase3")


@step("Start it as a super admin (signed; it turns global_betting_enabled on, so a second super admin approves) "
      "at --time-scale 14400")
def start_canary(demo: Demo) -> None:
    url = demo.core_url
    print(f"A fresh simulated market (the positions earlier steps left would exceed Stage 1's $50K cap):\n"
          f"$ curl -X POST {url}/sim/reset")
    httpx.post(f"{url}/sim/reset", json={}, timeout=10).raise_for_status()
    _phase1(demo)
    print("A risk manager may not approve a plan that touches a Super Admin switch:")
    demo.cli("canary", "start", "phase3", "--as", demo.risk_manager, "--time-scale", SCALE, ok=(3,))
    print()
    p = demo.cli("canary", "start", "phase3", "--as", demo.super_admin, "--time-scale", SCALE,
                 "--reason", "demo: internalization launch")
    wid = next(line.split()[1] for line in p.stdout.splitlines() if line.startswith("workflow "))
    demo.notes["canary"] = wid
    print("\nTwo-person rule: the start counts as the first super admin's approval; the second signs hers:")
    _second_approval(demo, wid, "demo: launch plan reviewed", show_refusal=True)
    print("\nOnly one canary per phase:")
    demo.cli("canary", "start", "phase3", "--as", demo.super_admin, "--time-scale", SCALE, ok=(4,))


@step("Stages 1-3 promote on their own while the checks pass; Full Open waits for a risk manager")
def to_the_gate(demo: Demo) -> None:
    wid = demo.notes["canary"]
    _wait(demo, wid, "the gate before Full Open", lambda s: s["status"] == "waiting_gate", 90)
    demo.cli("canary", "status", "phase3")
    print("\nOn-call may not promote into Full Open:")
    demo.cli("canary", "promote", "phase3", "--as", "oscar", ok=(3,))
    demo.cli("canary", "promote", "phase3", "--as", demo.risk_manager, "--reason", "demo: stage 3 clean")


@step("Full Open runs its 3 days; the canary passes with every stage's change set in the audit")
def passes(demo: Demo) -> None:
    wid = demo.notes["canary"]
    s = _wait(demo, wid, "the canary to pass", lambda s: s["result"] is not None, 60)
    demo.cli("canary", "status", wid)
    if s["result"] != "passed":
        raise DemoError(f"{wid} ended {s['result']}: {s['detail']}")
    demo.cli("audit", "--limit", "4")


@step("A second canary: 2% error rate injected on day 5 rolls it back to Phase 1 and pages")
def rolls_back(demo: Demo) -> None:
    _phase1(demo)
    p = demo.cli("canary", "start", "phase3", "--as", demo.super_admin, "--time-scale", SCALE,
                 "--reason", "demo: relaunch")
    wid = next(line.split()[1] for line in p.stdout.splitlines() if line.startswith("workflow "))
    _second_approval(demo, wid, "demo: relaunch approved")
    _wait(demo, wid, "stage 2", lambda s: s["stage"] == 2, 60)
    url = demo.core_url
    print(f"$ curl -X POST {url}/sim/faults -d '{{\"error_rate\": 0.02}}'")
    httpx.post(f"{url}/sim/faults", json={"error_rate": 0.02}, timeout=5).raise_for_status()
    s = _wait(demo, wid, "the rollback", lambda s: s["result"] is not None, 60)
    httpx.delete(f"{url}/sim/faults", timeout=5)
    demo.cli("canary", "status", wid)
    if s["result"] != "rolled_back":
        raise DemoError(f"{wid} ended {s['result']}, expected rolled_back")
    demo.cli("audit", "--limit", "1")
    demo.cli("switch", "get", "global_betting_enabled")
    pages = [p for p in httpx.get(f"{url}/sim/pagerduty", timeout=5).json() if wid in json.dumps(p)]
    print(f"\nPagerDuty events for {wid}:")
    for p in pages:
        print(f"  {p.get('event_action'):<8} {p.get('payload', {}).get('summary', '')[:110]}")
