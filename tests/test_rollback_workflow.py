"""RollbackWorkflow branches under the time-skipping server, with the real switch store (etcd)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.worker import Worker

from activities.changes import ChangeSetRequest, SwitchChange
from activities.switch_activities import SwitchActivities
from manual.rollback import Durations, Scope, Severity
from tests.standins import StandIns
from workflows.models import Decision, RollbackInput
from workflows.registry import WORKFLOWS
from workflows.rollback import RollbackWorkflow, rollback_workflow_id

FAST = Durations(observe=timedelta(minutes=5), check_interval=timedelta(seconds=30))


async def set_switches(store, actor, **values):
    await store.apply(ChangeSetRequest(change_id=f"setup-{uuid.uuid4()}", actor=actor, reason="test setup",
                                       changes=[SwitchChange(switch=k, value=v) for k, v in values.items()]))


async def values(store, *names):
    snap = await store.snapshot()
    return {n: snap.switches[n].value for n in names}


def worker(env, store, standins, tq):
    sa = SwitchActivities(store)
    return Worker(env.client, task_queue=tq, workflows=WORKFLOWS,
                  activities=[sa.apply, sa.snapshot, sa.roster, *standins.methods()])


async def wait_for(handle, env, pred, step=timedelta(seconds=30), limit=200):
    for _ in range(limit):
        p = await handle.query(RollbackWorkflow.progress)
        if pred(p):
            return p
        await env.sleep(step)
    raise AssertionError(f"condition not reached; progress: {p}")


async def test_critical_cross_module_rollback_confirm_fix_restore(ts_env, store, task_queue):
    await set_switches(store, "alice", global_betting_enabled=True, routing_mode="NORMAL_MODE")
    si = StandIns()
    inc = f"inc-{uuid.uuid4().hex[:8]}"
    async with worker(ts_env, store, si, task_queue):
        h = await ts_env.client.start_workflow(
            RollbackWorkflow.run,
            RollbackInput(incident_id=inc, summary="internalization losing money", severity=Severity.CRITICAL,
                          scope=Scope.CROSS, requested_by="oscar", reason="P&L anomaly", durations=FAST),
            id=rollback_workflow_id(inc), task_queue=task_queue)
        p = await wait_for(h, ts_env, lambda p: p.awaiting is not None and p.awaiting.expects == "confirm")
        assert await values(store, "routing_mode", "global_betting_enabled") == {
            "routing_mode": "HL_MODE", "global_betting_enabled": False}
        assert [c.id for c in p.checklist][:2] == ["notify", "snapshot"] or "snapshot" in [c.id for c in p.checklist]
        # a viewer may not confirm
        with pytest.raises(WorkflowUpdateFailedError) as e:
            await h.execute_update(RollbackWorkflow.confirm, Decision(actor="vic"))
        assert "needs on_call" in str(e.value.cause)
        await h.execute_update(RollbackWorkflow.confirm, Decision(actor="oscar", reason="holds"))
        await wait_for(h, ts_env, lambda p: p.awaiting is not None and p.awaiting.expects == "fix")
        # restore re-enables a super-admin switch: a risk manager is refused
        with pytest.raises(WorkflowUpdateFailedError) as e:
            await h.execute_update(RollbackWorkflow.fix, Decision(actor="rita", reference="r1", tests_passed=True))
        assert "super_admin" in str(e.value.cause)
        await h.execute_update(RollbackWorkflow.fix, Decision(actor="alice", reference="fix-123", tests_passed=True))
        p = await wait_for(h, ts_env, lambda p: any(r.name == "restore_5pct" for r in p.history))
        assert (await values(store, "betting_traffic_pct"))["betting_traffic_pct"] == 5
        res = await h.result()
    assert res.status == "restored", res
    assert await values(store, "routing_mode", "global_betting_enabled", "betting_traffic_pct") == {
        "routing_mode": "NORMAL_MODE", "global_betting_enabled": True, "betting_traffic_pct": 100}
    audit = [a for a in await store.audit() if a.source == rollback_workflow_id(inc)]
    assert [len(a.changes) for a in audit] == [2, 3, 3]
    assert audit[1].approved_by == "alice" and audit[0].actor == "oscar"
    assert si.pages, "the rollback paged"
