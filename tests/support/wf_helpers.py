"""Helpers for workflow tests: a worker with the real switch store, waiting on progress."""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio.worker import Worker

from contracts.changes import ChangeSetRequest, SwitchChange
from core.settings import critical_queue_of
from activities.switch_activities import SwitchActivities
from workflows.registry import WORKFLOWS


class PagedWorker(Worker):
    """A test worker that stops its task queue's pager workflow when it stops: a pager left running
    without a worker would hold the time-skipping server's clock (and later tests would hang).

    Given the test's stand-ins (their strict PagerDuty sink), it also checks, for every workflow branch a
    test runs, what a person at the other end would have lived through (`paging_invariants`)."""

    def __init__(self, client, *, task_queue: str, standins=None, critical_lane: bool = False, **kw):
        super().__init__(client, task_queue=task_queue, **kw)
        self._tq = task_queue
        self._si = standins
        # `critical_lane`: also serve the critical lane's queue beside it, as worker.py does, for tests whose CLI
        # starts a critical rollback there
        self._lane = Worker(client, task_queue=critical_queue_of(task_queue), **kw) if critical_lane else None

    async def __aenter__(self):
        if self._lane is not None:
            await self._lane.__aenter__()
        return await super().__aenter__()

    async def __aexit__(self, *exc):
        try:
            if exc[0] is None and self._si is not None:
                await pager_idle(self.client, self._tq)
                await paging_invariants(self.client, self._si)
            await stop_pager(self.client, self._tq)
            return await super().__aexit__(*exc)
        finally:
            if self._lane is not None:
                await self._lane.__aexit__(*exc)


async def paging_invariants(client, si) -> None:
    """1. No urgent page vanished into an open alert: no alert (but a storm's, whose updates name
    newcomers) holds two critical triggers, so each critical trigger notified someone (PagerDuty appends a
    trigger on an open alert to it and notifies nobody).
    2. A workflow that ended left no alert open, unless its ledger says why (left for a human) or to whom
    it was handed on. (Running and terminated workflows are not judged here.)"""
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.service import RPCError

    from contracts.paging import AlertStatus, owner_of
    from contracts.progress import Progress

    for a in si.pd.alerts.values():
        crit = [e for e in a["log"] if e["action"] == "trigger" and e["severity"] == "critical"]
        assert len(crit) <= 1 or a["dedup_key"].startswith("pager/"), (
            f"urgent pages swallowed into one open alert {a['dedup_key']}: {[e['summary'][:80] for e in crit]}")
    ledgers: dict[str, Progress | None] = {}
    for a in si.pd.alerts.values():
        if a["status"] == "resolved":
            continue
        owner = owner_of(a["dedup_key"])
        if owner is None or owner.startswith("paging-test"):
            continue
        if owner not in ledgers:
            try:
                h = client.get_workflow_handle(owner)
                d = await h.describe()
                ledgers[owner] = (await h.query("progress", result_type=Progress)
                                  if d.status == WorkflowExecutionStatus.COMPLETED else None)
            except RPCError:
                ledgers[owner] = None
        p = ledgers[owner]
        if p is None:
            continue
        rec = next((r for r in p.alerts if r.dedup_key == a["dedup_key"]), None)
        assert rec is not None and rec.status in (AlertStatus.LEFT_OPEN, AlertStatus.HANDED_ON), (
            f"{owner} ended ({p.result}) leaving alert {a['dedup_key']} open in PagerDuty; ledger: {rec}")
        assert rec.why, f"{owner} left {a['dedup_key']} open without saying why"


async def stop_pager(client, task_queue: str) -> None:
    """Terminate the task queue's pager once it is idle: terminating it mid-activity or mid-task leaks the
    time-skipping server's lock."""
    from temporalio.service import RPCError

    from contracts.paging import pager_workflow_id

    if await pager_idle(client, task_queue):
        try:
            await client.get_workflow_handle(pager_workflow_id(task_queue)).terminate("test worker stopped")
        except RPCError:
            pass


def make_worker(env, store, standins, task_queue: str, critical_lane: bool = False) -> Worker:
    sa = SwitchActivities(store)
    return PagedWorker(env.client, task_queue=task_queue, workflows=WORKFLOWS, standins=standins,
                       activities=[*sa.methods(), *standins.methods()], critical_lane=critical_lane)


