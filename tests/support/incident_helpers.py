"""Helpers of the P0 incident and monitor tests: a worker with stand-ins, waiting on queries."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from temporalio import activity
from temporalio.worker import Worker

from activities.switch_activities import SwitchActivities
from tests.support.standins import StandIns
from tests.support.wf_helpers import PagedWorker, terminate_idle
from workflows.incident import IncidentWorkflow
from contracts.incidents import (
    ConditionReport,
    IncidentInput,
    IncidentState,
    UndoGuardInput,
    UndoGuardResult,
    incident_workflow_id,
)
from workflows.registry import WORKFLOWS


class GuardStandIn:
    """`incident.undo_guard` answering what the test says (visibility is not on the time-skipping server)."""

    def __init__(self) -> None:
        self.result = UndoGuardResult(ok=True)
        self.calls: list[UndoGuardInput] = []

    @activity.defn(name="incident.undo_guard")
    async def undo_guard(self, inp: UndoGuardInput) -> UndoGuardResult:
        self.calls.append(inp)
        return self.result


def incident_worker(env, store, si: StandIns, guard: GuardStandIn, tq: str, signing: bool | None = None) -> Worker:
    """`signing` None: ROLLBACKCTL_SIGNING (off in tests); True: as production runs it."""
    sa = SwitchActivities(store, signing=signing)
    return PagedWorker(env.client, task_queue=tq, workflows=WORKFLOWS, standins=si,
                  activities=[*sa.methods(), *si.methods(), guard.undo_guard])


def now() -> datetime:
    return datetime.now(timezone.utc)


async def open_incident(env, tq: str, rule: str, symbol: str | None = None, values: dict | None = None,
                        started_ago: timedelta = timedelta(seconds=0), namespace: str | None = None,
                        workflow_id: str | None = None, **kw: Any):
    """Start an incident the way the monitor does (signal-with-start, USE_EXISTING)."""
    from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

    ns = namespace or uuid.uuid4().hex[:8]
    t = await env.get_current_time()  # the server's clock (time-skipping: ahead of the wall clock)
    wid = workflow_id or incident_workflow_id(rule, symbol, ns)
    h = await env.client.start_workflow(
        IncidentWorkflow.run,
        IncidentInput(rule=rule, symbol=symbol, detected_at=t, started_at=t - started_ago, values=values or {}, **kw),
        id=wid, task_queue=tq, id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        start_signal="condition", start_signal_args=[ConditionReport(firing=True, at=t, values=values or {})])
    return h


async def until(h, env, pred: Callable[[IncidentState], bool], step: timedelta = timedelta(seconds=1),
                limit: int = 300) -> IncidentState:
    """Query the incident until `pred` holds; each miss lets `step` of (skipped) time pass."""
    st = None
    for _ in range(limit):
        st = await h.query(IncidentWorkflow.state)
        if pred(st):
            return st
        if env.supports_time_skipping:
            await env.sleep(step)
        else:  # the dev server: poll the query (real time)
            await asyncio.sleep(0.02)
    raise AssertionError(f"condition not reached; state: {st}")


async def clear(h, values: dict | None = None) -> None:
    await h.signal(IncidentWorkflow.condition, ConditionReport(firing=False, at=now(), values=values or {}))


async def fire(h, values: dict | None = None) -> None:
    await h.signal(IncidentWorkflow.condition, ConditionReport(firing=True, at=now(), values=values or {}))


def triggers(si: StandIns) -> list[dict]:
    return [p for p in si.pages if p["event_action"] == "trigger"]


async def stop_child(env, wid: str) -> None:
    """Terminate a child rollback/degradation once it idles in a wait with no activity in flight.

    Terminating it while activities are in flight leaks a time-skipping lock in the test server
    (1.40): from then on env.sleep runs in real time, and later tests time out.
    """
    child = env.client.get_workflow_handle(wid)
    for _ in range(500):
        p = await child.query("progress")
        idle = p["awaiting"] is not None or p["current_step"] == "observe"
        if idle:
            break
        await asyncio.sleep(0.02)  # polling the child's query (real time; no timer of ours involved)
    await terminate_idle(child, "test over")


# The P0 monitor's poll interval in end-to-end tests.
MONITOR_INTERVAL = 0.05


@asynccontextmanager
async def p0_stack(env, store, core_settings, paging_settings, tq: str, ns: str):
    """A worker (every real activity) and the monitor loop polling the simulator every 50 ms."""
    import httpx

    from activities.monitor import AutoMode, Monitor, TemporalGuard, TemporalIncidents
    from activities.trading_core import TradingCoreActivities
    from contracts.incidents import MonitorInput
    from contracts.trading_core import ReadHealthInput
    from worker import activity_methods, activity_objects, build_worker

    async with httpx.AsyncClient() as http:
        objs = activity_objects(store, http, env.client, core_settings, paging_settings)
        async with build_worker(env.client, tq, activity_methods(objs)):
            core = TradingCoreActivities.from_settings(core_settings, http)

            async def read(timeout_s: float) -> dict:
                return (await core.read_health(ReadHealthInput(timeout_s=timeout_s))).model_dump(mode="json")

            mon = Monitor(MonitorInput(namespace=ns, interval_s=MONITOR_INTERVAL, incident_task_queue=tq), read,
                          TemporalIncidents(env.client, tq, ns), AutoMode(store, TemporalGuard(env.client), ns))
            task = asyncio.create_task(mon.run())
            try:
                yield mon
            finally:
                task.cancel()
                # bounded: a monitor that does not stop on cancellation fails here, naming it, not at the
                # test's 300 s timeout
                done, _ = await asyncio.wait({task}, timeout=30)
                assert done, f"the monitor did not stop within 30 s of its cancellation: {task!r}"
