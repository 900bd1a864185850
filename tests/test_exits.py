"""Every wait has an exit (on-call trust): at each step that waits for a human, an authorised operator can
end it (`withdraw`) or, at a proposed Level 3, redirect it (`stay`), with a reason, recorded and paged;
what the workflow changed stays as it is and is said. Time-skipping server, real etcd, stand-in core and
paging (tests/support/standins.py).

Before the exits, a rollback whose breach persisted after HL_MODE waited at `approve_level_3` for a super
admin's Level 3 (API down) and refused confirm, cancel and fix: the only way out was Temporal's
cancellation."""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowFailureError, WorkflowUpdateFailedError

from contracts.progress import Decision
from manual.rollback import Durations, Scope, Severity
from tests.support.standins import StandIns
from tests.support.wf_helpers import (audit_of, awaiting, incident, make_worker, save_history, set_switches,
                                      terminate_idle, values, wait_for)
from workflows.degradation import DegradationWorkflow, degrade_workflow_id
from workflows.models import DegradeInput, RollbackInput
from workflows.rollback import RollbackWorkflow, rollback_workflow_id

D = Durations(observe=timedelta(minutes=5), check_interval=timedelta(seconds=30))


def start(env, tq, inc, scope=Scope.CROSS, switch=None, by="oscar", severity=Severity.CRITICAL):
    return env.client.start_workflow(
        RollbackWorkflow.run,
        RollbackInput(incident_id=inc, summary="s", severity=severity, scope=scope, switch=switch,
                      requested_by=by, reason="test", durations=D),
        id=rollback_workflow_id(inc), task_queue=tq)


async def refused(h, update, d: Decision) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as e:
        await h.execute_update(update, d)
    return str(e.value.cause)


async def web_ui_details(h) -> str:
    """What Temporal's Web UI shows as the workflow's current details: "Within a Workflow, you can get and
    set the current Workflow details ... this value can be updated throughout the life of the workflow"
    (docs.temporal.io/develop/python/enriching-ui); the UI reads it with this built-in query."""
    return (await h.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)).current_details


def pages_of(si: StandIns, word: str) -> list[dict]:
    return [p for p in si.pages if word in p["summary"]]


async def test_a_persistent_breach_can_stay_at_its_level_and_then_be_withdrawn(ts_env, store, task_queue):
    """The wedge of the fault campaign: 3% errors persist after HL_MODE; Level 3 is proposed; the on-call
    stays at cross_module instead, confirms nothing, and withdraws: HL_MODE stays, said and paged."""
    await set_switches(store, "alice", global_betting_enabled=True, routing_mode="NORMAL_MODE")
    si, inc = StandIns(), incident()
    si.health["error_rate"] = 0.03  # does not clear after HL_MODE
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, inc)
        p = await wait_for(h, ts_env, awaiting("escalate"))
        aw = p.awaiting
        assert aw.step == "approve_level_3" and [e.kind for e in aw.exits] == ["stay", "withdraw"]
        assert aw.exits[0].min_role == "on_call" and "stay at cross_module" in aw.exits[0].means
        # the Web UI shows where it is: the workflow's current details (its __temporal_workflow_metadata query)
        md = await web_ui_details(h)
        assert "Step: **approve_level_3**" in md and "Waiting for **escalate** from super_admin or above" in md
        assert "Or **stay** (on_call or above): stay at cross_module" in md and "Or **withdraw**" in md
        # refused, each with its reason, nothing changed
        assert "needs a --reason" in await refused(h, RollbackWorkflow.stay, Decision(actor="oscar"))
        assert "vic is viewer; stay at step 'approve_level_3' needs on_call" in await refused(
            h, RollbackWorkflow.stay, Decision(actor="vic", reason="x"))
        assert "needs super_admin" in await refused(h, RollbackWorkflow.escalate, Decision(actor="oscar"))
        await h.execute_update(RollbackWorkflow.stay, Decision(actor="oscar", reason="API must stay up; HL is fine"))
        p = await wait_for(h, ts_env, awaiting("confirm"))
        assert p.escalations[-1] == "stayed at cross_module by oscar: API must stay up; HL is fine"
        assert (await values(store, "global_api_enabled"))["global_api_enabled"] is True  # no Level 3
        assert pages_of(si, "chose to stay at cross_module")
        assert "offers no 'stay'" in await refused(h, RollbackWorkflow.stay, Decision(actor="oscar", reason="x"))
        await h.execute_update(RollbackWorkflow.withdraw, Decision(actor="oscar", reason="handing over to the fix"))
        res = await h.result()
        await save_history(h, "rollback_breach_stayed_then_withdrawn")
        assert (await web_ui_details(h)).splitlines()[2].startswith("Result: **withdrawn**: withdrawn by oscar")
    assert res.status == "withdrawn"
    assert "withdrawn by oscar at step confirm: handing over to the fix" in res.detail
    assert "routing_mode=HL_MODE" in res.detail and "global_betting_enabled=false" in res.detail.lower()
    assert await values(store, "routing_mode", "global_betting_enabled") == {
        "routing_mode": "HL_MODE", "global_betting_enabled": False}  # nothing restored
    assert len(await audit_of(store, rollback_workflow_id(inc))) == 1  # the rollback's change set only
    (page,) = pages_of(si, "WITHDRAWN")
    assert page["severity"] == "critical"


