"""The audited switch store on a real etcd: key layout, audit completeness and hash chain,
atomicity, idempotent re-apply, init, operators."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from contracts.changes import Authority
from activities.switch_store import (
    Conflict,
    InvalidChange,
    NotInitialised,
    PermissionDenied,
    SwitchStore,
)
from manual import switches
from contracts.roles import Role
from tests.support.store_helpers import audit_raw, dump, req, verify_chain

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


# -- key layout ----------------------------------------------------------------------------------

async def test_key_layout(store, etcd, prefix):
    res = await store.apply(req("rita", {"hedge_max_leverage": "2.5", "per_symbol_betting": "BTC"},
                                reason="tighten", source="wf-123"))
    kvs, _ = await etcd.get_prefix(prefix)
    keys = [kv.key[len(prefix):] for kv in kvs]
    assert {k.split("/")[0] for k in keys} == {"switches", "audit", "operators", "changes", "meta"}
    assert sorted(k.split("/", 1)[1] for k in keys if k.startswith("switches/")) == sorted(
        s.name for s in switches.SWITCHES)
    assert sorted(k.split("/", 1)[1] for k in keys if k.startswith("operators/")) == [
        "alice", "oscar", "rita", "sam", "vic"]

    sw = json.loads((await etcd.get(f"{prefix}switches/hedge_max_leverage")).value)
    assert set(sw) == {"value", "updated_at", "updated_by", "change_id"}
    assert (sw["value"], sw["updated_by"], sw["change_id"]) == (2.5, "rita", res.change_id)
    assert ISO_UTC.match(sw["updated_at"])
    money = json.loads((await etcd.get(f"{prefix}switches/normal_threshold")).value)
    assert money["value"] == 10_000 and isinstance(money["value"], int)  # a JSON number
    assert json.loads((await etcd.get(f"{prefix}switches/per_symbol_betting")).value)["value"] == ["BTC"]

    audit_kv = await etcd.get(f"{prefix}audit/{res.audit_id}")
    rec = json.loads(audit_kv.value)
    assert {"id", "at", "actor", "role", "reason", "source", "changes"} <= set(rec)
    assert (rec["id"], rec["actor"], rec["role"], rec["reason"], rec["source"]) == (
        res.audit_id, "rita", "risk_manager", "tighten", "wf-123")
    assert rec["changes"] == [{"switch": "hedge_max_leverage", "old": 3.0, "new": 2.5},
                              {"switch": "per_symbol_betting", "old": ["BTC", "ETH"], "new": ["BTC"]}]
    assert rec["at"] == sw["updated_at"] and ISO_UTC.match(rec["at"])
    # the record's revision is its key's own mod_revision, and the values were written with it
    assert audit_kv.mod_revision == res.revision
    assert (await etcd.get(f"{prefix}switches/hedge_max_leverage")).mod_revision == res.revision
    assert (await store.audit(limit=1))[0].revision == res.revision
    op = json.loads((await etcd.get(f"{prefix}operators/rita")).value)
    assert (op["name"], op["role"], op["added_by"]) == ("rita", "risk_manager", "alice")


# -- audit ---------------------------------------------------------------------------------------

async def test_one_audit_record_per_change_set_with_old_and_new(store, etcd, prefix):
    base = len(await store.audit())
    seq = [
        ("rita", {"hedge_max_leverage": 2.0}),
        ("rita", {"hedge_max_leverage": 1.5, "hedge_enabled": False, "routing_mode": "NORMAL_MODE"}),
        ("alice", {"global_betting_enabled": True}),
        ("rita", {"hedge_max_leverage": 3.0, "normal_threshold": "12,500.50"}),
    ]
    results = [await store.apply(req(a, ch, reason=f"step {i}")) for i, (a, ch) in enumerate(seq)]
    recs = await store.audit()
    assert len(recs) == base + len(seq)
    new = recs[base:]
    expected_old = {
        "hedge_max_leverage": [3.0, 2.0, 1.5], "hedge_enabled": [True], "routing_mode": ["HL_MODE"],
        "global_betting_enabled": [False], "normal_threshold": [10_000],
    }
    seen: dict[str, list] = {}
    for (actor, ch), res, rec in zip(seq, results, new):
        assert rec.id == res.audit_id and rec.actor == actor and rec.change_id == res.change_id
        assert [c.switch for c in rec.changes] == list(ch)
        for c in rec.changes:
            assert c.new == switches.get(c.switch).parse(ch[c.switch])
            seen.setdefault(c.switch, []).append(c.old)
    assert seen == expected_old
    assert (await store.get("normal_threshold")).value == 12_500.5
    verify_chain(await audit_raw(etcd, prefix))
    head = json.loads((await etcd.get(f"{prefix}meta/audit_head")).value)
    assert head == {"seq": int(new[-1].id), "hash": new[-1].hash}


async def test_audit_limit_returns_the_newest(store):
    for v in (2.0, 2.5, 3.5):
        await store.apply(req("rita", {"hedge_max_leverage": v}))
    last2 = await store.audit(limit=2)
    assert [r.changes[0].new for r in last2] == [2.5, 3.5]
    assert await store.audit(limit=0) == []


async def test_hash_chain_reveals_an_altered_record(store, etcd, prefix):
    await store.apply(req("rita", {"hedge_enabled": False}))
    raw = await audit_raw(etcd, prefix)
    verify_chain(raw)
    key, rec, _ = raw[-1]
    rec["actor"] = "someone-else"
    await etcd.put(key, json.dumps(rec).encode())
    with pytest.raises(AssertionError, match="altered"):
        verify_chain(await audit_raw(etcd, prefix))


async def test_init_and_operator_records_are_in_the_chain(store, etcd, prefix):
    recs = await store.audit()
    assert [r.action for r in recs] == ["operator.add", "init"] + ["operator.add"] * 4
    init = recs[1]
    assert sorted(c.switch for c in init.changes) == sorted(s.name for s in switches.SWITCHES)
    assert all(c.old is None and c.new == switches.get(c.switch).default for c in init.changes)
    verify_chain(await audit_raw(etcd, prefix))


# -- atomicity -----------------------------------------------------------------------------------

@pytest.mark.parametrize("changes,actor,exc,match", [
    ({"hedge_max_leverage": 2.0, "betting_traffic_pct": 101}, "rita", InvalidChange, "betting_traffic_pct: 101"),
    ({"hedge_max_leverage": 2.0, "routing_mode": "BOGUS"}, "rita", InvalidChange, "routing_mode"),
    ({"hedge_max_leverage": 2.0, "hedge_enabld": False}, "rita", InvalidChange, "unknown switch 'hedge_enabld'"),
    ({"hedge_max_leverage": 2.0, "withdrawal_enabled": False}, "rita", PermissionDenied, "withdrawal_enabled"),
    ({"hedge_max_leverage": 2.0, "global_api_enabled": False}, "oscar", PermissionDenied, "hedge_max_leverage"),
], ids=["bad-value", "bad-enum", "unknown-switch", "missing-permission", "on-call-owner-authority"])
async def test_a_bad_change_set_writes_nothing(store, etcd, prefix, changes, actor, exc, match):
    before = await dump(etcd, prefix)
    with pytest.raises(exc, match=match):
        await store.apply(req(actor, changes))
    assert await dump(etcd, prefix) == before


async def test_expected_value_mismatch_is_a_conflict_and_writes_nothing(store, etcd, prefix):
    before = await dump(etcd, prefix)
    with pytest.raises(Conflict, match=r"hedge_max_leverage is 3x .*not 2x as expected"):
        await store.apply(req("rita", {"hedge_max_leverage": 1.5, "hedge_enabled": False},
                              expected={"hedge_max_leverage": 2.0}))
    with pytest.raises(InvalidChange, match="does not touch"):
        await store.apply(req("rita", {"hedge_max_leverage": 1.5}, expected={"hedge_enabled": True}))
    assert await dump(etcd, prefix) == before
    res = await store.apply(req("rita", {"hedge_max_leverage": 1.5}, expected={"hedge_max_leverage": "3"}))
    assert res.changes[0].old == 3.0


async def test_uninitialised_switch_writes_nothing(store, etcd, prefix):
    await etcd.delete_prefix(f"{prefix}switches/hedge_enabled")
    before = await dump(etcd, prefix)
    with pytest.raises(NotInitialised, match="hedge_enabled"):
        await store.apply(req("rita", {"hedge_enabled": False, "hedge_max_leverage": 2.0}))
    assert await dump(etcd, prefix) == before


async def test_a_switch_named_twice_is_refused(store, etcd, prefix):
    from contracts.changes import SwitchChange

    r = req("rita", {"hedge_enabled": False})
    r.changes.append(SwitchChange(switch="hedge_enabled", value=True))
    before = await dump(etcd, prefix)
    with pytest.raises(InvalidChange, match="twice"):
        await store.apply(r)
    assert await dump(etcd, prefix) == before


# -- idempotent re-apply ---------------------------------------------------------------------------

async def test_same_change_id_is_applied_once(store, etcd, prefix):
    first = await store.apply(req("rita", {"hedge_enabled": False}, change_id="wf-1:step-3"))
    assert not first.replayed
    before = await dump(etcd, prefix)
    again = await store.apply(req("rita", {"hedge_enabled": False}, change_id="wf-1:step-3"))
    assert again.replayed and again.audit_id == first.audit_id
    assert [c.model_dump() for c in again.changes] == [c.model_dump() for c in first.changes]
    # even a retry carrying other values (or actor) writes nothing: the change id decides
    other = await store.apply(req("alice", {"hedge_enabled": True}, change_id="wf-1:step-3"))
    assert other.replayed and other.audit_id == first.audit_id
    assert await dump(etcd, prefix) == before


async def test_concurrent_retries_of_one_change_id_write_once(store, etcd, prefix):
    base = len(await store.audit())
    results = await asyncio.gather(*[
        store.apply(req("rita", {"betting_traffic_pct": 40}, change_id="wf-2:step-1")) for _ in range(8)])
    assert sum(not r.replayed for r in results) == 1
    assert len({r.audit_id for r in results}) == 1
    assert len(await store.audit()) == base + 1


async def test_invalid_request_is_refused_even_with_a_known_change_id(store):
    await store.apply(req("rita", {"hedge_enabled": False}, change_id="c-9"))
    with pytest.raises(InvalidChange):
        await store.apply(req("rita", {"hedge_enabled": "maybe"}, change_id="c-9"))


# -- init ----------------------------------------------------------------------------------------

async def test_init_is_idempotent_and_never_overwrites(store, etcd, prefix):
    await store.apply(req("rita", {"hedge_max_leverage": 2.0, "per_symbol_betting": ""}))
    before = await dump(etcd, prefix)
    r = await store.init(super_admin="alice", actor="alice")
    assert r == {"initialised": [], "existing": len(switches.SWITCHES)}
    r = await store.init()
    assert r["initialised"] == []
    assert await dump(etcd, prefix) == before, "a second init wrote something (an audit record?)"

    # a switch missing (e.g. a new one in a release) is written alone; changed values stay
    await etcd.delete_prefix(f"{prefix}switches/hedge_dry_run")
    n = len(await store.audit())
    r = await store.init()
    assert r == {"initialised": ["hedge_dry_run"], "existing": len(switches.SWITCHES) - 1}
    assert (await store.get("hedge_dry_run")).value is False
    assert (await store.get("hedge_max_leverage")).value == 2.0
    assert (await store.get("per_symbol_betting")).value == []
    recs = await store.audit()
    assert len(recs) == n + 1 and recs[-1].action == "init"
    assert [(c.switch, c.old, c.new) for c in recs[-1].changes] == [("hedge_dry_run", None, False)]


async def test_init_bootstrap_rules(etcd, prefix):
    s = SwitchStore(etcd, prefix)
    with pytest.raises(InvalidChange, match="no operators yet"):
        await s.init()
    assert await dump(etcd, prefix) == []
    r = await s.init(super_admin="bob", actor="bob")
    assert len(r["initialised"]) == len(switches.SWITCHES)
    assert [(o.name, o.role) for o in await s.operators()] == [("bob", Role.SUPER_ADMIN)]
    with pytest.raises(PermissionDenied, match="operators already exist"):
        await s.init(super_admin="eve")
    await s.add_operator("rita", Role.RISK_MANAGER, actor="bob")
    with pytest.raises(PermissionDenied, match="not super_admin"):
        await s.init(super_admin="rita")


async def test_concurrent_inits_write_each_default_once(etcd, prefix):
    stores = [SwitchStore(etcd, prefix) for _ in range(4)]
    results = await asyncio.gather(*[s.init(super_admin="bob", actor="bob") for s in stores])
    assert sorted(len(r["initialised"]) for r in results) == [0, 0, 0, len(switches.SWITCHES)]
    recs = await stores[0].audit()
    assert [r.action for r in recs] == ["operator.add", "init"]


# -- operators -----------------------------------------------------------------------------------

async def test_operators(store, etcd, prefix):
    op = await store.add_operator("olga", Role.ON_CALL, actor="alice")
    assert (op.name, op.role, op.added_by) == ("olga", Role.ON_CALL, "alice")
    assert "olga" in [o.name for o in await store.operators()]
    rec = (await store.audit(limit=1))[0]
    assert (rec.action, rec.actor, rec.reason) == ("operator.add", "alice", "add operator olga as on_call")

    before = await dump(etcd, prefix)
    for actor in ("rita", "oscar", "vic", "olga"):
        with pytest.raises(PermissionDenied, match="only a super_admin"):
            await store.add_operator("zed", Role.VIEWER, actor=actor)
    with pytest.raises(PermissionDenied, match="unknown operator"):
        await store.add_operator("zed", Role.VIEWER, actor="mallory")
    for reserved in ("monitor", "system", "cli"):
        with pytest.raises(InvalidChange, match="reserved"):
            await store.add_operator(reserved, Role.VIEWER, actor="alice")
    for bad in ("Bob", "1x", "", "a" * 33, "bob smith"):
        with pytest.raises(InvalidChange, match="operator name"):
            await store.add_operator(bad, Role.VIEWER, actor="alice")
    with pytest.raises(Conflict, match="already exists"):
        await store.add_operator("rita", Role.SUPER_ADMIN, actor="alice")
    assert await dump(etcd, prefix) == before
    assert (await store.operator("rita")).role is Role.RISK_MANAGER


async def test_new_operator_can_act_at_once(store):
    await store.add_operator("rick", Role.RISK_MANAGER, actor="sam")
    res = await store.apply(req("rick", {"betting_traffic_pct": 10}))
    assert res.changes[0].new == 10
    res = await store.apply(req("rick", {"hedge_enabled": False}, authority=Authority.PREAPPROVED))
    assert res.changes[0].new is False


async def test_a_canary_id_counter_only_moves_up_and_only_for_its_own_workflow(store):
    """`canary/<phase>/seq` is bookkeeping the worker keeps (operators' etcd users are read-only): a
    compare-and-swap that never goes down, claimed only by the canary whose id it names."""
    import dataclasses

    from temporalio.exceptions import ApplicationError
    from temporalio.testing import ActivityEnvironment

    from activities.switch_activities import CanaryClaim, SwitchActivities

    assert await store.advance_counter("canary/phase3/seq", 3) == 3
    assert await store.advance_counter("canary/phase3/seq", 2) == 3  # never down
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_id="canary-phase3-7")
    sa = SwitchActivities(store)
    assert await env.run(sa.claim_canary_seq, CanaryClaim(phase="phase3", n=7)) == 7
    with pytest.raises(ApplicationError, match="not its own id"):
        await env.run(sa.claim_canary_seq, CanaryClaim(phase="phase3", n=9))
    assert int((await store.etcd.get(store.counter_key("canary/phase3/seq"))).value) == 7
