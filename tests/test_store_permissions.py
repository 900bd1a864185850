"""The permission rule, both directions (manual/approvals.py), on a real etcd.

Operators of the `store` fixture: alice and sam super_admin, rita risk_manager, oscar on_call,
vic viewer. The monitor is a service identity (ActorKind.SERVICE, actor "monitor").
"""

from __future__ import annotations

import pytest

from contracts.changes import ActorKind, Authority
from activities.switch_store import PermissionDenied
from manual import approvals, degradation, switches
from contracts.roles import Role
from tests.support.store_helpers import SWITCH_NAMES, dump, non_preapproved_value, other_value, req

BY_ROLE = {Role.SUPER_ADMIN: ["alice", "sam"], Role.RISK_MANAGER: ["rita"], Role.ON_CALL: ["oscar"], Role.VIEWER: ["vic"]}
PRE = Authority.PREAPPROVED
MONITOR = dict(actor_kind=ActorKind.SERVICE, authority=PRE)


def _lower_roles(owner: Role) -> list[str]:
    return [n for r, names in BY_ROLE.items() if r.rank < owner.rank for n in names]


def _at_or_above(owner: Role) -> list[str]:
    return [n for r, names in BY_ROLE.items() if r.rank >= owner.rank for n in names]


async def _refused(store, etcd, prefix, request, match: str | None = None) -> str:
    before = await dump(etcd, prefix)
    with pytest.raises(PermissionDenied, match=match) as e:
        await store.apply(request)
    assert await dump(etcd, prefix) == before, "a refused change set wrote something"
    return str(e.value)


# -- owner role ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SWITCH_NAMES)
async def test_owner_role_and_above_may_set_any_valid_value(store, name):
    sw = switches.get(name)
    values = [other_value(sw), sw.default]
    for i, actor in enumerate(_at_or_above(sw.permission)):
        v = values[i % 2]
        res = await store.apply(req(actor, {name: v}))
        assert res.changes[0].new == v
        assert (await store.get(name)).updated_by == actor
    rec = (await store.audit(limit=1))[0]
    assert rec.authority == "owner" and rec.role in ("super_admin", "risk_manager")


@pytest.mark.parametrize("name", SWITCH_NAMES)
async def test_lower_roles_are_refused(store, etcd, prefix, name):
    sw = switches.get(name)
    for actor in _lower_roles(sw.permission):
        msg = await _refused(store, etcd, prefix, req(actor, {name: other_value(sw)}))
        assert name in msg and sw.permission.value in msg


async def test_unknown_and_reserved_actors_are_refused(store, etcd, prefix):
    await _refused(store, etcd, prefix, req("mallory", {"hedge_enabled": False}), "unknown operator 'mallory'")
    for reserved in ("monitor", "system", "cli"):
        await _refused(store, etcd, prefix, req(reserved, {"hedge_enabled": False}), "reserved")


# -- pre-approved emergency moves ------------------------------------------------------------------

PREAPPROVED_MOVES = [
    pytest.param(name, value, id=f"{name}={value!r}")
    for name, values in approvals.PREAPPROVED.items()
    for value in values
]


@pytest.mark.parametrize("name,value", PREAPPROVED_MOVES)
async def test_on_call_and_monitor_may_take_a_preapproved_move(store, name, value):
    sw = switches.get(name)
    if sw.default == value:  # move it away first so the pre-approved move is a real change
        await store.apply(req("alice", {name: other_value(sw)}))
    res = await store.apply(req("oscar", {name: value}, authority=PRE))
    assert res.changes[0].new == value
    await store.apply(req("alice", {name: other_value(sw) if value == sw.default else sw.default}))
    res = await store.apply(req("monitor", {name: value}, **MONITOR))
    assert res.changes[0].new == value
    rec = (await store.audit(limit=1))[0]
    assert (rec.actor, rec.role, rec.authority) == ("monitor", "service", "preapproved")


def test_preapproved_moves_cover_rollback_values_and_levels_1_2():
    for sw in switches.SWITCHES:
        if sw.name not in approvals.SUPER_ADMIN_ONLY:
            assert approvals.is_preapproved(sw.name, sw.rollback_value), sw.name
    for level in (1, 2):
        for name, value in degradation.LEVELS[level].switch_set.items():
            assert approvals.is_preapproved(name, value), (level, name)
    try:  # the P0 table's immediate actions, where that data exists
        from manual import alerts
    except ImportError:
        return
    for name, value in alerts.preapproved_switch_values():
        assert approvals.is_preapproved(name, value) or name in approvals.SUPER_ADMIN_ONLY, (name, value)


async def test_level_1_and_2_switch_sets_as_one_change_set(store):
    for level in (1, 2):
        lvl = degradation.LEVELS[level]
        await store.apply(req("oscar", lvl.switch_set, authority=PRE, reason=f"Level {level}"))
        assert {n: (await store.get(n)).value for n in lvl.switch_set} == lvl.switch_set
        await store.apply(req("alice", {n: switches.get(n).default for n in lvl.switch_set}, reason="restore"))
        res = await store.apply(req("monitor", lvl.switch_set, **MONITOR, reason=f"P0: Level {level}"))
        assert {c.switch: c.new for c in res.changes} == lvl.switch_set


CANDIDATES = [(n, non_preapproved_value(switches.get(n))) for n in SWITCH_NAMES
              if n not in approvals.SUPER_ADMIN_ONLY]


