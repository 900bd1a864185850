"""Demo steps: a P0 fault injected at the simulator becomes an incident with its action and page.

Appended to rollbackctl.demo's STEPS when the demo imports this module (SCENARIOS). The monitor is
the one `rollbackctl dev up` started (`rollbackctl monitor`), polling every second.
"""

from __future__ import annotations

import time

import httpx

from rollbackctl.demo import Demo, step, wait_until

WID = "incident-hot_wallet"


@step("P0: the hot wallet drops below $100K (injected at the simulator); the monitor opens an incident")
def p0_fault(demo: Demo) -> None:
    url = demo.core_url
    demo.ensure_operator("oscar", "on_call", show=False)
    demo.cli("monitor", "--status")
    httpx.delete(f"{url}/sim/actions", timeout=5)
    t0 = time.time()
    print(f"$ curl -X POST {url}/sim/faults -d '{{\"hot_wallet_usd\": 60000}}'")
    httpx.post(f"{url}/sim/faults", json={"hot_wallet_usd": 60_000}, timeout=5).raise_for_status()
    acts = wait_until("the immediate action", lambda: httpx.get(f"{url}/sim/actions", timeout=5).json(),
                      lambda a: any(x["action"] == "pause_large_withdrawals" for x in a), 30)
    print(f"\nThe simulator performed {acts[0]['action']} {acts[0]['body']} "
          f"{_since(acts[0]['at'], t0)} after the fault (3 one-second reads of hold included)")
    pages = wait_until("the page", lambda: httpx.get(f"{url}/sim/pagerduty", timeout=5).json(),
                       lambda p: any("Hot wallet" in x.get("payload", {}).get("summary", "") for x in p), 30)
    page = next(x for x in pages if "Hot wallet" in x.get("payload", {}).get("summary", ""))
    print(f"PagerDuty (the simulator's sink) got a {page['payload']['severity']} {page['event_action']} at "
          f"escalation level {page['payload']['custom_details']['escalation_level']}:\n  "
          f"{page['payload']['summary'][:300]}")
    wait_until("the incident to take input", lambda: demo.incident(WID), lambda r: r is not None and r["ready"], 30)
    print()
    demo.cli("incidents")


@step("P0: the on-call acknowledges the page in the PagerDuty app: seen (re-paging stops), not the decision")
def p0_pagerduty_ack(demo: Demo) -> None:
    url = demo.core_url
    alert = wait_until("the alert in PagerDuty", lambda: httpx.get(f"{url}/sim/pagerduty/incidents", timeout=5).json(),
                       lambda a: any("/hot_wallet-" in x["dedup_key"] and x["status"] == "triggered" for x in a), 30)
    key = next(x["dedup_key"] for x in alert if "/hot_wallet-" in x["dedup_key"])
    print("(the simulator's PagerDuty app posts PagerDuty's signed v3 webhook to `rollbackctl paging serve`)")
    print(f"$ curl -X POST {url}/sim/pagerduty/app/acknowledge -d '{{\"dedup_key\": \"{key}\", "
          f"\"user\": \"Olive (PagerDuty app)\"}}'")
    hook = httpx.post(f"{url}/sim/pagerduty/app/acknowledge", json={"dedup_key": key, "user": "Olive (PagerDuty app)"},
                      timeout=10).json()
    print(f"  webhook delivered: HTTP {hook.get('status')}" + (f" ({hook['error']})" if hook.get("error") else ""))
    wait_until("the incident to see it", lambda: demo.incident(WID),
               lambda r: r is not None and (r.get("sla") or {}).get("seen_by"), 30)
    demo.cli("incidents")
    print("\nSeen, not acknowledged: the signed `rollbackctl ack` below is still the manual's 5-minute confirm.")


@step("P0: on-call acknowledges (5-min SLA), ticks the further step, the fault clears, on-call resolves")
def p0_resolve(demo: Demo) -> None:
    url = demo.core_url
    oncall = demo.notes.get("on_call", "oscar")
    demo.cli("ack", WID, "--as", oncall)
    demo.cli("tick", WID, "cold_transfer", "--as", oncall, "--note", "$2M moved from cold storage")
    print("\nResolving while the monitor still sees the wallet low is refused:")
    demo.cli("resolve", WID, "--as", oncall, ok=(4,))
    print(f"$ curl -X DELETE {url}/sim/faults")
    httpx.delete(f"{url}/sim/faults", timeout=5)
    wait_until("the monitor to report it clear", lambda: demo.incident(WID), lambda r: r and r["condition"] == "clear",
               30)
    demo.cli("resolve", WID, "--as", oncall, "--reason", "wallet refilled")
    mine = lambda ps: [p for p in ps if "/hot_wallet-" in p.get("dedup_key", "")]  # noqa: E731
    pages = wait_until("the PagerDuty resolve", lambda: httpx.get(f"{url}/sim/pagerduty", timeout=5).json(),
                       lambda ps: any(p["event_action"] == "resolve" for p in mine(ps)), 30)
    print("\nPagerDuty events of the incident: " + ", ".join(p["event_action"] for p in mine(pages)))
    acts = httpx.get(f"{url}/sim/actions", timeout=5).json()
    print("Trading-core actions: " + ", ".join(a["action"] for a in acts))


def _since(at: str, t0: float) -> str:
    from datetime import datetime

    return f"{datetime.fromisoformat(at.replace('Z', '+00:00')).timestamp() - t0:.2f} s"
