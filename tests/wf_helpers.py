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


def incident() -> str:
    return f"inc-{uuid.uuid4().hex[:8]}"
