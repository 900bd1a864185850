"""RollbackWorkflow: every branch of the decision tree under the time-skipping server, with the real
switch store in etcd (final values and audit records asserted there) and stand-in trading-core and
paging activities (tests/support/standins.py). End-to-end runs against the simulator live in test_e2e_*."""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import WorkflowAlreadyStartedError

from manual.rollback import Durations, Scope, Severity
from tests.support.standins import StandIns
from tests.support import wf_helpers
from tests.support.wf_helpers import (awaiting, incident, make_worker, save_history, set_switches, terminate_idle,
                              values, wait_for)
from contracts.progress import Decision
from workflows.models import RollbackInput
from workflows.rollback import RollbackWorkflow, rollback_workflow_id

D = Durations(observe=timedelta(minutes=5), check_interval=timedelta(seconds=30))


def start(env, tq, inc, severity=Severity.CRITICAL, scope=Scope.CROSS, switch=None, by="oscar", d=D):
    return env.client.start_workflow(
        RollbackWorkflow.run,
        RollbackInput(incident_id=inc, summary="s", severity=severity, scope=scope, switch=switch,
                      requested_by=by, reason="test", durations=d),
        id=rollback_workflow_id(inc), task_queue=tq)


async def audit_of(store, inc):
    return await wf_helpers.audit_of(store, rollback_workflow_id(inc))


async def test_critical_cross_module_confirm_fix_restore_through_5pct(ts_env, store, task_queue):
    await set_switches(store, "alice", global_betting_enabled=True, routing_mode="NORMAL_MODE")
    si, inc = StandIns(), incident()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, inc)
        p = await wait_for(h, ts_env, awaiting("confirm"))
        assert await values(store, "routing_mode", "global_betting_enabled") == {
            "routing_mode": "HL_MODE", "global_betting_enabled": False}
        assert {c.id: c.status for c in p.checklist} == {
            "notify": "ok", "snapshot": "ok", "requester_role": "ok", "hl_health": "ok", "exposure": "ok",
            "pause_canaries": "ok"}
        assert p.snapshot["routing_mode"] == "NORMAL_MODE"
        with pytest.raises(WorkflowUpdateFailedError) as e:
            await h.execute_update(RollbackWorkflow.confirm, Decision(actor="vic"))
        assert "needs on_call" in str(e.value.cause)
        with pytest.raises(WorkflowUpdateFailedError) as e:
            await h.execute_update(RollbackWorkflow.fix, Decision(actor="alice", reference="x", tests_passed=True))
        assert "waits for 'confirm'" in str(e.value.cause)
        await h.execute_update(RollbackWorkflow.confirm, Decision(actor="oscar", reason="holds"))
        await wait_for(h, ts_env, awaiting("fix"))
        with pytest.raises(WorkflowUpdateFailedError) as e:  # restore re-enables a super-admin switch
            await h.execute_update(RollbackWorkflow.fix, Decision(actor="rita", reference="r1", tests_passed=True))
        assert "super_admin" in str(e.value.cause)
        with pytest.raises(WorkflowUpdateFailedError) as e:
            await h.execute_update(RollbackWorkflow.fix, Decision(actor="alice", reference="r1"))
        assert "--tests-passed" in str(e.value.cause)
        await h.execute_update(RollbackWorkflow.fix, Decision(actor="alice", reference="fix-123", tests_passed=True))
        await wait_for(h, ts_env, lambda p: any(r.name == "observe_5pct" for r in p.history))
        assert (await values(store, "betting_traffic_pct"))["betting_traffic_pct"] == 5
        res = await h.result()
        await save_history(h, "rollback_critical_cross_restored")
    assert res.status == "restored", res
    assert await values(store, "routing_mode", "global_betting_enabled", "betting_traffic_pct") == {
        "routing_mode": "NORMAL_MODE", "global_betting_enabled": True, "betting_traffic_pct": 100}
    audit = await audit_of(store, inc)
    assert [(a.actor, a.approved_by, len(a.changes)) for a in audit] == [
        ("oscar", None, 2), ("oscar", "alice", 3), ("oscar", "alice", 1)]  # the full stage: only the traffic back
    assert audit[0].changes[0].old == "NORMAL_MODE" and audit[0].changes[0].new == "HL_MODE"
    assert any(pg["event_action"] == "resolve" for pg in si.pages)