async def set_switches(store, actor: str, **values) -> None:
    await store.apply(ChangeSetRequest(change_id=f"setup-{uuid.uuid4()}", actor=actor, reason="test setup",
                                       changes=[SwitchChange(switch=k, value=v) for k, v in values.items()]))


async def values(store, *names) -> dict:
    snap = await store.snapshot()
    return {n: snap.switches[n].value for n in names}


async def wait_for(handle, env, pred, step=timedelta(seconds=30), limit=400):
    """Query progress until `pred` holds, skipping `step` of workflow time between queries."""
    p = None
    for _ in range(limit):
        p = await handle.query("progress", result_type=__import__("contracts.progress", fromlist=["Progress"]).Progress)
        if pred(p):
            return p
        await env.sleep(step)
    raise AssertionError(f"condition not reached; last progress: {p}")


def awaiting(expects: str):
    return lambda p: p.awaiting is not None and p.awaiting.expects == expects


async def terminate_idle(handle, reason: str = "test done", limit: int = 500) -> None:
    """Terminate a workflow once no activity and no workflow task of it is in flight (polled, bounded).

    Terminating one while an activity or a workflow task is in flight leaks a time-skipping lock in the
    test server (1.40): from then on env.sleep runs in real time, and later tests on the shared server
    time out. (The pager's outcome signals wake a workflow at any moment: hence the workflow task.)"""
    import asyncio

    d = (await handle.describe()).raw_description
    # The pager's outcomes would wake it after the check below: let the pager of its task queue go idle first.
    await pager_idle(handle._client, d.execution_config.task_queue.name)
    for _ in range(limit):
        d = (await handle.describe()).raw_description
        if not d.pending_activities and not d.HasField("pending_workflow_task"):
            break
        await asyncio.sleep(0.02)  # real time, no timer of the workflow's involved
    await handle.terminate(reason)


async def pager_idle(client, task_queue: str, limit_s: float = 15.0) -> bool:
    """Wait (polled, bounded, real time) until the task queue's pager has nothing queued or in flight and no
    pending activity or workflow task. False if it does not run."""
    import asyncio
    import time

    from temporalio.service import RPCError

    from contracts.paging import QueueView, pager_workflow_id

    h = client.get_workflow_handle(pager_workflow_id(task_queue))
    deadline = time.monotonic() + limit_s
    try:
        while time.monotonic() < deadline:
            d = (await h.describe()).raw_description
            if d.workflow_execution_info.status != 1:  # not running
                return False
            q = await h.query("queue", result_type=QueueView)
            if (not q.waiting and not q.in_flight and not d.pending_activities
                    and not d.HasField("pending_workflow_task")):
                return True
            await asyncio.sleep(0.05)  # real time: another workflow's progress, no timer of ours involved
    except RPCError:  # never started
        return False
    return True


async def audit_of(store, source: str) -> list:
    """The audit records a workflow (its id as `source`) wrote, oldest first."""
    return [a for a in await store.audit() if a.source == source]


def incident() -> str:
    return f"inc-{uuid.uuid4().hex[:8]}"


async def poll_progress(handle, pred, timeout: float = 20.0):
    """On a real-time server: query progress until `pred` holds (a condition with a deadline)."""
    from contracts.progress import Progress
    from tests.support.waits import wait_for_value

    return await wait_for_value(lambda: handle.query("progress", result_type=Progress), pred, timeout,
                                "a progress condition")


def real_worker(env, store, core_settings, paging_settings, http, task_queue: str) -> Worker:
    """The production worker (worker.py's activities): etcd store, trading core and paging over the simulator."""
    from worker import activity_methods, activity_objects, build_worker

    objs = activity_objects(store, http, env.client, core_settings, paging_settings)
    return build_worker(env.client, task_queue, activity_methods(objs), worker_class=PagedWorker)


HISTORIES = __import__("pathlib").Path(__file__).parent.parent / "histories"


async def save_history(handle, name: str) -> None:
    """With RECORD_HISTORIES=1, write the workflow's history to tests/histories/<name>.json for replay tests,
    in Temporal's export format (tests/support/histories_io.py)."""
    import os

    from tests.support.histories_io import export

    if os.environ.get("RECORD_HISTORIES") != "1":
        return
    HISTORIES.mkdir(exist_ok=True)
    hist = await handle.fetch_history()
    (HISTORIES / f"{name}.json").write_text(export(hist))