async def test_a_mistaken_full_system_start_is_withdrawn_by_its_starter(ts_env, store, task_queue):
    """An on-call's `--scope full_system` waits for a super admin: its starter (or a higher role) withdraws
    it; another on-call's viewer is refused; nothing was applied and the page says so."""
    si, inc = StandIns(), incident()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, inc, scope=Scope.FULL)
        p = await wait_for(h, ts_env, awaiting("confirm"), step=timedelta(seconds=1))
        assert p.awaiting.step == "super_admin_approval" and [e.kind for e in p.awaiting.exits] == ["withdraw"]
        assert "vic is viewer; withdraw is for its starter oscar" in await refused(
            h, RollbackWorkflow.withdraw, Decision(actor="vic", reason="x"))
        assert "needs a --reason" in await refused(h, RollbackWorkflow.withdraw, Decision(actor="oscar"))
        assert "needs no break-glass" in await refused(
            h, RollbackWorkflow.withdraw, Decision(actor="oscar", reason="x", break_glass="y"))
        await h.execute_update(RollbackWorkflow.withdraw, Decision(actor="oscar", reason="meant cross_module"))
        res = await h.result()
        await save_history(h, "rollback_full_system_withdrawn_by_starter")
    assert res.status == "withdrawn" and "it changed no switch" in res.detail
    assert await audit_of(store, rollback_workflow_id(inc)) == []
    assert (await values(store, "global_api_enabled"))["global_api_enabled"] is True
    (page,) = pages_of(si, "WITHDRAWN")
    assert page["severity"] == "info"


async def test_a_higher_role_may_withdraw_someone_elses_start(ts_env, store, task_queue):
    si, inc = StandIns(), incident()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, inc, scope=Scope.FULL)
        await wait_for(h, ts_env, awaiting("confirm"), step=timedelta(seconds=1))
        await h.execute_update(RollbackWorkflow.withdraw, Decision(actor="rita", reason="oscar asked me to"))
        res = await h.result()
    assert res.status == "withdrawn" and "withdrawn by rita at step super_admin_approval" in res.detail


async def test_hl_down_level_choice_withdrawn_says_new_orders_stay_paused(ts_env, store, task_queue):
    si, inc = StandIns(), incident()
    si.health.update(hl_connected=False, hl_disconnected_for_s=120.0)
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, inc)
        await wait_for(h, ts_env, awaiting("level_choice"), step=timedelta(seconds=1))
        await h.execute_update(RollbackWorkflow.withdraw, Decision(actor="oscar", reason="HL back, handled by hand"))
        res = await h.result()
    assert res.status == "withdrawn"
    assert "trading-core controls still in force: pause_new_orders" in res.detail
    assert [a["action"] for a in si.actions] == ["pause_new_orders"]  # not undone: said, not silently reverted
    (page,) = pages_of(si, "WITHDRAWN")
    assert page["severity"] == "critical"