async def test_a_5pct_restore_with_no_order_on_the_restored_path_rolls_back_again(ts_env, store, task_queue):
    """Trading paused at the core: the 5% stage cannot verify anything, so it does not pass."""
    await set_switches(store, "alice", global_betting_enabled=True, routing_mode="NORMAL_MODE")
    si, inc = StandIns(), incident()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, inc)
        await wait_for(h, ts_env, awaiting("confirm"))
        await h.execute_update(RollbackWorkflow.confirm, Decision(actor="oscar", reason="holds"))
        await wait_for(h, ts_env, awaiting("fix"))
        si.health["internal_orders_per_min"] = 0.0
        await h.execute_update(RollbackWorkflow.fix, Decision(actor="alice", reference="fix-9", tests_passed=True))
        res = await h.result()
        await save_history(h, "rollback_5pct_no_traffic_rolled_back_again")
    assert res.status == "restore_failed" and "saw no live traffic" in res.detail, res
    assert await values(store, "routing_mode", "global_betting_enabled") == {
        "routing_mode": "HL_MODE", "global_betting_enabled": False}
    assert any("saw no live traffic" in pg.get("summary", "") and pg["severity"] == "critical" for pg in si.pages)


@pytest.mark.parametrize("scope,switch,expected", [
    (Scope.SINGLE, "hedging", {"hedge_enabled": False}),
    (Scope.SINGLE, "hedge_max_leverage", {"hedge_max_leverage": 1.5}),
    (Scope.CROSS, None, {"routing_mode": "HL_MODE", "global_betting_enabled": False}),
    (Scope.FULL, None, {"global_api_enabled": False}),
])
async def test_each_level_applies_its_change_set(ts_env, store, task_queue, scope, switch, expected):
    await set_switches(store, "alice", global_betting_enabled=True, routing_mode="NORMAL_MODE")
    si, inc = StandIns(), incident()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, inc, scope=scope, switch=switch, by="alice")
        await wait_for(h, ts_env, awaiting("confirm"))
        assert await values(store, *expected) == expected
        await h.execute_update(RollbackWorkflow.confirm, Decision(actor="alice"))
        await wait_for(h, ts_env, awaiting("fix"))
        await h.execute_update(RollbackWorkflow.fix, Decision(actor="alice", restore=False, reason="stay"))
        res = await h.result()
    assert res.status == "closed_without_restore"
    assert len(await audit_of(store, inc)) == 1


async def test_full_system_by_on_call_waits_for_a_super_admin(ts_env, store, task_queue):
    si, inc = StandIns(), incident()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, inc, scope=Scope.FULL, by="oscar")
        p = await wait_for(h, ts_env, awaiting("confirm"))
        assert p.awaiting.min_role == "super_admin" and p.awaiting.step == "super_admin_approval"
        assert (await values(store, "global_api_enabled"))["global_api_enabled"] is True
        with pytest.raises(WorkflowUpdateFailedError):
            await h.execute_update(RollbackWorkflow.confirm, Decision(actor="rita"))
        await h.execute_update(RollbackWorkflow.confirm, Decision(actor="sam", reason="approve L3"))
        await wait_for(h, ts_env, lambda p: p.awaiting is not None and p.awaiting.step == "confirm")
        assert (await values(store, "global_api_enabled"))["global_api_enabled"] is False
        await terminate_idle(h)


