"""Helpers for workflow tests: a worker with the real switch store, waiting on progress."""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio.worker import Worker

from activities.changes import ChangeSetRequest, SwitchChange
from activities.switch_activities import SwitchActivities
from workflows.registry import WORKFLOWS


def make_worker(env, store, standins, task_queue: str) -> Worker:
    sa = SwitchActivities(store)
    return Worker(env.client, task_queue=task_queue, workflows=WORKFLOWS,
                  activities=[sa.apply, sa.snapshot, sa.roster, *standins.methods()])


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
        p = await handle.query("progress", result_type=__import__("workflows.models", fromlist=["Progress"]).Progress)
        if pred(p):
            return p
        await env.sleep(step)
    raise AssertionError(f"condition not reached; last progress: {p}")


def awaiting(expects: str):
    return lambda p: p.awaiting is not None and p.awaiting.expects == expects


async def terminate_idle(handle, reason: str = "test done", limit: int = 500) -> None:
    """Terminate a workflow once no activity of it is in flight (polled, bounded).

    Terminating one while an activity is in flight leaks a time-skipping lock in the test server
    (1.40): from then on env.sleep runs in real time, and later tests on the shared server time out."""
    import asyncio

    for _ in range(limit):
        if not (await handle.describe()).raw_description.pending_activities:
            break
        await asyncio.sleep(0.02)  # real time, no timer of the workflow's involved
    await handle.terminate(reason)


async def audit_of(store, source: str) -> list:
    """The audit records a workflow (its id as `source`) wrote, oldest first."""
    return [a for a in await store.audit() if a.source == source]


def incident() -> str:
    return f"inc-{uuid.uuid4().hex[:8]}"


async def poll_progress(handle, pred, timeout: float = 20.0):
    """On a real-time server: query progress until `pred` holds (a condition with a deadline)."""
    import asyncio
    import time

    from workflows.models import Progress

    deadline = time.monotonic() + timeout
    p = None
    while time.monotonic() < deadline:
        p = await handle.query("progress", result_type=Progress)
        if pred(p):
            return p
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not reached in {timeout}s; last progress: {p}")


def real_worker(env, store, core_settings, paging_settings, http, task_queue: str) -> Worker:
    """The production worker (worker.py's activities): etcd store, trading core and paging over the simulator."""
    from worker import activity_methods, activity_objects, build_worker

    objs = activity_objects(store, http, env.client, core_settings, paging_settings)
    return build_worker(env.client, task_queue, activity_methods(objs))


HISTORIES = __import__("pathlib").Path(__file__).parent / "histories"


async def save_history(handle, name: str) -> None:
    """With RECORD_HISTORIES=1, write the workflow's history to tests/histories/<name>.json for replay tests."""
    import os

    if os.environ.get("RECORD_HISTORIES") != "1":
        return
    HISTORIES.mkdir(exist_ok=True)
    hist = await handle.fetch_history()
    (HISTORIES / f"{name}.json").write_text(hist.to_json())
