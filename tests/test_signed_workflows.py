"""Signed approvals in workflows (signing on): refusals that say which, nothing written after one, the
two-person rule, break-glass, key rotation within the roster refresh. Time-skipping server; Updates
are sent while the workflow waits in a step (idle), the real etcd store is asserted."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from manual.rollback import Durations, Scope, Severity
from core import identity
from tests.support.identity_helpers import Signers, Unchanged, refused, save_signed_history, signing_worker
from tests.support.standins import StandIns
from tests.support.wf_helpers import audit_of, awaiting, incident, set_switches, terminate_idle, values, wait_for
from workflows.degradation import DegradationWorkflow, degrade_workflow_id
from contracts.progress import Decision
from workflows.models import DegradeInput, RollbackInput
from workflows.rollback import RollbackWorkflow, rollback_workflow_id

D = Durations(observe=timedelta(minutes=1), check_interval=timedelta(seconds=30))
# Workflow time skipped between progress queries: not a divisor of the 30 s health checks and roster
# refreshes, so an Update sent right after a wait_for does not land on a timer's instant (the
# time-skipping server then fails the task: "invalid history builder state for action").
OFF_BEAT = timedelta(seconds=13)


@pytest.fixture
async def signers(store) -> Signers:
    s = Signers()
    await s.register(store)
    return s


def rollback_input(inc, by="oscar", scope=Scope.CROSS, **kw) -> RollbackInput:
    return RollbackInput(incident_id=inc, summary="s", severity=Severity.CRITICAL, scope=scope, requested_by=by,
                         reason="test", durations=D, **kw)


async def start_signed(env, signers: Signers, task_queue: str, inc: str, **kw):
    """A critical rollback of incident `inc`, its start signed by the requester as the CLI signs it."""
    wid = rollback_workflow_id(inc)
    return await env.client.start_workflow(RollbackWorkflow.run, signers.start(rollback_input(inc, **kw),
                                           "rollback.start", wid), id=wid, task_queue=task_queue)


async def start_level_3(env, signers: Signers, task_queue: str, inc: str, **kw):
    """Degradation Level 3 of incident `inc` asked by alice, its start signed as the CLI signs it."""
    wid = degrade_workflow_id(3, inc)
    inp = DegradeInput(level=3, incident_id=inc, requested_by="alice", reason="db down", durations=D, **kw)
    return await env.client.start_workflow(DegradationWorkflow.run, signers.start(inp, "degrade.start", wid),
                                           id=wid, task_queue=task_queue)


async def test_decisions_are_refused_unless_signed_for_this_workflow_step_and_action(
        ts_env, store, etcd, prefix, signers, task_queue):
    await set_switches(store, "alice", global_betting_enabled=True, routing_mode="NORMAL_MODE")
    si, inc = StandIns(), incident()
    wid = rollback_workflow_id(inc)
    async with signing_worker(ts_env, store, si, task_queue):
        h = await start_signed(ts_env, signers, task_queue, inc)
        await wait_for(h, ts_env, awaiting("confirm"), step=OFF_BEAT)
        assert await values(store, "routing_mode") == {"routing_mode": "HL_MODE"}
        audit = await audit_of(store, wid)
        assert [s["request"]["action"] for s in audit[0].model_extra["signatures"]] == ["rollback.start"]

        ok = Decision(actor="oscar", reason="holds")
        mallory = Ed25519PrivateKey.generate()
        async with Unchanged(etcd, prefix):
            await refused(h.execute_update(RollbackWorkflow.confirm, ok), "refused (unsigned)",
                          f"use `rollbackctl confirm {wid}")
            forged = signers.decision(wid, "confirm", "confirm", ok).model_copy(update={"reason": "something else"})
            await refused(h.execute_update(RollbackWorkflow.confirm, forged), "refused (bad signature)")
            await refused(h.execute_update(RollbackWorkflow.confirm,
                                           signers.decision(wid, "confirm", "confirm", ok, key=mallory)),
                          "refused (unknown key)")
            await refused(h.execute_update(RollbackWorkflow.confirm,
                                           signers.decision("rollback-other", "confirm", "confirm", ok)),
                          "refused (other workflow)", "rollback-other")
            await refused(h.execute_update(RollbackWorkflow.confirm, signers.decision(wid, "confirm", "observe", ok)),
                          "refused (other step)", "signed at step 'observe'")
            await refused(h.execute_update(RollbackWorkflow.confirm, signers.decision(wid, "proceed", "confirm", ok)),
                          "refused (other action)")
            await h.signal("confirm", Decision(actor="oscar"))  # the Web UI's signal cannot sign
            p = await wait_for(h, ts_env, lambda p: any(not d.accepted for d in p.decisions), step=timedelta(seconds=1))
            assert p.awaiting.step == "confirm"
            assert "refused (unsigned)" in p.decisions[-1].detail and "rollbackctl confirm" in p.decisions[-1].detail

        good = signers.decision(wid, "confirm", "confirm", ok)
        await h.execute_update(RollbackWorkflow.confirm, good)
        p = await wait_for(h, ts_env, awaiting("fix"), step=OFF_BEAT)
        assert p.decisions[-1].key_id == identity.key_id(signers.public("oscar"))
        async with Unchanged(etcd, prefix):  # the same signed confirm again, now at the fix step
            await refused(h.execute_update(RollbackWorkflow.confirm, good), "refused (other")
        await terminate_idle(h)


async def test_level_3_needs_two_super_admins_one_person_twice_is_refused(ts_env, store, etcd, prefix, signers,
                                                                         task_queue):
    si, inc = StandIns(), incident()
    wid = degrade_workflow_id(3, inc)
    async with signing_worker(ts_env, store, si, task_queue):
        h = await start_level_3(ts_env, signers, task_queue, inc)
        p = await wait_for(h, ts_env, lambda p: p.awaiting is not None and p.awaiting.step == "second_approval",
                           step=timedelta(seconds=1))
        aw = p.awaiting
        assert (aw.approvals_needed, aw.approved_by, aw.still_needed) == (2, ["alice"], ["sam"])
        assert "still needed: one of sam" in aw.prompt
        assert (await values(store, "global_api_enabled"))["global_api_enabled"] is True
        async with Unchanged(etcd, prefix):
            await refused(h.execute_update(DegradationWorkflow.confirm, signers.decision(
                wid, "confirm", "second_approval", Decision(actor="alice"))), "alice already approved",
                "still needed: one of sam")
            await refused(h.execute_update(DegradationWorkflow.confirm, signers.decision(
                wid, "confirm", "second_approval", Decision(actor="rita"))), "needs super_admin")
            await refused(h.execute_update(DegradationWorkflow.confirm, signers.decision(
                wid, "confirm", "second_approval", Decision(actor="rita", break_glass="now"))),
                "break-glass needs a super_admin")
        await h.execute_update(DegradationWorkflow.confirm, signers.decision(
            wid, "confirm", "second_approval", Decision(actor="sam", reason="agreed")))
        await wait_for(h, ts_env, lambda p: p.awaiting is not None and p.awaiting.step == "confirm", step=OFF_BEAT)
        assert (await values(store, "global_api_enabled"))["global_api_enabled"] is False
        await save_signed_history(h, "degradation_level_3_two_person")
        await terminate_idle(h)
    rec = (await audit_of(store, wid))[0]
    assert [(s["request"]["actor"], s["request"]["action"]) for s in rec.model_extra["signatures"]] == [
        ("alice", "degrade.start"), ("sam", "confirm")]
    assert rec.model_extra.get("break_glass") is None


async def test_no_second_approval_in_time_applies_nothing(ts_env, store, signers, task_queue):
    si, inc = StandIns(), incident()
    wid = degrade_workflow_id(3, inc)
    async with signing_worker(ts_env, store, si, task_queue):
        h = await start_level_3(ts_env, signers, task_queue, inc)
        await wait_for(h, ts_env, lambda p: p.result is not None, step=timedelta(minutes=1))  # roster re-read every 30 s
        res = await h.result()
    assert res.status == "not_applied" and "no second super_admin" in res.detail
    assert (await values(store, "global_api_enabled"))["global_api_enabled"] is True
    assert await audit_of(store, wid) == []


async def test_break_glass_applies_level_3_alone_pages_everyone_and_is_marked(ts_env, store, signers, task_queue):
    si, inc = StandIns(), incident()
    wid = degrade_workflow_id(3, inc)
    async with signing_worker(ts_env, store, si, task_queue):
        h = await start_level_3(ts_env, signers, task_queue, inc, break_glass="exchange draining, sam unreachable")
        await wait_for(h, ts_env, awaiting("confirm"), step=OFF_BEAT)
        assert (await values(store, "global_api_enabled"))["global_api_enabled"] is False
        await terminate_idle(h)
    glass = [pg for pg in si.pages if "BREAK-GLASS" in pg["summary"]]
    assert sorted(pg["escalation_level"] for pg in glass) == [1, 2, 3]
    # each level's its own alert (never merged into an open one): each notified someone
    assert len({pg["dedup_key"] for pg in glass}) == 3
    assert all(a["notifications"] == 1 for (rk, dk), a in si.pd.alerts.items() if dk in {pg["dedup_key"] for pg in glass})
    rec = (await audit_of(store, wid))[0]
    assert rec.model_extra["break_glass"] == {"by": "alice", "reason": "exchange draining, sam unreachable"}


async def test_a_forged_or_unsigned_start_changes_nothing(ts_env, store, etcd, prefix, signers, task_queue):
    si = StandIns()
    async with signing_worker(ts_env, store, si, task_queue):
        for how in ("unsigned", "forged", "other workflow"):
            inc = incident()
            wid = rollback_workflow_id(inc)
            inp = rollback_input(inc)
            if how == "forged":  # oscar signed a single-module rollback; the input says cross-module
                inp = signers.start(rollback_input(inc, scope=Scope.SINGLE, switch="hedging"), "rollback.start", wid)
                inp = rollback_input(inc, proof=inp.proof)
            elif how == "other workflow":
                inp = signers.start(inp, "rollback.start", "rollback-elsewhere")
            async with Unchanged(etcd, prefix):
                h = await ts_env.client.start_workflow(RollbackWorkflow.run, inp, id=wid, task_queue=task_queue)
                res = await h.result()
            assert res.status == "refused", (how, res)
            assert {"unsigned": "refused (unsigned)", "forged": "refused (other values)",
                    "other workflow": "refused (other workflow)"}[how] in res.detail


async def test_a_rotated_key_stops_working_within_the_roster_refresh(ts_env, store, signers, task_queue):
    si, inc = StandIns(), incident()
    wid = rollback_workflow_id(inc)
    async with signing_worker(ts_env, store, si, task_queue):
        h = await start_signed(ts_env, signers, task_queue, inc, scope=Scope.SINGLE, switch="hedging")
        await wait_for(h, ts_env, awaiting("confirm"), step=OFF_BEAT)
        old = signers.keys["oscar"]
        signers.keys["oscar"] = Ed25519PrivateKey.generate()
        await store.rotate_key("oscar", signers.public("oscar"), actor="alice")
        # A roster read in flight during the rotation may still return the old key: the read after the
        # next one surely started after the rotation (reads are sequential, every ROSTER_REFRESH = 30 s).
        t0 = (await h.query(RollbackWorkflow.progress)).roster_at
        t1 = (await wait_for(h, ts_env, lambda p: p.roster_at > t0, step=timedelta(seconds=10))).roster_at
        p = await wait_for(h, ts_env, lambda p: p.roster_at > t1, step=timedelta(seconds=10))
        assert p.roster_at - t1 < timedelta(seconds=31)  # ROSTER_REFRESH (30 s) + the read
        await refused(h.execute_update(RollbackWorkflow.confirm, signers.decision(
            wid, "confirm", "confirm", Decision(actor="oscar"), key=old)), "refused (removed key)")
        await h.execute_update(RollbackWorkflow.confirm, signers.decision(wid, "confirm", "confirm",
                                                                          Decision(actor="oscar")))
        await wait_for(h, ts_env, awaiting("fix"), step=OFF_BEAT)
        await terminate_idle(h)


async def test_restore_re_enabling_betting_needs_two_fixes(ts_env, store, signers, task_queue):
    await set_switches(store, "alice", global_betting_enabled=True, routing_mode="NORMAL_MODE")
    si, inc = StandIns(), incident()
    wid = rollback_workflow_id(inc)
    async with signing_worker(ts_env, store, si, task_queue):
        h = await start_signed(ts_env, signers, task_queue, inc)
        await wait_for(h, ts_env, awaiting("confirm"), step=OFF_BEAT)
        await h.execute_update(RollbackWorkflow.confirm, signers.decision(wid, "confirm", "confirm",
                                                                          Decision(actor="oscar")))
        await wait_for(h, ts_env, awaiting("fix"), step=OFF_BEAT)
        fix = Decision(actor="alice", reference="pr-1", tests_passed=True)
        first = signers.decision(wid, "fix", "fix", fix)
        await h.execute_update(RollbackWorkflow.fix, first)
        p = await wait_for(h, ts_env, lambda p: p.awaiting is not None and p.awaiting.approved_by == ["alice"],
                           step=OFF_BEAT)
        assert p.awaiting.step == "fix" and "sam" in p.awaiting.still_needed
        assert (await values(store, "global_betting_enabled"))["global_betting_enabled"] is False
        await refused(h.execute_update(RollbackWorkflow.fix, first), "refused (reused nonce)")
        await refused(h.execute_update(RollbackWorkflow.fix, signers.decision(wid, "fix", "fix", fix)),
                      "alice already approved")
        await h.execute_update(RollbackWorkflow.fix, signers.decision(
            wid, "fix", "fix", Decision(actor="sam", reference="pr-1", tests_passed=True)))
        res = await h.result()
        await save_signed_history(h, "rollback_two_person_restore")
    assert res.status == "restored"
    assert await values(store, "global_betting_enabled") == {"global_betting_enabled": True}
    last = (await audit_of(store, wid))[-1]
    assert {s["request"]["actor"] for s in last.model_extra["signatures"]} >= {"alice", "sam"}


async def test_full_system_rollback_by_on_call_needs_two_super_admins(ts_env, store, signers, task_queue):
    si, inc = StandIns(), incident()
    wid = rollback_workflow_id(inc)
    async with signing_worker(ts_env, store, si, task_queue):
        h = await start_signed(ts_env, signers, task_queue, inc, scope=Scope.FULL)
        p = await wait_for(h, ts_env, awaiting("confirm"), step=timedelta(seconds=1))
        assert (p.awaiting.step, p.awaiting.approvals_needed, p.awaiting.still_needed) == (
            "super_admin_approval", 2, ["alice", "sam"])
        await h.execute_update(RollbackWorkflow.confirm, signers.decision(
            wid, "confirm", "super_admin_approval", Decision(actor="alice", reason="L3")))
        p = await wait_for(h, ts_env, lambda p: p.awaiting is not None and p.awaiting.approved_by == ["alice"],
                           step=OFF_BEAT)
        assert p.awaiting.still_needed == ["sam"]
        assert (await values(store, "global_api_enabled"))["global_api_enabled"] is True
        await h.execute_update(RollbackWorkflow.confirm, signers.decision(
            wid, "confirm", "super_admin_approval", Decision(actor="sam", reason="agreed")))
        await wait_for(h, ts_env, lambda p: p.awaiting is not None and p.awaiting.step == "confirm", step=OFF_BEAT)
        assert (await values(store, "global_api_enabled"))["global_api_enabled"] is False
        await terminate_idle(h)
    rec = (await audit_of(store, wid))[0]
    assert [s["request"]["actor"] for s in rec.model_extra["signatures"]] == ["oscar", "alice", "sam"]
    assert rec.approved_by == "sam"


# -- P0 incidents: ack, tick, escalate (level choice) and resolve are signed decisions too -----------------
async def _step_now(h) -> str:
    """The step a decision is bound to, read as the CLI reads it (rollbackctl/cli/signing.py)."""
    return (await h.query(RollbackWorkflow.progress)).decision_step()


async def test_incident_tick_and_resolve_are_refused_unless_signed(ts_env, store, etcd, prefix, signers, task_queue):
    from tests.support.incident_helpers import GuardStandIn, clear, incident_worker, open_incident, until
    from workflows.incident import IncidentWorkflow
    from contracts.incidents import ResolveRequest, TickRequest

    si, guard = StandIns(), GuardStandIn()
    async with incident_worker(ts_env, store, si, guard, task_queue, signing=True):
        h = await open_incident(ts_env, task_queue, "liquidation_failure")
        wid = h.id
        await until(h, ts_env, lambda s: s.ready)
        ack = Decision(actor="oscar", reason="on it")
        await refused(h.execute_update(IncidentWorkflow.acknowledge, ack), "refused (unsigned)")
        await h.execute_update(IncidentWorkflow.acknowledge, signers.decision(wid, "confirm", await _step_now(h), ack))

        tick = TickRequest(actor="oscar", item="manual_liquidation", note="3 accounts closed")
        await refused(h.execute_update(IncidentWorkflow.tick, tick), "refused (unsigned)", f"rollbackctl tick {wid}")
        forged = signers.decision(wid, "tick", await _step_now(h), tick).model_copy(update={"note": "nothing done"})
        await refused(h.execute_update(IncidentWorkflow.tick, forged), "refused (bad signature)")
        await refused(h.execute_update(IncidentWorkflow.tick,
                                       signers.decision(wid, "resolve", await _step_now(h), tick)),
                      "refused (other action)")
        good = signers.decision(wid, "tick", await _step_now(h), tick)
        await h.execute_update(IncidentWorkflow.tick, good)
        await refused(h.execute_update(IncidentWorkflow.tick, good), "refused (reused nonce)")
        st = await h.query(IncidentWorkflow.state)
        assert next(i for i in st.checklist if i.id == "manual_liquidation").by == "oscar"

        await clear(h)
        await until(h, ts_env, lambda s: s.condition == "clear")
        res = ResolveRequest(actor="alice", undo=True, reason="engine fixed")
        async with Unchanged(etcd, prefix):
            await refused(h.execute_update(IncidentWorkflow.resolve, res), "refused (unsigned)")
            await refused(h.execute_update(IncidentWorkflow.resolve,
                                           signers.decision("incident-other", "resolve", await _step_now(h), res)),
                          "refused (other workflow)")
            await refused(h.execute_update(IncidentWorkflow.resolve,
                                           signers.decision(wid, "resolve", await _step_now(h), res,
                                                            key=Ed25519PrivateKey.generate())),
                          "refused (unknown key)")
        await h.execute_update(IncidentWorkflow.resolve, signers.decision(wid, "resolve", await _step_now(h), res))
        # liquidation_enabled back on re-enables a super admin's switch: a second super admin must approve
        p = await wait_for(h, ts_env, lambda p: p.awaiting is not None and p.awaiting.step == "second_approval",
                           step=timedelta(seconds=1))
        assert "sam" in p.awaiting.still_needed and await values(store, "liquidation_enabled") == {
            "liquidation_enabled": False}
        again = Decision(actor="alice", reason="me again")
        await refused(h.execute_update(IncidentWorkflow.confirm,
                                       signers.decision(wid, "confirm", "second_approval", again)),
                      "alice")
        await h.execute_update(IncidentWorkflow.confirm,
                               signers.decision(wid, "confirm", "second_approval", Decision(actor="sam", reason="ok")))
        assert (await h.result()).status == "resolved"
    assert await values(store, "liquidation_enabled") == {"liquidation_enabled": True}
    undo = [a for a in await store.audit() if a.action == "p0.undo"]
    assert [(s["request"]["actor"], s["request"]["action"]) for s in undo[-1].model_extra["signatures"]][-2:] == [
        ("alice", "resolve"), ("sam", "confirm")]


# -- exits under the two-person rule: the waits for a second approval can be withdrawn, signed -------------
async def test_a_level_3_rollback_waiting_for_its_second_super_admin_is_withdrawn_signed(
        ts_env, store, etcd, prefix, signers, task_queue):
    si, inc = StandIns(), incident()
    wid = rollback_workflow_id(inc)
    async with signing_worker(ts_env, store, si, task_queue):
        h = await start_signed(ts_env, signers, task_queue, inc, by="alice", scope=Scope.FULL)
        p = await wait_for(h, ts_env, lambda p: p.awaiting is not None and p.awaiting.step == "second_approval",
                           step=timedelta(seconds=1))
        assert [e.kind for e in p.awaiting.exits] == ["withdraw"]
        async with Unchanged(etcd, prefix):
            await refused(h.execute_update(RollbackWorkflow.withdraw, Decision(actor="alice", reason="mistake")),
                          "refused (unsigned)")
            await refused(h.execute_update(RollbackWorkflow.withdraw, signers.decision(
                wid, "withdraw", "second_approval", Decision(actor="oscar", reason="not mine"))),
                "withdraw is for its starter alice")
            await refused(h.execute_update(RollbackWorkflow.withdraw, signers.decision(
                wid, "confirm", "second_approval", Decision(actor="alice", reason="mistake"))), "refused (other action)")
        await h.execute_update(RollbackWorkflow.withdraw, signers.decision(
            wid, "withdraw", "second_approval", Decision(actor="alice", reason="meant cross_module")))
        res = await h.result()
    assert res.status == "withdrawn" and "withdrawn by alice at step second_approval" in res.detail
    assert await audit_of(store, wid) == [] and (await values(store, "global_api_enabled"))["global_api_enabled"]


async def test_a_level_3_degradation_waiting_for_its_second_super_admin_is_withdrawn_signed(
        ts_env, store, signers, task_queue):
    si, inc = StandIns(), incident()
    wid = degrade_workflow_id(3, inc)
    async with signing_worker(ts_env, store, si, task_queue):
        h = await start_level_3(ts_env, signers, task_queue, inc)
        await wait_for(h, ts_env, lambda p: p.awaiting is not None and p.awaiting.step == "second_approval",
                       step=timedelta(seconds=1))
        await h.execute_update(DegradationWorkflow.withdraw, signers.decision(
            wid, "withdraw", "second_approval", Decision(actor="sam", reason="the database is back")))
        res = await h.result()
    assert res.status == "withdrawn" and "withdrawn by sam at step second_approval" in res.detail
    assert await audit_of(store, wid) == [] and (await values(store, "global_api_enabled"))["global_api_enabled"]
    assert [p for p in si.pages if "WITHDRAWN" in p["summary"]]