@pytest.mark.parametrize("how", ["auto", "proceed", "cancel"])
async def test_data_inconsistency_window(ts_env, store, task_queue, how):
    si, inc = StandIns(), incident()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, inc, severity=Severity.DATA, scope=Scope.SINGLE, switch="withdrawals")
        p = await wait_for(h, ts_env, awaiting("proceed_or_cancel"), step=timedelta(seconds=1))
        assert (await values(store, "withdrawal_enabled"))["withdrawal_enabled"] is True
        if how == "cancel":
            with pytest.raises(WorkflowUpdateFailedError) as e:
                await h.execute_update(RollbackWorkflow.cancel, Decision(actor="oscar"))
            assert "needs a reason" in str(e.value.cause)
            await h.execute_update(RollbackWorkflow.cancel, Decision(actor="oscar", reason="false alarm"))
            assert (await h.result()).status == "cancelled"
            await save_history(h, "rollback_data_window_cancelled")
            assert (await values(store, "withdrawal_enabled"))["withdrawal_enabled"] is True
            return
        if how == "proceed":
            await h.execute_update(RollbackWorkflow.proceed, Decision(actor="oscar"))
        p = await wait_for(h, ts_env, awaiting("confirm"))
        window = next(r for r in p.history if r.name == "decision_window")
        assert window.outcome == ("timeout" if how == "auto" else "proceed")
        if how == "auto":
            assert window.ended_at - window.started_at >= timedelta(minutes=5)
        assert (await values(store, "withdrawal_enabled"))["withdrawal_enabled"] is False
        await terminate_idle(h)


async def test_non_critical_is_monitored_without_change(ts_env, store, task_queue):
    si, inc = StandIns(), incident()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, inc, severity=Severity.NON_CRITICAL)
        res = await h.result()
        await save_history(h, "rollback_non_critical_monitored")
    assert res.status == "monitored" and res.applied == []
    assert await audit_of(store, inc) == []
    assert si.chats, "the channel was told"


async def test_non_critical_escalated_becomes_a_rollback(ts_env, store, task_queue):
    si, inc = StandIns(), incident()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, inc, severity=Severity.NON_CRITICAL, scope=Scope.SINGLE, switch="hedging")
        await wait_for(h, ts_env, lambda p: p.current_step == "monitor", step=timedelta(seconds=1))
        with pytest.raises(WorkflowUpdateFailedError):
            await h.execute_update(RollbackWorkflow.escalate, Decision(actor="vic"))
        await h.execute_update(RollbackWorkflow.escalate, Decision(actor="oscar", reason="getting worse"))
        p = await wait_for(h, ts_env, awaiting("confirm"))
        assert p.escalations and "oscar" in p.escalations[0]
        assert (await values(store, "hedge_enabled"))["hedge_enabled"] is False
        await terminate_idle(h)


async def test_breach_escalates_single_to_cross_then_level_3_needs_super_admin(ts_env, store, task_queue):
    await set_switches(store, "alice", global_betting_enabled=True)
    si, inc = StandIns(), incident()
    si.health["error_rate"] = 0.05  # keeps breaching
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, inc, scope=Scope.SINGLE, switch="hedging")
        p = await wait_for(h, ts_env, awaiting("escalate"))
        assert p.level == "cross_module" and p.escalations[0].startswith("breach: single_module -> cross_module")
        assert await values(store, "hedge_enabled", "routing_mode", "global_betting_enabled", "global_api_enabled") == {
            "hedge_enabled": False, "routing_mode": "HL_MODE", "global_betting_enabled": False,
            "global_api_enabled": True}
        with pytest.raises(WorkflowUpdateFailedError):
            await h.execute_update(RollbackWorkflow.escalate, Decision(actor="oscar"))
        await h.execute_update(RollbackWorkflow.escalate, Decision(actor="sam", reason="go L3"))
        si.health["error_rate"] = 0.001
        await wait_for(h, ts_env, awaiting("confirm"))
        assert (await values(store, "global_api_enabled"))["global_api_enabled"] is False
        await save_history(h, "rollback_breach_escalated_to_level_3")
        await terminate_idle(h)
    sources = [len(a.changes) for a in await audit_of(store, inc)]
    assert sources == [1, 2, 1]


