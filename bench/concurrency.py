"""Concurrency: N single-module rollbacks started at once on one worker, each confirmed as soon as
it waits for confirmation and closed without restore (drill mode, short observation), signed as the
CLI signs.

The client behaves like one bot watching N rollbacks, not like N busy loops: each rollback is first
looked at when its observation can have ended (start + observe), then once per `poll_s`, with at most
`max_inflight` queries in flight at once; completion comes from the workflow's result (a server-side
long poll), not from polling `describe`. Once a decision is accepted the next step is looked at right
away. (The previous client, describe + query every 0.5-1.5 s per rollback, made ~20 RPCs per rollback
and took a good part of the 2 cores itself.)

Reports wall time, throughput, per-rollback latency (start requested -> closed), start requested ->
its change set committed (the audit record's time: how long the flip waits when 200 arrive at once),
the client's RPCs,
refused decisions (should be none), audit records per change set (exactly one), compare-and-swap
conflicts on the same switch (audit `attempts` > 1), the worker's peak RSS, and from the histories:
events per rollback, workflow tasks that timed out (a sticky queue not served within its 1 s
schedule-to-start timeout: the task moves to the shared queue) and how long workflow tasks waited to
be picked up (the worker's queueing under load).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta

from temporalio.client import (
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.service import RPCError

from bench.stack import BenchStack
from bench.stats import summary
from manual import switches
from manual.rollback import Durations, Scope, Severity
from core.temporal_client import connect
from contracts.progress import Decision, Progress
from workflows.models import RollbackInput

# The manual's own rows (not the Level 3 switch: a bench does not put the simulator in maintenance).
TARGETS = [s.name for s in switches.SWITCHES if s.name != "global_api_enabled"]
DECISIONS = {
    "confirm": Decision(actor="oscar", reason="bench"),
    "fix": Decision(actor="alice", restore=False, reason="bench"),
}


async def history_stats(client, wids: list[str], concurrency: int = 8) -> dict:
    """Events per workflow, workflow-task timeouts and schedule-to-start waits, from the histories."""
    sem = asyncio.Semaphore(concurrency)
    events: list[int] = []
    timeouts = 0
    waits: list[float] = []

    async def one(wid: str) -> None:
        nonlocal timeouts
        async with sem:
            h = await client.get_workflow_handle(wid).fetch_history()
        events.append(len(h.events))
        at = {e.event_id: e.event_time.ToDatetime() for e in h.events}
        for e in h.events:
            kind = e.WhichOneof("attributes")
            if kind == "workflow_task_timed_out_event_attributes":
                timeouts += 1
            elif kind == "workflow_task_started_event_attributes":
                a = e.workflow_task_started_event_attributes
                waits.append((at[e.event_id] - at[a.scheduled_event_id]).total_seconds() * 1000)

    await asyncio.gather(*(one(w) for w in wids))
    return {"history_events_per_rollback": summary(events), "workflow_task_timeouts": timeouts,
            "workflow_task_schedule_to_start_ms": summary(waits)}


async def run(st: BenchStack, rollbacks: int = 200, poll_s: float = 1.0, max_inflight: int = 16) -> dict:
    client = await connect(st.temporal)
    tag = uuid.uuid4().hex[:6]
    quick = Durations(observe=timedelta(seconds=1), check_interval=timedelta(milliseconds=500))
    observe_s = quick.observe.total_seconds()
    refused: list[str] = []
    timeouts: list[str] = []
    latencies: list[float] = []
    rpcs = {"start": 0, "query": 0, "update": 0}
    requested: dict[str, float] = {}  # workflow id -> wall time its start was sent
    sem = asyncio.Semaphore(max_inflight)

    async def one(i: int) -> str:
        inc = f"conc-{tag}-{i}"
        wid = f"rollback-{inc}"
        inp = st.sign_start(RollbackInput(
            incident_id=inc, summary="bench", severity=Severity.CRITICAL, scope=Scope.SINGLE,
            switch=TARGETS[i % len(TARGETS)], requested_by="oscar", reason="concurrency benchmark",
            drill=True, durations=quick), "rollback.start", wid)
        t0 = time.monotonic()
        requested[wid] = time.time()
        h = await client.start_workflow("RollbackWorkflow", inp, id=wid, task_queue=st.temporal.task_queue)
        rpcs["start"] += 1
        result = asyncio.ensure_future(h.result())
        done: set[str] = set()
        next_look = t0 + observe_s  # it cannot wait for a confirmation before its observation ran
        while not result.done():
            delay = next_look - time.monotonic()
            if delay > 0:
                await asyncio.wait({result}, timeout=delay)
                continue
            next_look = time.monotonic() + poll_s
            async with sem:
                if result.done():
                    break
                try:
                    rpcs["query"] += 1
                    p: Progress = await h.query("progress", result_type=Progress)
                except (RPCError, WorkflowQueryFailedError) as e:  # closed meanwhile, or an overloaded box
                    if not result.done():
                        timeouts.append(f"query: {e}")
                    continue
                aw = p.awaiting.expects if p.awaiting else None
                if aw not in DECISIONS or aw in done:
                    continue
                try:
                    rpcs["update"] += 1
                    await h.execute_update(aw, st.signed(DECISIONS[aw], wid, aw, p.awaiting.step))
                    done.add(aw)
                    next_look = time.monotonic()  # the next step follows at once: look again now
                except WorkflowUpdateFailedError as e:
                    refused.append(f"{inc}: {e.cause}")
                except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as e:
                    timeouts.append(f"update: {e}")
        status = (await result)["status"]
        latencies.append(time.monotonic() - t0)
        return status

    t0 = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(rollbacks)))
    wall = time.monotonic() - t0
    audit = [a for a in await st.store.audit() if a.source.startswith(f"rollback-conc-{tag}-")]
    per_wf: dict[str, int] = {}
    for a in audit:
        per_wf[a.source] = per_wf.get(a.source, 0) + 1
    conflicts = sum(1 for a in audit if (getattr(a, "attempts", None) or 1) > 1)
    committed = [(datetime.fromisoformat(a.at.replace("Z", "+00:00")).timestamp() - requested[a.source]) * 1000
                 for a in audit if a.source in requested]
    return {
        "rollbacks": rollbacks,
        "completed": sum(1 for r in results if r in ("closed_without_restore", "restored")),
        "wall_s": round(wall, 2),
        "throughput_per_s": round(rollbacks / wall, 1),
        "per_rollback_s": summary(latencies),
        "start_to_change_committed_ms": summary(committed),
        "client_rpcs": rpcs,
        "refused_decisions": len(refused),
        "client_rpc_timeouts": len(timeouts),
        "audit_records": len(audit),
        "workflows_with_exactly_one_audit_record": sum(1 for n in per_wf.values() if n == 1),
        "cas_conflicts_retried": conflicts,
        "worker_peak_rss_mb": st.peak_rss_mb("worker"),
        **await history_stats(client, [f"rollback-conc-{tag}-{i}" for i in range(rollbacks)]),
    }
