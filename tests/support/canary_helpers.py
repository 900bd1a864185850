"""Driving a CanaryWorkflow on the time-skipping server: scripted health, coarse plans, starting,
querying, deciding off the beat of its timers, and ending what a failed test left running."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

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
            return await h.query(CanaryWorkflow.status, rpc_timeout=timedelta(seconds=15))
        except RPCError as e:
            # Unanswered ("query deadline exceeded" from the server, "Timeout expired" from the client's own
            # deadline): the test server's wedge at a continue-as-new (`wedged`) says so at once; otherwise a
            # query is a read, asked again, and a workflow that is really stuck fails all three, saying where.
            if _unanswered(e) and (why := await wedged(env, h)):
                raise ServerWedged(why) from e
            if attempt == 3 or not _unanswered(e):
                raise AssertionError(f"status query on {wid} failed ({e}); {await stuck_where(h)}") from e
            attempt += 1


def _unanswered(e: RPCError) -> bool:
    return e.status is RPCStatusCode.DEADLINE_EXCEEDED or "deadline exceeded" in str(e) or "Timeout expired" in str(e)


class ServerWedged(AssertionError):
    """The time-skipping test server wedged a run at a continue-as-new (see `wedged`)."""


async def wedged(env, h) -> str | None:
    """The time-skipping test server's known failure (sdk-java #3088, "refused CancelTimer leaves the workflow
    task complete in memory but STARTED in history, so it is never timed out or redelivered"; #2606, the
    CancelTimer / TimerFired race it comes from; the real server fails and redelivers such a task instead): at
    a continue-as-new the new run exists, the old run's history ends on WORKFLOW_TASK_STARTED, the worker's
    completion is answered "workflow execution already completed", and the lock that task holds on time
    skipping is never given back, so no timer fires again and a query or a sleep times out. Seen in CI about
    one run in fifteen of the Phase 3 test. Recognised by exactly that history: a description of it, else None."""
    from temporalio.api.enums.v1 import EventType

    try:
        first = (await h.fetch_history()).events[0]
        prev = first.workflow_execution_started_event_attributes.continued_execution_run_id
        if not prev:
            return None
        last = (await env.client.get_workflow_handle(h.id, run_id=prev).fetch_history()).events[-1]
    except RPCError:
        return None
    if last.event_type != EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
        return None
    return (f"the time-skipping test server wedged {h.id} at its continue-as-new: run {prev} ends on "
            f"WORKFLOW_TASK_STARTED (event {last.event_id}) and time no longer skips (sdk-java #3088)")


async def skip(env, wid: str, step: timedelta) -> None:
    """`env.sleep(step)` with a deadline: normally a few seconds of real time; a sleep that does not return is
    the test server's wedge (ServerWedged) or a real hang (the failure says where)."""
    from temporalio.api.testservice.v1 import SleepRequest

    req = SleepRequest()
    req.duration.FromTimedelta(step)
    h = env.client.get_workflow_handle(wid)
    try:
        await env.client.test_service.unlock_time_skipping_with_sleep(req, timeout=timedelta(seconds=30))
    except RPCError as e:
        if _unanswered(e) and (why := await wedged(env, h)):
            raise ServerWedged(why) from e
        raise AssertionError(f"skipping {step} on {wid} failed ({e}); {await stuck_where(h)}") from e


async def stuck_where(h) -> str:
    from temporalio.api.enums.v1 import EventType

    def names(events) -> str:
        return ", ".join(f"{e.event_id}:{EventType.Name(e.event_type).removeprefix('EVENT_TYPE_')}" for e in events)

    try:
        d = (await h.describe()).raw_description
        t = d.pending_workflow_task
        hist = await h.fetch_history()
        task = f"pending workflow task: {t.state} attempt {t.attempt}" if t.ByteSize() else "no pending task reported"
        out = f"{task}; last events: {names(hist.events[-8:])}"
        prev = hist.events[0].workflow_execution_started_event_attributes.continued_execution_run_id
        if prev:  # the run before a continue-as-new: what it left behind
            before = await h._client.get_workflow_handle(h.id, run_id=prev).fetch_history()
            out += f"; the run before ({prev}) ended with: {names(before.events[-12:])}"
        return out
    except Exception as e:  # the diagnosis must not hide the failure
        return f"(could not describe it: {e})"


async def until(env, wid, pred, step=6 * H, limit=200) -> CanaryStatus:
    """Query the status until `pred` holds, skipping `step` of workflow time between queries."""
    s = None
    for _ in range(limit):
        s = await status(env, wid)
        if pred(s):
            return s
        await skip(env, wid, step)
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