async def test_one_flaky_read_does_not_escalate(ts_env, store, task_queue):
    si, inc = StandIns(), incident()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, inc, scope=Scope.SINGLE, switch="hedging")
        await wait_for(h, ts_env, lambda p: p.current_step == "observe", step=timedelta(seconds=1))
        si.health["error_rate"] = 0.05
        await wait_for(h, ts_env, lambda p: p.checks and not p.checks[-1].ok, step=timedelta(seconds=10))
        si.health["error_rate"] = 0.001
        p = await wait_for(h, ts_env, awaiting("confirm"))
        assert p.escalations == [] and p.level == "single_module"
        await terminate_idle(h)


async def test_hl_down_at_checklist_pauses_orders_and_asks_for_level(ts_env, store, task_queue):
    si, inc = StandIns(), incident()
    si.health.update(hl_connected=False, hl_disconnected_for_s=120.0)
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, inc, scope=Scope.CROSS)
        p = await wait_for(h, ts_env, awaiting("level_choice"), step=timedelta(seconds=1))
        assert (await values(store, "routing_mode"))["routing_mode"] == "HL_MODE"  # unchanged default, not forced
        assert await audit_of(store, inc) == []
        assert [a["action"] for a in si.actions] == ["pause_new_orders"]
        hl = next(c for c in p.checklist if c.id == "hl_health")
        assert hl.status == "failed" and "strand" in hl.detail
        with pytest.raises(WorkflowUpdateFailedError) as e:
            await h.execute_update(RollbackWorkflow.escalate, Decision(actor="oscar", level=3))
        assert "level 3 needs super_admin" in str(e.value.cause)
        await h.execute_update(RollbackWorkflow.escalate, Decision(actor="oscar", level=2, reason="protect assets"))
        await wait_for(h, ts_env, awaiting("confirm"))
        assert await values(store, "liquidation_enabled", "global_betting_enabled") == {
            "liquidation_enabled": False, "global_betting_enabled": False}
        # Level 2 is its switches and its trading-core controls, as `rollbackctl degrade 2` applies it
        assert [a["action"] for a in si.actions] == ["pause_new_orders", "pause_hl_opens", "pause_large_withdrawals"]
        si.health.update(hl_connected=True, hl_disconnected_for_s=0.0)  # HL is back
        await h.execute_update(RollbackWorkflow.confirm, Decision(actor="oscar"))
        await wait_for(h, ts_env, awaiting("fix"))
        await h.execute_update(RollbackWorkflow.fix, Decision(actor="alice", reference="hl-incident-42",
                                                              tests_passed=True))
        res = await h.result()
        # (tests/histories/rollback_hl_down_level_2.json: the same branch before patch "hl-down-core-actions")
        await save_history(h, "rollback_hl_down_level_2_restored")
    assert res.status == "restored", res.detail
    # what it paused is resumed (in reverse) before the switches go back; nothing is left in force
    assert [a["action"] for a in si.actions][3:] == ["resume_large_withdrawals", "resume_hl_opens", "resume_new_orders"]
    assert "still in force" not in res.detail
    assert (await values(store, "liquidation_enabled"))["liquidation_enabled"] is True


async def test_hl_down_closed_without_restore_says_orders_stay_paused(ts_env, store, task_queue):
    si, inc = StandIns(), incident()
    si.health.update(hl_connected=False, hl_disconnected_for_s=120.0)
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, inc, scope=Scope.CROSS)
        await wait_for(h, ts_env, awaiting("level_choice"), step=timedelta(seconds=1))
        await h.execute_update(RollbackWorkflow.escalate, Decision(actor="alice", level=3, reason="HL gone"))
        await wait_for(h, ts_env, awaiting("confirm"))
        await h.execute_update(RollbackWorkflow.confirm, Decision(actor="alice"))
        await wait_for(h, ts_env, awaiting("fix"))
        await h.execute_update(RollbackWorkflow.fix, Decision(actor="alice", restore=False, reason="HL still down"))
        res = await h.result()
    assert res.status == "closed_without_restore"
    assert "still in force: pause_new_orders" in res.detail
    assert [a["action"] for a in si.actions] == ["pause_new_orders"]  # Level 3 has no core controls; nothing undone
    assert any("still in force: pause_new_orders" in pg["summary"] and pg["severity"] == "critical" for pg in si.pages)


