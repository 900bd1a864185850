"""Approval and store agree: every restore from the default values, approved by the lowest role allowed.

A restore (of a rollback or a degradation) writes change sets under `plan` authority, and the store
demands of the approver the owner role of every switch in a set (activities/switch_store.py). Found
by a fault campaign: the restore also carried switches the rollback had not changed (Level 1 from the
defaults leaves `global_betting_enabled` false -> false), so a risk manager's accepted `fix` ended with
the restore refused and the switches left at their rollback values. Here each path starts from the
defaults (or the one start the manual's cross-module rollback needs, NORMAL_MODE), the fix is given by
the lowest role that owns what changed (worked out from the control matrix here, not by the code under
test), one role lower is refused first, and the restore must land: values back, and every audit record
carries only switches whose value it changes.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.client import WorkflowUpdateFailedError

from manual import degradation, switches
from manual.rollback import MODULES, Durations, Scope, Severity, target_changes
from contracts.roles import Role
from tests.support.standins import StandIns
from tests.support.wf_helpers import audit_of, awaiting, incident, make_worker, save_history, set_switches, wait_for
from workflows.degradation import DegradationWorkflow, degrade_workflow_id
from contracts.progress import Decision
from workflows.models import DegradeInput, RollbackInput
from workflows.rollback import RollbackWorkflow, rollback_workflow_id

D = Durations(observe=timedelta(minutes=5), check_interval=timedelta(seconds=30))
BY_ROLE = {Role.ON_CALL: "oscar", Role.RISK_MANAGER: "rita", Role.SUPER_ADMIN: "alice"}
BELOW = {Role.RISK_MANAGER: Role.ON_CALL, Role.SUPER_ADMIN: Role.RISK_MANAGER}


def lowest_role(start: dict, target: dict) -> Role:
    """The highest owner among the switches the rollback really changes (the matrix's `permission`)."""
    changed = [k for k, v in target.items() if start[k] != v]
    return max((switches.get(k).permission for k in changed), key=lambda r: r.rank)


def defaults() -> dict:
    return {s.name: s.default for s in switches.SWITCHES}


CASES = [  # (id, how it starts, start values beyond the defaults, the change set it applies)
    *[(f"single_{m}", ("rollback", Scope.SINGLE, m), {}, target_changes(Scope.SINGLE, m))
      for m in sorted(MODULES) if any(defaults()[k] != v for k, v in target_changes(Scope.SINGLE, m).items())],
    ("cross_from_normal_mode", ("rollback", Scope.CROSS, None), {"routing_mode": "NORMAL_MODE"},
     target_changes(Scope.CROSS, None)),
    ("full_system", ("rollback", Scope.FULL, None), {}, target_changes(Scope.FULL, None)),
    *[(f"degrade_{n}", ("degrade", n), {}, dict(degradation.get(n).switch_set)) for n in (1, 2, 3)],
]


@pytest.mark.parametrize("how, extra, target", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_a_restore_from_the_defaults_lands_with_the_lowest_role_allowed(ts_env, store, task_queue, how, extra,
                                                                              target):
    if extra:
        await set_switches(store, "alice", **extra)
    start = {**defaults(), **extra}
    need = lowest_role(start, target)
    inc, si = incident(), StandIns()
    async with make_worker(ts_env, store, si, task_queue):
        if how[0] == "rollback":
            _, scope, switch = how
            wf, wid = RollbackWorkflow, rollback_workflow_id(inc)
            starter = "alice" if scope is Scope.FULL else "oscar"
            h = await ts_env.client.start_workflow(
                RollbackWorkflow.run, RollbackInput(incident_id=inc, summary="s", severity=Severity.CRITICAL,
                                                    scope=scope, switch=switch, requested_by=starter, reason="test",
                                                    durations=D), id=wid, task_queue=task_queue)
        else:
            level = how[1]
            wf, wid = DegradationWorkflow, degrade_workflow_id(level, inc)
            starter = "alice" if level == 3 else "oscar"
            h = await ts_env.client.start_workflow(
                DegradationWorkflow.run, DegradeInput(level=level, incident_id=inc, requested_by=starter,
                                                      reason="test", durations=D), id=wid, task_queue=task_queue)
        await wait_for(h, ts_env, awaiting("confirm"))
        await h.execute_update(wf.confirm, Decision(actor=starter, reason="holds"))
        p = await wait_for(h, ts_env, awaiting("fix"))
        assert p.awaiting.min_role == need.value, p.awaiting
        if need in BELOW:  # one role lower is refused by the workflow, before anything is written
            with pytest.raises(WorkflowUpdateFailedError) as e:
                await h.execute_update(wf.fix, Decision(actor=BY_ROLE[BELOW[need]], reference="r", tests_passed=True))
            assert f"needs {need.value}" in str(e.value.cause)
        await h.execute_update(wf.fix, Decision(actor=BY_ROLE[need], reference="fix-1", tests_passed=True))
        res = await h.result()
        if how == ("degrade", 1):
            await save_history(h, "degradation_level_1_restored_by_risk_manager")
    assert res.status == "restored", res
    snap = await store.snapshot()
    assert {k: snap.switches[k].value for k in target} == {k: start[k] for k in target}
    recs = await audit_of(store, wid)
    restores = [r for r in recs if r.approved_by == BY_ROLE[need]]
    assert restores and len(restores) == len(recs) - 1, [r.change_id for r in recs]  # the level's set, then these
    for rec in restores:  # (the level's own set is the manual's, as it stands: it may name a switch already there)
        assert all(c.old != c.new for c in rec.changes), (rec.reason, [(c.switch, c.old, c.new) for c in rec.changes])
    assert {c.switch for r in restores for c in r.changes} >= {k for k, v in target.items() if start[k] != v}


async def test_a_5pct_restore_that_breaches_rolls_back_again_carrying_only_what_it_changes(ts_env, store, task_queue):
    """The 5% canary of "Fix & Restart" fails its checks: the re-rollback writes back only what the 5% stage
    changed (before, it also named a switch it did not touch, and the store refused the set)."""
    await set_switches(store, "alice", global_betting_enabled=True, routing_mode="NORMAL_MODE")
    si, inc = StandIns(), incident()
    async with make_worker(ts_env, store, si, task_queue):
        h = await ts_env.client.start_workflow(
            RollbackWorkflow.run, RollbackInput(incident_id=inc, summary="s", severity=Severity.CRITICAL,
                                                scope=Scope.CROSS, requested_by="oscar", reason="test", durations=D),
            id=rollback_workflow_id(inc), task_queue=task_queue)
        await wait_for(h, ts_env, awaiting("confirm"))
        await h.execute_update(RollbackWorkflow.confirm, Decision(actor="oscar"))
        await wait_for(h, ts_env, awaiting("fix"))
        await h.execute_update(RollbackWorkflow.fix, Decision(actor="alice", reference="fix-1", tests_passed=True))
        await wait_for(h, ts_env, lambda p: any(r.name == "observe_5pct" for r in p.history))
        si.health["error_rate"] = 0.05  # internalization at 5% fails again
        res = await h.result()
    assert res.status == "restore_failed", res
    snap = await store.snapshot()
    assert (snap.switches["routing_mode"].value, snap.switches["global_betting_enabled"].value) == ("HL_MODE", False)
    recs = await audit_of(store, rollback_workflow_id(inc))
    assert [r.change_id.removeprefix(f"{rollback_workflow_id(inc)}:") for r in recs] == [
        "apply", "restore_5pct", "re_rollback"]
    for rec in recs[1:]:
        assert all(c.old != c.new for c in rec.changes), (rec.change_id, rec.changes)


@pytest.mark.parametrize("kind", ["rollback", "degrade_2"])
async def test_a_workflow_cancelled_in_temporal_says_what_stays_and_pages_it(ts_env, store, task_queue, kind):
    """Temporal's "Request Cancellation" (the Web UI's button) at a wait: before, the workflow just ended,
    switches left as they were, no page, no word. Now it pages what stays (nothing is restored: that
    needs a fix and its approvals), leaves that alert open for a human, and ends CANCELED."""
    from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError

    from contracts.progress import Progress

    await set_switches(store, "alice", global_betting_enabled=True, routing_mode="NORMAL_MODE")
    inc, si = incident(), StandIns()
    async with make_worker(ts_env, store, si, task_queue):
        if kind == "rollback":
            h = await ts_env.client.start_workflow(
                RollbackWorkflow.run, RollbackInput(incident_id=inc, summary="s", severity=Severity.CRITICAL,
                                                    scope=Scope.CROSS, requested_by="oscar", reason="t", durations=D),
                id=rollback_workflow_id(inc), task_queue=task_queue)
            held = ("routing_mode=HL_MODE", "global_betting_enabled=false")
        else:
            h = await ts_env.client.start_workflow(
                DegradationWorkflow.run, DegradeInput(level=2, incident_id=inc, requested_by="oscar", reason="t",
                                                      durations=D), id=degrade_workflow_id(2, inc),
                task_queue=task_queue)
            held = ("liquidation_enabled=false", "pause_hl_opens")
        await wait_for(h, ts_env, awaiting("confirm"))
        await h.cancel()
        with pytest.raises(WorkflowFailureError):
            await h.result()
        p = await h.query("progress", result_type=Progress)
        if kind == "rollback":
            await save_history(h, "rollback_cancelled_in_temporal_at_confirm")
    assert (await h.describe()).status == WorkflowExecutionStatus.CANCELED
    assert p.status == "cancelled" and "nothing restored" in p.detail and all(x in p.detail for x in held), p.detail
    [page] = [pg for pg in si.pages if "CANCELLED" in (pg.get("summary") or pg.get("text") or "")]
    assert page["severity"] == "critical"
    assert any(a.status.value == "left_open" and "nothing restored" in a.why for a in p.alerts), p.alerts
    snap = await store.snapshot()  # left as the workflow left them: said, not silently changed
    assert snap.switches["global_betting_enabled"].value is False