async def test_the_fix_wait_can_be_withdrawn_by_its_on_call_starter(ts_env, store, task_queue):
    """`fix` to restore a super admin's switch needs a super admin; the on-call who started it can still end
    the wait (nothing restored, said)."""
    await set_switches(store, "alice", global_betting_enabled=True, routing_mode="NORMAL_MODE")
    si, inc = StandIns(), incident()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, inc)
        await wait_for(h, ts_env, awaiting("confirm"))
        await h.execute_update(RollbackWorkflow.confirm, Decision(actor="oscar", reason="holds"))
        p = await wait_for(h, ts_env, awaiting("fix"))
        assert p.awaiting.min_role == "super_admin" and [e.kind for e in p.awaiting.exits] == ["withdraw"]
        await h.execute_update(RollbackWorkflow.withdraw, Decision(actor="oscar", reason="fix comes next week"))
        res = await h.result()
    assert res.status == "withdrawn" and "withdrawn by oscar at step fix" in res.detail
    assert (await values(store, "routing_mode"))["routing_mode"] == "HL_MODE"


async def test_a_degradation_is_withdrawn_at_its_confirmation_leaving_its_level_in_force(ts_env, store, task_queue):
    si, inc = StandIns(), incident()
    async with make_worker(ts_env, store, si, task_queue):
        h = await ts_env.client.start_workflow(
            DegradationWorkflow.run, DegradeInput(level=2, incident_id=inc, requested_by="oscar", reason="t",
                                                  durations=D), id=degrade_workflow_id(2, inc), task_queue=task_queue)
        p = await wait_for(h, ts_env, awaiting("confirm"))
        assert [e.kind for e in p.awaiting.exits] == ["withdraw"]
        assert "vic is viewer; withdraw is for its starter oscar" in await refused(
            h, DegradationWorkflow.withdraw, Decision(actor="vic", reason="x"))
        await h.execute_update(DegradationWorkflow.withdraw, Decision(actor="oscar", reason="handled by hand"))
        res = await h.result()
        await save_history(h, "degradation_level_2_withdrawn_at_confirm")
    assert res.status == "withdrawn" and "liquidation_enabled=false" in res.detail and "pause_hl_opens" in res.detail
    assert (await values(store, "liquidation_enabled"))["liquidation_enabled"] is False  # left in force, said


async def test_cancelled_in_temporal_at_the_level_choice_says_new_orders_stay_paused(ts_env, store, task_queue):
    """Temporal's cancellation at the HL-down level choice: new orders were paused before the choice; the
    cancellation's page and status say so (before, they said nothing was held)."""
    si, inc = StandIns(), incident()
    si.health.update(hl_connected=False, hl_disconnected_for_s=120.0)
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, inc)
        await wait_for(h, ts_env, awaiting("level_choice"), step=timedelta(seconds=1))
        await h.cancel()
        with pytest.raises(WorkflowFailureError):
            await h.result()
        p = await h.query(RollbackWorkflow.progress)
    assert p.status == "cancelled" and "trading-core controls still in force: pause_new_orders" in p.detail


async def _degrade_to_fix(env, store, si, tq, inc):
    await set_switches(store, "alice", global_betting_enabled=True, betting_traffic_pct=100, routing_mode="NORMAL_MODE")
    h = await env.client.start_workflow(
        DegradationWorkflow.run, DegradeInput(level=1, incident_id=inc, requested_by="oscar", reason="t", durations=D),
        id=degrade_workflow_id(1, inc), task_queue=tq)
    await wait_for(h, env, awaiting("confirm"))
    await h.execute_update(DegradationWorkflow.confirm, Decision(actor="oscar", reason="holds"))
    await wait_for(h, env, awaiting("fix"))
    return h