async def test_unconfirmed_rollback_repages_at_the_next_level(ts_env, store, task_queue):
    si, inc = StandIns(), incident()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, inc, scope=Scope.SINGLE, switch="hedging")
        await wait_for(h, ts_env, awaiting("confirm"))
        p = await wait_for(h, ts_env, lambda p: p.awaiting and p.awaiting.repages >= 1, step=timedelta(minutes=2))
        assert p.page_level == 2
        assert any(pg["escalation_level"] == 2 and "UNANSWERED" in pg["summary"] for pg in si.pages)
        await h.execute_update(RollbackWorkflow.confirm, Decision(actor="oscar"))
        await wait_for(h, ts_env, awaiting("fix"))
        await terminate_idle(h)


async def test_duplicate_start_is_refused(dev_env, store, task_queue):
    # On the dev server: a refused start confuses the time-skipping server's clock lock.
    si, inc = StandIns(), incident()
    async with make_worker(dev_env, store, si, task_queue):
        h = await start(dev_env, task_queue, inc, scope=Scope.SINGLE, switch="hedging")
        with pytest.raises(WorkflowAlreadyStartedError):
            await start(dev_env, task_queue, inc, scope=Scope.CROSS)
        await terminate_idle(h)


async def test_restore_does_not_overwrite_a_switch_changed_since(ts_env, store, task_queue):
    await set_switches(store, "alice", global_betting_enabled=True, routing_mode="NORMAL_MODE")
    si, inc = StandIns(), incident()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, inc, scope=Scope.CROSS)
        await wait_for(h, ts_env, awaiting("confirm"))
        await h.execute_update(RollbackWorkflow.confirm, Decision(actor="oscar"))
        await wait_for(h, ts_env, awaiting("fix"))
        await set_switches(store, "rita", routing_mode="BETTING_MODE")  # someone moved it meanwhile
        await h.execute_update(RollbackWorkflow.fix, Decision(actor="alice", reference="f", tests_passed=True))
        res = await h.result()
    assert res.status == "restore_blocked"
    await save_history(h, "rollback_restore_blocked")
    assert "routing_mode is BETTING_MODE (set by rita" in res.detail
    # the page names every switch still off, not only the one in the way
    assert "Not restored" in res.detail and "global_betting_enabled=false (was true)" in res.detail
    (stopped,) = [p for p in si.pages if "stopped:" in p["summary"]]
    assert "global_betting_enabled=false (was true)" in stopped["summary"]
    assert await values(store, "routing_mode", "global_betting_enabled") == {
        "routing_mode": "BETTING_MODE", "global_betting_enabled": False}


async def test_refused_signal_is_recorded_and_ignored(ts_env, store, task_queue):
    si, inc = StandIns(), incident()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, inc, scope=Scope.SINGLE, switch="hedging")
        await wait_for(h, ts_env, awaiting("confirm"))
        await h.signal("confirm", Decision(actor="vic"))
        await h.signal("confirm", Decision(actor="mallory"))
        p = await wait_for(h, ts_env, lambda p: len([d for d in p.decisions if not d.accepted]) == 2,
                           step=timedelta(seconds=1))
        assert p.awaiting.expects == "confirm"
        await h.signal("confirm", Decision(actor="oscar"))
        await wait_for(h, ts_env, awaiting("fix"))
        await terminate_idle(h)


async def test_viewer_cannot_start_a_rollback(ts_env, store, task_queue):
    si, inc = StandIns(), incident()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, inc, scope=Scope.SINGLE, switch="hedging", by="vic")
        res = await h.result()
    assert res.status == "failed" and "rollbacks need on_call" in res.detail
    assert await audit_of(store, inc) == []
