"""Driving a CanaryWorkflow on the time-skipping server: scripted health, coarse plans, starting,
querying, deciding off the beat of its timers, and ending what a failed test left running."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError

from contracts.progress import Progress
from manual import canary
from manual.canary import CanaryPlan
from tests.support.standins import StandIns
from workflows.canary import CanaryWorkflow
from workflows.canary_models import CanaryDecision, CanaryInput, CanaryStatus

H = timedelta(hours=1)
DAY = timedelta(days=1)


class Scripted(StandIns):
    """Health that passes every stage (exposure under Stage 1's $50K cap); `next` overrides the next reads,
    one dict per read: a flaky check is one bad read."""

    def __init__(self) -> None:
        super().__init__()
        self.health["internal_net_exposure_usd"] = {"BTC": 20_000.0}
        self.next: list[dict] = []

    @activity.defn(name="core.read_health")
    async def read_health(self, inp: dict) -> dict:
        self.health_reads += 1
        override = self.next.pop(0) if self.next else {}
        return {**self.health, **override, "as_of": datetime.now(timezone.utc).isoformat()}


def standins() -> Scripted:
    return Scripted()


def coarse(plan: CanaryPlan, interval: timedelta = H) -> CanaryPlan:
    """The same plan (profiles, checks, gates) with fewer checks: tests about control flow run faster."""
    data = plan.model_dump()
    for st in data["stages"]:
        st["observe"]["interval"] = min(interval, st["observe"]["duration"])
    return CanaryPlan.model_validate(data)


P3 = coarse(canary.PHASE3)
P2 = coarse(canary.PHASE2)
BAD = {"error_rate": 0.02}


STARTED: list = []


async def terminate_leftovers(ts_env) -> None:
    """A test that fails mid-way must not leave a workflow whose pending task stops time skipping for
    every later test of the session (the time-skipping server is shared): an autouse fixture calls this."""
    while STARTED:
        h = STARTED.pop()
        try:
            await ts_env.client.get_workflow_handle(h.id).terminate("test cleanup")
        except Exception:
            pass  # already closed


async def start(env, tq, phase="phase3", by="alice", **kw):
    wid = f"canary-{phase}-{uuid.uuid4().hex[:8]}"
    h = await env.client.start_workflow(CanaryWorkflow.run, CanaryInput(phase=phase, requested_by=by, **kw),
                                        id=wid, task_queue=tq)
    STARTED.append(h)
    return h


async def status(env, wid) -> CanaryStatus:
    h = env.client.get_workflow_handle(wid)
    attempt = 1
    while True:
        try:
            return await h.query(CanaryWorkflow.status)
        except RPCError as e:
            # Seen twice in CI, on the time-skipping server just after a continue-as-new, with no workflow
            # task pending: "query deadline exceeded" (and the worker's "Task not found when completing:
            # workflow execution already completed" for the run before). A query is a read: asked again.
            # A workflow that is really stuck fails all three, and the failure says where.
            if attempt == 3 or "deadline exceeded" not in str(e):
                raise AssertionError(f"status query on {wid} failed ({e}); {await stuck_where(h)}") from e
            attempt += 1


async def stuck_where(h) -> str:
    from temporalio.api.enums.v1 import EventType

    try:
        d = (await h.describe()).raw_description
        t = d.pending_workflow_task
        hist = await h.fetch_history()
        tail = ", ".join(EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in hist.events[-8:])
        task = f"pending workflow task: {t.state} attempt {t.attempt}" if t.ByteSize() else "no pending task reported"
        return f"{task}; last events: {tail}"
    except Exception as e:  # the diagnosis must not hide the failure
        return f"(could not describe it: {e})"


async def until(env, wid, pred, step=6 * H, limit=200) -> CanaryStatus:
    """Query the status until `pred` holds, skipping `step` of workflow time between queries."""
    s = None
    for _ in range(limit):
        s = await status(env, wid)
        if pred(s):
            return s
        await env.sleep(step)
    raise AssertionError(f"condition not reached; last status: {s}")


async def off_beat(env, wid) -> None:
    """Move workflow time away from the canary's next timer before a signal or an Update.

    The time-skipping test server refuses a workflow task that both sees a timer fire and cancels it
    ("invalid history builder state for action"), which an Update or signal arriving on the very
    instant of a health check or a stage's end causes there (the real server does not); the test
    then hangs. So a decision is never sent within a minute of the next check or the stage's end."""
    for _ in range(5):
        if not (await status(env, wid)).timer_near(await env.get_current_time()):
            return
        await env.sleep(timedelta(minutes=2))


async def decide(env, wid, kind, actor, **kw):
    await off_beat(env, wid)
    return await env.client.get_workflow_handle(wid).execute_update(kind, CanaryDecision(actor=actor, **kw))


async def refused(env, wid, kind, actor, **kw) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as e:
        await decide(env, wid, kind, actor, **kw)
    return str(e.value.cause)


async def progress(env, wid) -> Progress:
    return await env.client.get_workflow_handle(wid).query(CanaryWorkflow.progress)


def touched_snapshot(p: Progress, plan: CanaryPlan = canary.PHASE3) -> dict:
    return {k: p.snapshot[k] for k in plan.touched()}
