"""Demo steps: a short game day (`rollbackctl drill`), end to end, scored.

Appended to rollbackctl.demo's STEPS when the demo imports this module (SCENARIOS). A P0 scenario generated
from the manual's alert table runs at speed 30: the incident is opened marked [DRILL] with its acknowledge
SLA at 5 min / 30 = 10 s, the fault goes in at the simulator, the stack's own P0 monitor sees it, the on-call
acknowledges and ticks a checklist step, the facilitator ends the drill (the fault comes out, the monitor sees
the clear), the risk manager resolves with --undo (the alert's immediate action capped a switch; its recovery
is a person's), and `drill report` scores each answer against the scaled SLA. The dev stack
sends a drill's pages to a game-day PagerDuty service and its chat to a game-day channel
(ROLLBACKCTL_PAGERDUTY_DRILL_ROUTING_KEYS / ROLLBACKCTL_SLACK_DRILL_WEBHOOK_URLS): the real ones stay quiet.
"""

from __future__ import annotations

import httpx

from rollbackctl.demo import Demo, DemoError, step, wait_until

SCENARIO = "p0-hedge_margin"
SPEED = "30"


@step("Drill: a P0 game day at speed 30 (hedge margin <200%), answered, ended and scored")
def drill(demo: Demo) -> None:
    import re

    from rollbackctl.devstack import DRILL_SLACK_CHANNEL, dev_routing_keys

    url = demo.core_url
    oncall = demo.notes.get("on_call", "oscar")
    demo.ensure_operator(oncall, "on_call", show=False)
    before = {s["name"]: s["value"] for s in demo.cli_json("switch", "list")}
    demo.cli("drill", "list", "--kind", "p0")
    started = demo.cli("drill", "start", SCENARIO, "--speed", SPEED, "--as", oncall)
    m = re.search(r"rollbackctl ack (\S+) --as", started.stdout)
    if m is None:
        raise DemoError("`drill start` did not name the drill incident")
    wid = m.group(1)
    row = wait_until("the drill incident to be paged", lambda: demo.incident(wid),
                     lambda r: r is not None and r["ready"] and (r.get("sla") or {}).get("paged_at"), 60)
    print()
    demo.cli("incidents")
    drill_keys = set(dev_routing_keys(drill=True))
    pages = [p for p in httpx.get(f"{url}/sim/pagerduty", timeout=5).json()
             if str(p.get("dedup_key", "")).startswith(f"{wid}/")]
    on_drill = sum(1 for p in pages if p.get("routing_key") in drill_keys)
    print(f"\nPagerDuty (the simulator's sink): {len(pages)} page(s) of the drill, {on_drill} on the game-day "
          f"service's key; chat in #{DRILL_SLACK_CHANNEL}.")
    if pages and on_drill != len(pages):
        raise DemoError("a drill page went to a real routing key")
    demo.cli("ack", wid, "--as", oncall)
    demo.cli("tick", wid, row["checklist"][0]["id"], "--as", oncall, "--note", "drill: hedge collateral topped up")
    demo.cli("drill", "end", wid)
    wait_until("the monitor to see the clear", lambda: demo.incident(wid), lambda r: r and r["condition"] == "clear",
               60)
    # the alert's immediate action capped a switch, and this rule's recovery is a person's: the risk manager
    # resolves with --undo, as in a real incident (a drill leaves the matrix as it found it)
    demo.cli("resolve", wid, "--as", demo.risk_manager, "--undo", "--reason", "drill over")
    wait_until("the incident to end", lambda: demo.incident(wid), lambda r: r is None, 30)
    after = {s["name"]: s["value"] for s in demo.cli_json("switch", "list")}
    moved = {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}
    if moved:
        raise DemoError(f"the drill left switches changed: {moved}")
    print("Every switch is back where the drill found it.\n")
    report = demo.cli("drill", "report", wid)
    if "| acknowledged |" not in report.stdout:
        raise DemoError("the drill report has no acknowledgement")
    print(f"\nThe drill's metrics carry drill=\"true\" (the dashboard's Drills row); its pages went to the game-day "
          f"service. History: `rollbackctl drill history --operator {oncall}`.")
