"""P0 incidents at scale: N "Single-order deviation >5%" incidents, one per symbol, opened at once.

The issue's "200 P0 incidents (one per symbol) opened at once", on the shared bench stack: N symbols
S001.. (the simulator lists them: ROLLBACKCTL_SIM_EXTRA_SYMBOLS), each opened exactly as the P0 monitor
opens an incident (activities/monitor.py TemporalIncidents.deliver: signal-with-start of
IncidentWorkflow, id_conflict_policy USE_EXISTING), all N at the same moment. Each incident takes its
immediate action (POST /v1/actions/pause_symbol_hl_routing {"symbol": S...} at the simulator, a
regular activity), pages (PagerDuty Events v2 trigger at the simulator's sink, plus chat), loads the
roster and waits for an acknowledgement (`ready`).

Measured from the moment the first start is sent (every process shares this machine's clock):
- action_ms: until the simulator performed that symbol's pause (it stamps `at`);
- paged_ms: until that symbol was named in an event PagerDuty (the simulator's sink, at PagerDuty's real
  limit of 120 events a minute per routing key) accepted: the pager sends a storm of one rule family as
  one alert whose updates name the newcomers; first_notification_s: until PagerDuty would first have
  notified a person; the 429s and failed sends (0: no event lost);
- all_ready_s: until every incident answered `ready` to a query (polled, 16 queries in flight).
Then the cleanup, as operators would do it (measured too, not part of the figures above): the
condition clears (the monitor's clear report, same call), and a risk manager resolves each incident
with --undo, signed (resume_symbol_hl_routing at the simulator).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timezone

import httpx
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError

from bench.stack import BenchStack
from bench.stats import summary

RULE = "order_deviation"
ACTION = "pause_symbol_hl_routing"


def _ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


async def run(st: BenchStack, incidents: int = 200, max_inflight: int = 16, wait_paged: bool = True) -> dict:
    """`wait_paged=False`: done once every incident acted and is ready (bench/storm.py: other workflows
    page too, and PagerDuty's per-key limit then spreads the incidents' pages over minutes)."""
    from activities.monitor import TemporalIncidents
    from simulator.core import extra_symbol_names
    from core.temporal_client import connect
    from workflows.incident import IncidentWorkflow
    from contracts.incidents import ConditionReport, KeyState, ResolveRequest, incident_workflow_id

    client = await connect(st.temporal)
    base = st.core.url.rstrip("/")
    ns = f"bench{uuid.uuid4().hex[:4]}"
    symbols = extra_symbol_names(incidents)
    port = TemporalIncidents(client, st.temporal.task_queue, namespace=ns)
    sem = asyncio.Semaphore(max_inflight)
    async with httpx.AsyncClient(timeout=10) as http:
        listed = (await http.get(f"{base}/sim/status")).json().get("listed_symbols", 3)
        if listed < incidents + 3:
            raise RuntimeError(f"the simulator lists {listed} symbols; {incidents} incidents need "
                               f"ROLLBACKCTL_SIM_EXTRA_SYMBOLS >= {incidents}")

        def keystate(sym: str, firing: bool) -> KeyState:
            return KeyState(rule=RULE, symbol=sym, firing=firing, since=now, streak=2 if firing else 0,
                            values={"order_price_deviation": 0.08 if firing else 0.001})

        def report(firing: bool) -> ConditionReport:
            return ConditionReport(firing=firing, at=datetime.now(timezone.utc),
                                   values={"order_price_deviation": 0.08 if firing else 0.001},
                                   detail="bench: order_price_deviation=0.08 (> 0.05)" if firing
                                   else "bench: order_price_deviation=0.001 (<= 0.01)")

        # -- open N at once -----------------------------------------------------------------------
        now = datetime.now(timezone.utc)
        t0_wall, t0 = time.time(), time.monotonic()
        await asyncio.gather(*(port.deliver(keystate(s, True), report(True)) for s in symbols))
        starts_s = time.monotonic() - t0
        acted: dict[str, float] = {}
        paged: dict[str, float] = {}
        deadline = t0 + 180
        while len(acted) < incidents or (wait_paged and len(paged) < incidents):
            if time.monotonic() > deadline:
                raise TimeoutError(f"after 180 s: {len(acted)} actions, {len(paged)} pages of {incidents}")
            await asyncio.sleep(0.2)
            for a in (await http.get(f"{base}/sim/actions")).json():
                sym = (a.get("body") or {}).get("symbol")
                if a["action"] == ACTION and sym in symbols and sym not in acted:
                    acted[sym] = (_ts(a["at"]) - t0_wall) * 1000
            pd = (await http.get(f"{base}/sim/pagerduty/state")).json()
            for alert in pd["alerts"]:
                # a storm's alert names its members in each event's custom_details ("new": the ones it adds);
                # an incident paged alone is its own alert
                for e in alert["log"]:
                    if e["action"] != "trigger":
                        continue
                    named = (e.get("custom_details") or {}).get("new") or []
                    if not named and f"{ns}-{RULE}-" in str((e.get("custom_details") or {}).get("incident", "")):
                        named = [next((x for x in symbols if f"-{x}-" in str(e["custom_details"]["incident"])), None)]
                    for sym in named:
                        if sym in symbols and sym not in paged:
                            paged[sym] = (_ts(e["at"]) - t0_wall) * 1000
        handles = {s: client.get_workflow_handle_for(IncidentWorkflow.run, incident_workflow_id(RULE, s, ns))
                   for s in symbols}
        ready: set[str] = set()
        while len(ready) < incidents:
            if time.monotonic() > deadline:
                raise TimeoutError(f"after 180 s: {len(ready)} of {incidents} incidents ready")

            async def look(s: str) -> None:
                async with sem:
                    if (await handles[s].query(IncidentWorkflow.state)).ready:
                        ready.add(s)

            await asyncio.gather(*(look(s) for s in symbols if s not in ready))
        all_ready_s = time.monotonic() - t0
        rss = st.peak_rss_mb("worker")

        # -- clean up: the condition clears, a risk manager resolves with --undo (signed) ---------------
        t1 = time.monotonic()
        refused: list[str] = []

        async def close(s: str) -> str:
            async with sem:
                await port.deliver(keystate(s, False), report(False))
                for _ in range(20):
                    try:
                        await st.signer.decide(client, handles[s].id, "resolve",
                                               ResolveRequest(actor="rita", reason="bench cleanup", undo=True))
                        break
                    except WorkflowUpdateFailedError as e:  # e.g. the clear report not seen yet
                        refused.append(str(e.cause))
                        await asyncio.sleep(0.5)
            try:
                return (await handles[s].result()).status
            except RPCError:
                return "?"

        statuses = await asyncio.gather(*(close(s) for s in symbols))
        cleanup_s = time.monotonic() - t1
        resumed = sum(1 for a in (await http.get(f"{base}/sim/actions")).json()
                      if a["action"] == "resume_symbol_hl_routing" and (a.get("body") or {}).get("symbol") in symbols)
        pd = (await http.get(f"{base}/sim/pagerduty/state")).json()
        slack = (await http.get(f"{base}/sim/paging/state")).json()["slack"]
        from contracts.paging import QueueView, pager_workflow_id

        q = await client.get_workflow_handle(pager_workflow_id(st.temporal.task_queue)).query("queue",
                                                                                              result_type=QueueView)
    wall_acted = max(acted.values()) / 1000
    wall_paged = max(paged.values(), default=0) / 1000
    first_notified = min((_ts(n["at"]) - t0_wall for n in pd["notifications"]), default=None)
    return {
        # PagerDuty as a person meets it (the simulator's sink at PagerDuty's real limit: 120 events/min/key)
        "first_notification_s": round(first_notified, 2) if first_notified is not None else None,
        "every_symbol_named_s": round(wall_paged, 2),
        "notifications": len(pd["notifications"]),
        "pagerduty_events": pd["events_received"],
        "pagerduty_429": sum(1 for r in pd["rejected"] if r["status"] == 429),
        "pagerduty_rejected_other": sum(1 for r in pd["rejected"] if r["status"] != 429),
        "pager_failed_sends": sum(q.failed.values()),
        "slack_messages": len(slack["messages"]),
        "slack_429": sum(1 for r in slack["rejected"] if r["status"] == 429),
        "slack_mangled": sum(1 for m in slack["messages"] if m["mangled"]),
        "incidents": incidents,
        "action_ms": summary(list(acted.values())),
        "paged_ms": summary(list(paged.values())),
        "starts_sent_s": round(starts_s, 2),
        "all_acted_s": round(wall_acted, 2),
        "all_paged_s": round(wall_paged, 2),
        "all_ready_s": round(all_ready_s, 2),
        "throughput_acted_per_s": round(incidents / wall_acted, 1),
        "worker_peak_rss_mb": rss,
        "cleanup_resolve_s": round(cleanup_s, 1),
        "resolved": sum(1 for x in statuses if x == "resolved"),
        "resolve_retries": len(refused),
        "routing_resumed": resumed,
    }