@pytest.mark.parametrize("name,value", [pytest.param(n, v, id=n) for n, v in CANDIDATES if v is not None])
async def test_a_value_that_is_not_preapproved_is_refused(store, etcd, prefix, name, value):
    msg = await _refused(store, etcd, prefix, req("oscar", {name: value}, authority=PRE), "not a pre-approved move")
    assert name in msg
    await _refused(store, etcd, prefix, req("monitor", {name: value}, **MONITOR), "not a pre-approved move")


async def test_enabling_betting_is_never_preapproved(store, etcd, prefix):
    # The one direction of a bool that is not an emergency move.
    await _refused(store, etcd, prefix, req("oscar", {"global_betting_enabled": True}, authority=PRE))
    await _refused(store, etcd, prefix, req("monitor", {"routing_mode": "BETTING_MODE"}, **MONITOR))


async def test_one_non_preapproved_value_refuses_the_whole_set(store, etcd, prefix):
    sw = switches.get("hedge_max_leverage")
    bad = non_preapproved_value(sw)
    await _refused(store, etcd, prefix, req(
        "oscar", {"hedge_enabled": False, "routing_mode": "HL_MODE", sw.name: bad}, authority=PRE),
        f"hedge_max_leverage={sw.render(bad)} is not a pre-approved move")


async def test_viewer_may_not_take_preapproved_moves(store, etcd, prefix):
    await _refused(store, etcd, prefix, req("vic", {"hedge_enabled": False}, authority=PRE), "on_call or above")


async def test_monitor_is_limited_to_preapproved_moves(store, etcd, prefix):
    # under its own authority only pre-approved moves, never as an operator, never another name
    await _refused(store, etcd, prefix, req("monitor", {"hedge_enabled": False}, actor_kind=ActorKind.SERVICE),
                   "only take the manual's pre-approved moves")
    await _refused(store, etcd, prefix, req("monitor", {"hedge_enabled": False}, authority=PRE), "reserved")
    await _refused(store, etcd, prefix, req("pager", {"hedge_enabled": False}, **MONITOR), "unknown service")


# -- Level 3: super admin, both directions ---------------------------------------------------------

async def test_global_api_enabled_needs_a_super_admin_both_directions(store, etcd, prefix):
    name = "global_api_enabled"
    for value in (False, True):
        for request in (
            req("oscar", {name: value}, authority=PRE),
            req("monitor", {name: value}, **MONITOR),
            req("rita", {name: value}),
            req("rita", {name: value}, authority=PRE),
            req("oscar", {name: value}, authority=Authority.PLAN, approved_by="rita"),
        ):
            msg = await _refused(store, etcd, prefix, request)
            assert name in msg or "super_admin" in msg
        res = await store.apply(req("alice", {name: value}))
        assert res.changes[0].new is value
    # a super admin's request under the pre-approved authority is also fine (the role suffices)
    res = await store.apply(req("sam", {name: False}, authority=PRE))
    assert res.changes[0].new is False


# -- a plan approved at its start ------------------------------------------------------------------

async def test_plan_approved_by_the_owner_of_every_touched_switch(store):
    plan = {"global_betting_enabled": True, "routing_mode": "BETTING_MODE", "betting_traffic_pct": 5}
    res = await store.apply(req("oscar", plan, authority=Authority.PLAN, approved_by="alice", source="wf-canary-1"))
    assert {c.switch: c.new for c in res.changes} == plan
    rec = (await store.audit(limit=1))[0]
    assert (rec.actor, rec.authority, rec.approved_by, rec.source) == ("oscar", "plan", "alice", "wf-canary-1")
    # a risk manager may approve a plan that touches only risk-manager switches
    res = await store.apply(req("oscar", {"betting_traffic_pct": 25}, authority=Authority.PLAN, approved_by="rita"))
    assert res.changes[0].new == 25


@pytest.mark.parametrize("approved_by,match", [
    ("rita", "touches switches owned by super_admin"),
    ("oscar", "touches switches owned by super_admin"),
    (None, "needs approved_by"),
    ("mallory", "not an operator"),
])
async def test_plan_without_a_sufficient_approver_is_refused(store, etcd, prefix, approved_by, match):
    plan = {"global_betting_enabled": True, "betting_traffic_pct": 5}
    await _refused(store, etcd, prefix, req("oscar", plan, authority=Authority.PLAN, approved_by=approved_by), match)


async def test_plan_approved_by_a_viewer_or_on_call_cannot_touch_risk_manager_switches(store, etcd, prefix):
    for approver in ("vic", "oscar"):
        await _refused(store, etcd, prefix, req("rita", {"betting_traffic_pct": 50}, authority=Authority.PLAN,
                                                approved_by=approver), "owned by risk_manager")


@pytest.mark.parametrize("name", ["hedge_enabled", "liquidation_enabled", "withdrawal_enabled", "hedge_dry_run",
                                  "hedge_max_leverage", "per_symbol_betting"])
async def test_a_restore_is_not_preapproved(store, etcd, prefix, name):
    """The emergency move is pre-approved; moving back to normal needs the owner or an approved plan."""
    sw = switches.get(name)
    await store.apply(req("oscar", {name: sw.rollback_value}, authority=PRE))
    await _refused(store, etcd, prefix, req("oscar", {name: sw.default}, authority=PRE), "not a pre-approved move")
    await _refused(store, etcd, prefix, req("monitor", {name: sw.default}, **MONITOR), "not a pre-approved move")
    owner = BY_ROLE[sw.permission][0]
    res = await store.apply(req("oscar", {name: sw.default}, authority=Authority.PLAN, approved_by=owner))
    assert res.changes[0].new == sw.default
