"""Signed direct changes, verified and applied by the worker (activities/requests.py,
workflows/change_request.py): forged, replayed, stale and wrong-key requests refused with etcd
unchanged; a rotated key stops working at once; the two-person rule and break-glass. The checks run
against the real store; the workflow paths (with Updates) on the dev server."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from temporalio.client import WorkflowUpdateFailedError

from activities.requests import RequestVerifier
from activities.switch_store import Conflict, PermissionDenied
from core import identity
from manual import approvals
from tests.support.identity_helpers import Signers, Unchanged, signing_worker
from tests.support.standins import StandIns
from tests.support.store_helpers import req
from tests.support.wf_helpers import poll_progress, values
from workflows.change_request import ChangeRequestWorkflow
from contracts.progress import Decision
from contracts.requests import ChangeRequestInput, RequestApply, change_request_workflow_id


@pytest.fixture
async def signers(store) -> Signers:
    s = Signers()
    await s.register(store)
    return s


async def switch_set(store, signers, actor, name, value, reason="test", key=None, **extra):
    st = await store.get(name)
    vals = {"value": value, "reason": reason, **extra}
    return signers.request(actor, key=key, action="switch.set", target=f"switch:{name}", values=vals,
                           revision=st.revision)


async def test_each_bad_request_is_refused_saying_which_and_changes_nothing(store, etcd, prefix, signers):
    v = RequestVerifier(store)
    good = await switch_set(store, signers, "rita", "hedge_max_leverage", 1.5)
    forged = good.model_copy(update={"request": good.request.model_copy(update={"values": {
        "value": 20.0, "reason": "test"}})})
    wrong_key = await switch_set(store, signers, "rita", "hedge_max_leverage", 1.5, key=Ed25519PrivateKey.generate())
    as_other = good.model_copy(update={"request": good.request.model_copy(update={"actor": "alice"})})
    cases = [(forged, "bad signature"), (wrong_key, "unknown key"), (as_other, "unknown key")]
    async with Unchanged(etcd, prefix):
        for proof, kind in cases:
            with pytest.raises(identity.Refused) as e:
                await v.apply(RequestApply(proof=proof), "change-x", "change-x/run")
            assert e.value.kind.value == kind, (kind, str(e.value))
    res = await v.apply(RequestApply(proof=good), "change-a", "change-a/run")
    assert res.status == "applied" and res.result.changes[0].new == 1.5
    rec = (await store.audit())[-1]
    assert rec.model_extra["signatures"][0]["signature"] == good.signature
    assert json.loads((await etcd.get(store.nonce_key(good.request.nonce))).value)["owner"] == "change-a/run"

    async with Unchanged(etcd, prefix):
        with pytest.raises(identity.Refused, match=r"refused \(reused nonce\)"):  # replayed by another run
            await v.apply(RequestApply(proof=good), "change-b", "change-b/run")
    stale = await switch_set(store, signers, "rita", "hedge_max_leverage", 2.0)
    await store.apply(req("rita", {"hedge_max_leverage": 2.5}))  # someone else changes it meanwhile
    with pytest.raises(identity.Refused, match=r"refused \(stale revision\): hedge_max_leverage is at etcd revision"):
        async with Unchanged(etcd, prefix):
            await v.apply(RequestApply(proof=stale), "change-c", "change-c/run")
    # a retry of the same run is idempotent: nothing written twice
    again = await v.apply(RequestApply(proof=good), "change-a", "change-a/run")
    assert again.result.replayed


async def test_a_rotated_key_stops_working_at_once(store, etcd, prefix, signers):
    v = RequestVerifier(store)
    old = signers.keys["rita"]
    new = Ed25519PrivateKey.generate()
    rot = signers.request("alice", action="operator.rotate_key", target="operator:rita",
                          values={"public_key": identity.public_key_text(new)},
                          revision=(await etcd.get(store.operator_key("rita"))).mod_revision)
    out = await v.apply(RequestApply(proof=rot), "change-r", "change-r/run")
    assert out.operator["key_id"] == identity.key_id(identity.public_key_text(new))
    rec = (await store.audit())[-1]
    assert rec.action == "operator.rotate_key" and rec.model_extra["operator"]["old_key_id"] == identity.key_id(
        identity.public_key_text(old))
    async with Unchanged(etcd, prefix):
        with pytest.raises(identity.Refused, match=r"refused \(removed key\)"):
            await v.apply(RequestApply(proof=await switch_set(store, signers, "rita", "hedge_enabled", False, key=old)),
                          "change-o", "change-o/run")
    ok = await v.apply(RequestApply(proof=await switch_set(store, signers, "rita", "hedge_enabled", False, key=new)),
                       "change-n", "change-n/run")
    assert ok.status == "applied"


async def test_permission_and_operator_requests(store, etcd, prefix, signers):
    v = RequestVerifier(store)
    async with Unchanged(etcd, prefix):
        with pytest.raises(PermissionDenied, match="oscar is on_call"):
            await v.apply(RequestApply(proof=await switch_set(store, signers, "oscar", "hedge_max_leverage", 2.0)),
                          "c1", "c1/r")
        with pytest.raises(PermissionDenied, match="only a super_admin"):
            await v.apply(RequestApply(proof=signers.request("rita", action="operator.add", target="operator:zed",
                                                             values={"role": "viewer"}, revision=0)), "c2", "c2/r")
        with pytest.raises(PermissionDenied, match="break-glass needs a super_admin"):
            await v.apply(RequestApply(proof=await switch_set(store, signers, "rita", "hedge_enabled", False,
                                                              break_glass="x")), "c3", "c3/r")
    pub = identity.public_key_text(Ed25519PrivateKey.generate())
    out = await v.apply(RequestApply(proof=signers.request("alice", action="operator.add", target="operator:olga",
                                                           values={"role": "on_call", "public_key": pub}, revision=0)),
                        "c4", "c4/r")
    assert out.operator == {"name": "olga", "role": "on_call", "key_id": identity.key_id(pub)}
    assert (await store.operator("olga")).public_key == pub
    with pytest.raises(Conflict, match="already exists"):
        await v.apply(RequestApply(proof=signers.request("alice", action="operator.add", target="operator:olga",
                                                         values={"role": "viewer"}, revision=0)), "c5", "c5/r")


async def start(env, proof, tq):
    wid = change_request_workflow_id(proof.request.nonce)
    return await env.client.start_workflow(ChangeRequestWorkflow.run, ChangeRequestInput(proof=proof, approval_timeout=approvals.APPROVAL_TIMEOUT), id=wid,
                                           task_queue=tq)


async def test_two_person_change_waits_for_a_second_super_admin(dev_env, store, etcd, prefix, signers, task_queue):
    si = StandIns()
    async with signing_worker(dev_env, store, si, task_queue):
        proof = await switch_set(store, signers, "alice", "global_betting_enabled", True, reason="Phase 3 launch")
        h = await start(dev_env, proof, task_queue)
        p = await poll_progress(h, lambda p: p.awaiting is not None)
        aw = p.awaiting
        assert (aw.step, aw.approved_by, aw.still_needed) == ("second_approval", ["alice"], ["sam"])
        assert (await values(store, "global_betting_enabled"))["global_betting_enabled"] is False
        wid = h.id
        async with Unchanged(etcd, prefix):
            for d, why in [
                (signers.decision(wid, "confirm", "second_approval", Decision(actor="alice")), "alice already approved"),
                (Decision(actor="sam"), "refused (unsigned)"),
                (signers.decision(wid, "confirm", "second_approval", Decision(actor="rita")), "needs super_admin"),
                (signers.decision(wid, "confirm", "second_approval", Decision(actor="sam", break_glass="x")),
                 "break-glass is given by the requester"),
            ]:
                with pytest.raises(WorkflowUpdateFailedError) as e:
                    await h.execute_update(ChangeRequestWorkflow.confirm, d)
                assert why in str(e.value.cause)
        await h.execute_update(ChangeRequestWorkflow.confirm,
                               signers.decision(wid, "confirm", "second_approval", Decision(actor="sam", reason="ok")))
        res = await h.result()
        assert res.status == "applied" and res.approved_by == ["alice", "sam"]
        assert (await values(store, "global_betting_enabled"))["global_betting_enabled"] is True
        rec = (await store.audit())[-1]
        assert [s["request"]["actor"] for s in rec.model_extra["signatures"]] == ["alice", "sam"]
        assert rec.approved_by == "sam"

        # the same signed request again, as a new workflow: a replay
        replay = await dev_env.client.start_workflow(ChangeRequestWorkflow.run, ChangeRequestInput(proof=proof, approval_timeout=approvals.APPROVAL_TIMEOUT),
                                                     id=f"{wid}-again", task_queue=task_queue)
        async with Unchanged(etcd, prefix):
            res = await replay.result()
        assert res.status == "refused" and "refused (reused nonce)" in res.detail


async def test_break_glass_direct_change_is_applied_paged_and_marked(dev_env, store, signers, task_queue):
    si = StandIns()
    async with signing_worker(dev_env, store, si, task_queue):
        proof = await switch_set(store, signers, "alice", "global_betting_enabled", True, reason="launch",
                                 break_glass="sam is on a plane; launch window closes")
        res = await (await start(dev_env, proof, task_queue)).result()
    assert res.status == "applied", res
    assert (await values(store, "global_betting_enabled"))["global_betting_enabled"] is True
    rec = (await store.audit())[-1]
    assert rec.model_extra["break_glass"] == {"by": "alice", "reason": "sam is on a plane; launch window closes"}
    assert sorted(pg["escalation_level"] for pg in si.pages if "BREAK-GLASS" in pg["summary"]) == [1, 2, 3]


async def test_a_pending_two_person_change_is_withdrawn_by_its_requester(dev_env, store, etcd, prefix, signers,
                                                                        task_queue):
    """A mistaken request waiting for a second approver: its requester withdraws it (signed, with a reason);
    another operator who could not approve is refused; nothing is applied."""
    si = StandIns()
    async with signing_worker(dev_env, store, si, task_queue):
        proof = await switch_set(store, signers, "alice", "global_betting_enabled", True, reason="wrong switch")
        h = await start(dev_env, proof, task_queue)
        p = await poll_progress(h, lambda p: p.awaiting is not None)
        assert [e.kind for e in p.awaiting.exits] == ["withdraw"]
        wid = h.id
        async with Unchanged(etcd, prefix):
            with pytest.raises(WorkflowUpdateFailedError) as e:
                await h.execute_update(ChangeRequestWorkflow.withdraw, signers.decision(
                    wid, "withdraw", "second_approval", Decision(actor="rita", reason="not mine")))
            assert "withdraw is for its starter alice" in str(e.value.cause)
            await h.execute_update(ChangeRequestWorkflow.withdraw, signers.decision(
                wid, "withdraw", "second_approval", Decision(actor="alice", reason="meant hedge_enabled")))
            res = await h.result()
    assert res.status == "withdrawn" and "withdrawn by alice" in res.detail and "nothing applied" in res.detail
    assert (await values(store, "global_betting_enabled"))["global_betting_enabled"] is False
