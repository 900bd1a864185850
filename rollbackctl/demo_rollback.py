"""Demo steps: a fault, a critical cross-module rollback, confirmation, fix, restore 5% -> full.

Appended to rollbackctl.demo's STEPS when the demo imports this module.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import httpx

from rollbackctl.demo import Demo, step, wait_until


def _sim_switch(demo: Demo, name: str) -> dict:
    return httpx.get(f"{demo.core_url}/sim/switches", timeout=5).json()["switches"][name]


@step("The on-call engineer, and the launch state: internalization on (two super admins), NORMAL_MODE")
def launch_state(demo: Demo) -> None:
    demo.ensure_operator("oscar", "on_call")
    print("Turning internalization on falls under the two-person rule: the change waits for a second super admin.")
    p = demo.cli("switch", "set", "global_betting_enabled", "true", "--as", demo.super_admin,
                 "--reason", "demo: Phase 3 launched, internalization on", ok=(6,))
    demo.approve_change(p, demo.second_super_admin, "demo: launch approved")
    demo.cli("switch", "set", "routing_mode", "NORMAL_MODE", "--as", demo.risk_manager,
             "--reason", "demo: internalize orders up to normal_threshold")
    wait_until("the simulator to apply NORMAL_MODE", lambda: _sim_switch(demo, "routing_mode"),
               lambda s: s["value"] == "NORMAL_MODE", 10, every=0.05)
    url, auth = demo.core_url, demo.core_auth
    print(f"\nThe trading core (simulator at {url}) follows etcd; its health right now:")
    h = httpx.get(f"{url}/v1/health", headers=auth, timeout=5).json()
    print("  " + ", ".join(f"{k}={h[k]}" for k in ("error_rate", "hl_connected", "hl_latency_ms", "hl_margin_ratio")))


@step("A fault: internal fills start failing (error rate 3%), injected at the simulator")
def inject_fault(demo: Demo) -> None:
    url, auth = demo.core_url, demo.core_auth
    print(f"$ curl -X POST {url}/sim/faults -d '{{\"error_rate\": 0.03}}'")
    httpx.post(f"{url}/sim/faults", json={"error_rate": 0.03}, timeout=5).raise_for_status()
    h = httpx.get(f"{url}/v1/health", headers=auth, timeout=5).json()
    print(f"  health now: error_rate={h['error_rate']} (the manual's failure line is 1%)")


@step("On-call starts a critical cross-module rollback (drill timings: observe 5 s)")
def start_rollback(demo: Demo) -> None:
    inc = f"DEMO-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    wid = f"rollback-{inc}"
    demo.notes["rollback"] = wid
    t0 = datetime.now(timezone.utc)
    demo.cli("rollback", "start", "--severity", "critical_path_failure", "--scope", "cross_module",
             "--incident", inc, "--as", "oscar", "--reason", "internal fills failing, error rate 3%",
             "--observe", "5s", "--interval", "1s", "--restore-observe", "5s", "--drill")
    sw = wait_until("HL_MODE at the simulator", lambda: _sim_switch(demo, "routing_mode"),
                    lambda s: s["value"] == "HL_MODE", 10, every=0.05)
    applied = datetime.fromisoformat(sw["applied_at"].replace("Z", "+00:00"))
    print(f"\nHL_MODE applied at the trading core {(applied - t0).total_seconds() * 1000:.0f} ms after the command "
          "started (the manual allows 1 s for routing_mode)")
    url = demo.core_url
    httpx.delete(f"{url}/sim/faults", timeout=5)
    print("All orders now go to HL: the failing internal fills stop (fault cleared at the simulator).")


@step("Watch it: checklist, change set, trading core confirms the revision, observation")
def watch(demo: Demo) -> None:
    wid = demo.notes["rollback"]
    wait_until("the rollback to wait for confirmation", lambda: demo.progress(wid),
               lambda p: (p.get("awaiting") or {}).get("expects") == "confirm", 60, every=0.05)
    demo.cli("status", wid)


@step("On-call confirms (signed); a risk manager may not re-enable internalization; two super admins do")
def confirm_and_fix(demo: Demo) -> None:
    wid = demo.notes["rollback"]
    demo.cli("confirm", wid, "--as", "oscar", "--reason", "error rate back under 0.2% on HL")
    wait_until("the rollback to wait for the fix", lambda: demo.progress(wid),
               lambda p: (p.get("awaiting") or {}).get("expects") == "fix", 30, every=0.05)
    print("\nThe fix is deployed. Restoring re-enables global_betting_enabled (a Super Admin switch):")
    demo.cli("fix", wid, "--as", demo.risk_manager, "--reference", "PR-4711", "--tests-passed", ok=(3,))
    demo.cli("fix", wid, "--as", demo.super_admin, "--reference", "PR-4711", "--tests-passed")
    p = wait_until("the second approval to be asked", lambda: demo.progress(wid),
                   lambda p: (p.get("awaiting") or {}).get("approved_by") == [demo.super_admin], 10, every=0.05)
    print(f"\nTwo-person rule: {p['awaiting']['prompt']}")
    demo.cli("fix", wid, "--as", demo.super_admin, "--reference", "PR-4711", "--tests-passed", ok=(3,))
    demo.cli("fix", wid, "--as", demo.second_super_admin, "--reference", "PR-4711", "--tests-passed")


@step("Restore through the 5% canary, then full")
def restore(demo: Demo) -> None:
    wid = demo.notes["rollback"]
    demo.cli("status", wid, "--follow")
    for name in ("routing_mode", "global_betting_enabled", "betting_traffic_pct"):
        print(f"  at the simulator: {name} = {_sim_switch(demo, name)['value']}")


@step("The audit trail of the incident, and the pages it sent")
def trail(demo: Demo) -> None:
    demo.cli("audit", "--limit", "4")
    url = demo.core_url
    pages = httpx.get(f"{url}/sim/pagerduty", timeout=5).json()
    wid = demo.notes["rollback"]
    mine = [p for p in pages if wid in json.dumps(p)]
    print(f"\nPagerDuty events for {wid} (received by the simulator's sink):")
    for p in mine:
        print(f"  {p.get('event_action'):<8} {p.get('payload', {}).get('summary', '')[:100]}")
