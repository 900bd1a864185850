"""Concurrency: N single-module rollbacks started at once on one worker, each confirmed as soon as
it waits for confirmation and closed without restore (drill mode, short observation).

Reports wall time, throughput, refused decisions (should be none), audit records per change set
(exactly one), compare-and-swap conflicts on the same switch (audit `attempts` > 1) and the worker's
peak RSS.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

import random

from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError

from bench.stack import BenchStack
from bench.stats import summary
from manual import switches
from manual.rollback import Durations, Scope, Severity
from rollbackctl.temporal_client import connect
from workflows.models import Decision, Progress, RollbackInput

# The manual's own rows (not the Level 3 switch: a bench does not put the simulator in maintenance).
TARGETS = [s.name for s in switches.SWITCHES if s.name != "global_api_enabled"]


async def run(st: BenchStack, rollbacks: int = 200) -> dict:
    client = await connect(st.temporal)
    tag = uuid.uuid4().hex[:6]
    quick = Durations(observe=timedelta(seconds=1), check_interval=timedelta(milliseconds=500))
    refused: list[str] = []
    timeouts: list[str] = []
    latencies: list[float] = []

    async def one(i: int) -> str:
        inc = f"conc-{tag}-{i}"
        t0 = time.monotonic()
        h = await client.start_workflow(
            "RollbackWorkflow",
            RollbackInput(incident_id=inc, summary="bench", severity=Severity.CRITICAL, scope=Scope.SINGLE,
                          switch=TARGETS[i % len(TARGETS)], requested_by="oscar", reason="concurrency benchmark",
                          drill=True, durations=quick),
            id=f"rollback-{inc}", task_queue=st.temporal.task_queue)
        done: set[str] = set()
        await asyncio.sleep(quick.observe.total_seconds())
        while True:
            try:
                desc = await h.describe()
                if desc.status is not None and desc.status.name != "RUNNING":
                    break
                p: Progress = await h.query("progress", result_type=Progress)
            except RPCError as e:  # an overloaded 2-core box: note it and poll again
                timeouts.append(str(e))
                await asyncio.sleep(1.0)
                continue
            aw = p.awaiting.expects if p.awaiting else None
            try:
                if aw == "confirm" and "confirm" not in done:
                    await h.execute_update("confirm", Decision(actor="oscar", reason="bench"))
                    done.add("confirm")
                elif aw == "fix" and "fix" not in done:
                    await h.execute_update("fix", Decision(actor="alice", restore=False, reason="bench"))
                    done.add("fix")
            except WorkflowUpdateFailedError as e:
                refused.append(f"{inc}: {e.cause}")
            except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as e:
                timeouts.append(str(e))
            await asyncio.sleep(0.5 + random.random())  # what a human or a bot polling status would do
        latencies.append(time.monotonic() - t0)
        return (await h.result())["status"]

    t0 = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(rollbacks)))
    wall = time.monotonic() - t0
    audit = [a for a in await st.store.audit() if a.source.startswith(f"rollback-conc-{tag}-")]
    per_wf: dict[str, int] = {}
    for a in audit:
        per_wf[a.source] = per_wf.get(a.source, 0) + 1
    conflicts = sum(1 for a in audit if (getattr(a, "attempts", None) or 1) > 1)
    return {
        "rollbacks": rollbacks,
        "completed": sum(1 for r in results if r in ("closed_without_restore", "restored")),
        "wall_s": round(wall, 2),
        "throughput_per_s": round(rollbacks / wall, 1),
        "per_rollback_s": summary(latencies),
        "refused_decisions": len(refused),
        "client_rpc_timeouts": len(timeouts),
        "audit_records": len(audit),
        "workflows_with_exactly_one_audit_record": sum(1 for n in per_wf.values() if n == 1),
        "cas_conflicts_retried": conflicts,
        "worker_peak_rss_mb": st.peak_rss_mb("worker"),
    }
