"""Human decisions sent twice, late, to the wrong workflow or by the wrong role: refused with a
reason, or idempotent (the same Update id), and never advancing anything twice. Updates on the
Temporal dev server (real time) with every real activity."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError

from manual.rollback import Durations, Scope, Severity
from tests.support.fixtures_sim import apply_and_wait
from tests.support.wf_helpers import awaiting, incident, poll_progress, real_worker
from contracts.progress import Decision
from workflows.models import RollbackInput
from workflows.rollback import RollbackWorkflow, rollback_workflow_id

pytestmark = pytest.mark.timeout(180)

QUICK = Durations(observe=timedelta(milliseconds=500), check_interval=timedelta(milliseconds=250),
                  restore_observe=timedelta(milliseconds=500), confirm_sla=timedelta(minutes=10),
                  decision_window=timedelta(minutes=10))


async def start(env, tq, severity=Severity.CRITICAL, scope=Scope.CROSS, by="oscar"):
    inc = incident()
    return await env.client.start_workflow(
        RollbackWorkflow.run,
        RollbackInput(incident_id=inc, summary="s", severity=severity, scope=scope, requested_by=by, reason="r",
                      durations=QUICK),
        id=rollback_workflow_id(inc), task_queue=tq)


async def refused(coro) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as e:
        await coro
    return str(getattr(e.value.cause, "message", e.value.cause))


def steps(p, name: str) -> int:
    return sum(1 for s in p.history if s.name == name)


async def test_confirmations_twice_late_wrong_workflow_wrong_role(dev_env, store, sim, core_settings, paging_settings,
                                                                  http, task_queue):
    await apply_and_wait(sim, store, global_betting_enabled=True, routing_mode="NORMAL_MODE")
    async with real_worker(dev_env, store, core_settings, paging_settings, http, task_queue):
        h = await start(dev_env, task_queue)
        other = await start(dev_env, task_queue, severity=Severity.DATA)  # waits for proceed/cancel
        await poll_progress(other, awaiting("proceed_or_cancel"))
        await poll_progress(h, awaiting("confirm"))

        # the wrong role, an unknown actor, the wrong kind: refused, nothing recorded, nothing moves
        why = await refused(h.execute_update(RollbackWorkflow.confirm, Decision(actor="vic")))
        assert why == "vic is viewer; step 'confirm' needs on_call or above", why
        why = await refused(h.execute_update(RollbackWorkflow.confirm, Decision(actor="mallory")))
        assert why == "'mallory' is not an operator", why
        why = await refused(h.execute_update(RollbackWorkflow.proceed, Decision(actor="oscar")))
        assert "waits for 'confirm' at step 'confirm', not 'proceed'" in why, why
        # a confirmation meant for h sent to `other` (waiting for proceed/cancel): refused there
        why = await refused(other.execute_update(RollbackWorkflow.confirm, Decision(actor="oscar")))
        assert "waits for 'proceed_or_cancel' at step 'decision_window', not 'confirm'" in why, why
        # ... and to a workflow that does not exist
        with pytest.raises(RPCError) as e:
            await dev_env.client.get_workflow_handle("rollback-no-such-incident").execute_update(
                RollbackWorkflow.confirm, Decision(actor="oscar"))
        assert "not found" in e.value.message.lower()
        # the Web UI's signal by the wrong role: recorded as refused, ignored
        await h.signal(RollbackWorkflow.confirm_signal, Decision(actor="vic"))
        p = await poll_progress(h, lambda p: any(not d.accepted for d in p.decisions))
        assert p.awaiting.expects == "confirm" and [d.accepted for d in p.decisions] == [False]

        # the same Update twice (a client retry: the same update id): one decision, the same answer
        a1 = await h.execute_update(RollbackWorkflow.confirm, Decision(actor="oscar", reason="ok"), id="confirm-1")
        a2 = await h.execute_update(RollbackWorkflow.confirm, Decision(actor="oscar", reason="ok"), id="confirm-1")
        assert a1 == a2 and a1.accepted
        p = await poll_progress(h, awaiting("fix"))
        # sent again (a new update id), late: the workflow has moved on; refused, saying where it is
        why = await refused(h.execute_update(RollbackWorkflow.confirm, Decision(actor="oscar")))
        assert "waits for 'fix' at step 'fix', not 'confirm'" in why, why
        p = await h.query(RollbackWorkflow.progress)
        assert steps(p, "confirm") == 1 and steps(p, "fix") == 1
        assert [(d.kind, d.actor, d.accepted) for d in p.decisions] == [("confirm", "vic", False),
                                                                         ("confirm", "oscar", True)]

        await h.execute_update(RollbackWorkflow.fix, Decision(actor="alice", reference="r5", tests_passed=True))
        res = await h.result()
        assert res.status == "restored"
        # after the end: refused by Temporal itself (the CLI says exit 4)
        with pytest.raises(RPCError) as e:
            await h.execute_update(RollbackWorkflow.confirm, Decision(actor="oscar"))
        assert "completed" in e.value.message.lower()
        assert len([a for a in await store.audit() if a.source == h.id]) == 3  # apply, 5%, full: once each
        await other.terminate("test over")


async def test_conflicting_decisions_at_the_same_moment_only_one_is_accepted(dev_env, store, sim, core_settings,
                                                                            paging_settings, http, task_queue):
    """`proceed` and `cancel` of one decision window at once: one wins; the other caller is refused,
    not told "accepted" while its decision is dropped."""
    async with real_worker(dev_env, store, core_settings, paging_settings, http, task_queue):
        for _ in range(3):
            h = await start(dev_env, task_queue, severity=Severity.DATA)
            await poll_progress(h, awaiting("proceed_or_cancel"))
            results = await asyncio.gather(
                h.execute_update(RollbackWorkflow.proceed, Decision(actor="oscar")),
                h.execute_update(RollbackWorkflow.cancel, Decision(actor="rita", reason="false alarm")),
                h.execute_update(RollbackWorkflow.proceed, Decision(actor="sam")),
                return_exceptions=True)
            accepted = [r for r in results if not isinstance(r, BaseException)]
            assert len(accepted) == 1, results
            p = await poll_progress(h, lambda p: p.current_step != "decision_window" or p.status != "running")
            won = p.history[0].outcome
            assert [d.kind for d in p.decisions if d.accepted] == [won]
            for r in results:  # refused by the validator, or (cancel won) by Temporal: the workflow ended
                if isinstance(r, WorkflowUpdateFailedError):
                    why = str(r.cause.message)
                    assert "was already accepted at step 'decision_window'" in why or "not waiting" in why, why
                elif isinstance(r, BaseException):
                    assert isinstance(r, RPCError) and "completed" in r.message, r
            print(f"\nproceed/cancel/proceed at once: {won} won; the others: "
                  + "; ".join(str(getattr(r, "cause", r)) for r in results if isinstance(r, BaseException)))
            if p.status == "running":
                await h.terminate("test over")