async def test_a_degradation_restore_goes_through_the_5pct_stage(ts_env, store, task_queue):
    """The manual's tree restores through a 5% canary; a degradation's restore used to skip it (straight
    back to 100% of orders internalized). Now: 5% first, observed, then the rest, each its own change set."""
    si, inc = StandIns(), incident()
    async with make_worker(ts_env, store, si, task_queue):
        h = await _degrade_to_fix(ts_env, store, si, task_queue, inc)
        await h.execute_update(DegradationWorkflow.fix, Decision(actor="alice", reference="pr-9", tests_passed=True))
        await wait_for(h, ts_env, lambda p: p.current_step == "observe_5pct", step=timedelta(seconds=5))
        assert await values(store, "global_betting_enabled", "betting_traffic_pct") == {
            "global_betting_enabled": True, "betting_traffic_pct": 5}
        res = await h.result()
        await save_history(h, "degradation_level_1_restored_through_5pct_traffic_seen")
        p = await h.query(DegradationWorkflow.progress)
    assert res.status == "restored"
    obs = next(s for s in p.history if s.name == "observe_5pct")
    assert obs.outcome == "ok" and "live traffic seen" in obs.detail
    audit = await audit_of(store, degrade_workflow_id(1, inc))
    assert [{c.switch: c.new for c in a.changes} for a in audit][-2:] == [
        {"global_betting_enabled": True, "hedge_enabled": True, "betting_traffic_pct": 5}, {"betting_traffic_pct": 100}]
    assert await values(store, "global_betting_enabled", "betting_traffic_pct") == {
        "global_betting_enabled": True, "betting_traffic_pct": 100}


async def _fixed_at_5pct(env, store, tq, history: str | None = None, **health):
    """A Level 1 degradation up to its fix; then the stand-in core's health changes by `health` (a value of
    None removes the field), the fix is given, and the degradation runs to its end. Its result, its progress
    at the end (queried while the worker runs) and the stand-ins."""
    si, inc = StandIns(), incident()
    async with make_worker(env, store, si, tq):
        h = await _degrade_to_fix(env, store, si, tq, inc)
        for k, v in health.items():
            if v is None:
                del si.health[k]
            else:
                si.health[k] = v
        await h.execute_update(DegradationWorkflow.fix, Decision(actor="alice", reference="pr-9", tests_passed=True))
        res = await h.result()
        if history:
            await save_history(h, history)
        p = await h.query(DegradationWorkflow.progress)
    return res, p, si


async def test_a_degradation_5pct_restore_that_breaches_puts_the_level_back(ts_env, store, task_queue):
    res, _, si = await _fixed_at_5pct(ts_env, store, task_queue, "degradation_level_1_5pct_restore_failed",
                                      error_rate=0.05)  # the fix did not fix it
    assert res.status == "restore_failed" and "level 1 values back in force" in res.detail
    assert await values(store, "global_betting_enabled", "betting_traffic_pct") == {
        "global_betting_enabled": False, "betting_traffic_pct": 5}  # pre-approved moves only; said
    assert "betting_traffic_pct=5 stays until the next fix's restore" in res.detail
    assert any("5% restore failed its checks" in p["summary"] for p in si.pages)


async def test_a_5pct_restore_that_sees_no_traffic_verifies_nothing_and_puts_the_level_back(ts_env, store,
                                                                                             task_queue):
    """The on-call's finding: "the 5% restore passed its check while all trading was paused, so it observed
    nothing". With no order on the restored path (internal_orders_per_min 0 at every check) the stage fails
    like a breach: the level's values back, paged, `fix` again once orders flow."""
    res, p, si = await _fixed_at_5pct(ts_env, store, task_queue, "degradation_level_1_5pct_no_traffic",
                                      internal_orders_per_min=0.0)  # new orders paused at the core
    assert res.status == "restore_failed" and "saw no live traffic on the restored path" in res.detail
    assert await values(store, "global_betting_enabled") == {"global_betting_enabled": False}
    obs = next(s for s in p.history if s.name == "observe_5pct")
    assert obs.outcome == "no_traffic" and "nothing verified" in obs.detail
    assert any("saw no live traffic" in p["summary"] for p in si.pages)


async def test_a_5pct_restore_whose_core_reports_no_traffic_figure_says_so_and_pages(ts_env, store, task_queue):
    res, p, si = await _fixed_at_5pct(ts_env, store, task_queue,
                                      internal_orders_per_min=None)  # another trading core: the field is optional
    assert res.status == "restored"
    obs = next(s for s in p.history if s.name == "observe_5pct")
    assert "does not report internal_orders_per_min: whether orders flowed is unknown" in obs.detail
    (page,) = [p for p in si.pages if "does not report internal_orders_per_min" in p["summary"]]
    assert page["severity"] == "warning"


