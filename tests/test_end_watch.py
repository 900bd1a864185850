"""A workflow ended from outside its own logic (terminated in the Web UI or with `temporal workflow
terminate`, or timed out) cannot say what it leaves or page anyone: the P0 monitor's end watch finds it in
Temporal's visibility and pages it once, critical. A workflow that ended by itself is not paged. Dev server
(real visibility), real pager workflow with stand-in PagerDuty/Slack sinks."""

from __future__ import annotations

from datetime import timedelta

from activities.monitor import EndWatch
from contracts.incidents import MonitorState
from contracts.progress import Decision
from manual.rollback import Durations, Scope, Severity
from tests.support.standins import StandIns
from tests.support.waits import wait_for_value
from tests.support.wf_helpers import awaiting, incident, make_worker, poll_progress
from workflows.models import RollbackInput
from workflows.rollback import RollbackWorkflow, rollback_workflow_id

D = Durations(observe=timedelta(seconds=1), check_interval=timedelta(milliseconds=250))


async def _start(env, tq, inc):
    return await env.client.start_workflow(
        RollbackWorkflow.run,
        RollbackInput(incident_id=inc, summary="s", severity=Severity.CRITICAL, scope=Scope.CROSS,
                      requested_by="oscar", reason="t", durations=D),
        id=rollback_workflow_id(inc), task_queue=tq)


async def test_a_terminated_rollback_is_paged_once_and_a_finished_one_is_not(dev_env, store, task_queue):
    si = StandIns()
    async with make_worker(dev_env, store, si, task_queue, critical_lane=True):
        ended = await _start(dev_env, task_queue, incident())  # ends by itself: withdrawn
        await poll_progress(ended, awaiting("confirm"))
        await ended.execute_update(RollbackWorkflow.withdraw, Decision(actor="oscar", reason="done"))
        await ended.result()
        # a critical-path rollback, on the critical lane's queue as `rollback start` puts it
        killed = await _start(dev_env, f"{task_queue}-critical", incident())
        await poll_progress(killed, awaiting("confirm"))
        await killed.terminate("someone pressed Terminate in the Web UI")

        watch, state, seen = EndWatch(dev_env.client, task_queue), MonitorState(), []

        async def look():
            seen.extend(await watch.step(state))
            return seen

        found = await wait_for_value(look, lambda s: s, timeout=20, what="the termination in visibility")
        assert [k.split("/")[0] for k in found] == [killed.id]
        page = await wait_for_value(
            lambda: _async([p for p in si.pages if "TERMINATED in Temporal" in p["summary"]]), lambda ps: ps,
            what="the page")
        assert len(page) == 1 and page[0]["severity"] == "critical" and killed.id in page[0]["summary"]
        assert "switches stay as it left them" in page[0]["summary"]
        assert await watch.step(state) == []  # paged once: the next look (overlapping window) skips it
        assert state.ends_until is not None and state.ends_paged == found


async def _async(v):
    return v