def _summaries(hist) -> dict[str, list[str]]:
    """Each event type's user-metadata summaries: what Temporal's Web UI shows on its timeline ("summary ...
    a single-line fixed summary for this command", docs.temporal.io/develop/python/enriching-ui)."""
    import json as _json

    out: dict[str, list[str]] = {}
    for ev in hist.events:
        if ev.HasField("user_metadata") and ev.user_metadata.HasField("summary"):
            name = ev.WhichOneof("attributes") or "?"
            out.setdefault(name, []).append(_json.loads(ev.user_metadata.summary.data))
    return out


async def test_the_web_ui_timeline_reads_like_the_runbook(ts_env, store, task_queue):
    """Activities, local activities and timers carry summaries: which step, which switches, what it waits
    for; before, the timeline showed only activity type names and anonymous timers."""
    await set_switches(store, "alice", global_betting_enabled=True, routing_mode="NORMAL_MODE")
    si, inc = StandIns(), incident()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, inc)
        await wait_for(h, ts_env, awaiting("confirm"))
        s = _summaries(await h.fetch_history())
        await terminate_idle(h)  # a workflow left waiting without a worker would hold the shared server's clock
    timers = s.get("timer_started_event_attributes", [])
    markers = s.get("marker_recorded_event_attributes", [])
    acts = s.get("activity_task_scheduled_event_attributes", [])
    assert "observe: next health check" in timers, s
    assert "confirm: waiting for confirm from on_call+" in timers, s
    assert any(m.startswith("apply: ") and "routing_mode=HL_MODE" in m for m in markers + acts), s
    assert "health check (observe)" in acts, s


async def test_a_degradation_fix_wait_is_withdrawn_leaving_the_level_in_force(ts_env, store, task_queue):
    si, inc = StandIns(), incident()
    async with make_worker(ts_env, store, si, task_queue):
        h = await _degrade_to_fix(ts_env, store, si, task_queue, inc)
        p = await h.query(DegradationWorkflow.progress)
        assert p.awaiting.step == "fix" and [e.kind for e in p.awaiting.exits] == ["withdraw"]
        await h.execute_update(DegradationWorkflow.withdraw, Decision(actor="oscar", reason="fix ships Monday"))
        res = await h.result()
    assert res.status == "withdrawn" and "withdrawn by oscar at step fix" in res.detail
    assert "global_betting_enabled=false" in res.detail  # what stays is said
    assert await values(store, "global_betting_enabled") == {"global_betting_enabled": False}
    (page,) = pages_of(si, "WITHDRAWN")
    assert page["severity"] == "critical"


def test_every_human_wait_of_every_plan_has_an_exit_or_an_answer_that_ends_it():
    """Each AwaitConfirmation the manual's plans build: an exit (withdraw, stay), or an answer any operator of
    its role may give that moves it on; and a timeout, which re-pages, proceeds or fails (never waits mute)."""
    from manual import degradation, degradation_plan, rollback

    d = rollback.Durations()
    waits = [rollback.confirm_step(d, s) for s in rollback.Scope] + [
        rollback.super_admin_approval_step(d, 1), rollback.second_approval_step(d, "alice"),
        rollback.approve_level_3_step(d, rollback.Scope.CROSS, 1), rollback.level_choice_step(d),
        rollback.fix_step(d, rollback.Role.SUPER_ADMIN), rollback.window_step(d),
        *(degradation_plan.second_approval_step(lv, d, "alice") for lv in degradation.LEVELS.values()),
        *(degradation_plan.confirm_step(lv, d) for lv in degradation.LEVELS.values())]
    for w in waits:
        assert w.timeout > timedelta(0), w.name
        # the data window's answer is `proceed` or `cancel`, and its timeout proceeds: its own exit
        assert w.exits or (w.name == "decision_window" and w.on_timeout == "proceed"), f"{w.name} has no exit"
