"""The control matrix as data: the manual's table, every switch's validation, and the store
refusing invalid values (real etcd: nothing written)."""

from __future__ import annotations

import json
import math

import pytest

from activities.switch_store import InvalidChange
from manual import approvals, degradation, switches
from contracts.roles import Role
from manual.switches import SWITCHES, SwitchType, SwitchValueError
from tests.support.store_helpers import SWITCH_NAMES, dump, other_value, req

SA, RM = Role.SUPER_ADMIN, Role.RISK_MANAGER

# The manual's Control Matrix (19 rows) plus the three added switches:
# name: (type, default, owner, rollback value, latency)
MANUAL_TABLE = {
    "global_betting_enabled": ("bool", False, SA, False, "<1s"),
    "routing_mode": ("enum", "HL_MODE", RM, "HL_MODE", "<1s"),
    "normal_threshold": ("money", 10_000, RM, 0, "<5s"),
    "betting_threshold": ("money", 50_000, RM, 0, "<5s"),
    "auto_mode_switch": ("bool", False, RM, False, "<5s"),
    "hedge_enabled": ("bool", True, RM, False, "<1s"),
    "hedge_max_leverage": ("float", 3.0, RM, 1.5, "<5s"),
    "per_symbol_betting": ("symbols", ["BTC", "ETH"], RM, [], "<5s"),
    "liquidation_enabled": ("bool", True, SA, False, "<1s"),
    "liquidation_check_interval_ms": ("int", 500, RM, 2000, "<5s"),
    "withdrawal_enabled": ("bool", True, SA, False, "<1s"),
    "max_internal_exposure_usd": ("money", 500_000, RM, 0, "<5s"),
    "hedge_threshold_tier1": ("money", 100_000, RM, 500_000, "<5s"),
    "hedge_threshold_tier2": ("money", 500_000, RM, 1_000_000, "<5s"),
    "risk_reserve_min_usd": ("money", 200_000, RM, 300_000, "<5s"),
    "daily_net_loss_limit": ("money", 500_000, RM, 1_000_000, "<5s"),
    "max_order_size_internal": ("money", 10_000, RM, 1_000, "<5s"),
    "force_hl_volatility_pct": ("float", 5.0, RM, 10.0, "<5s"),
    "force_hl_latency_ms": ("int", 500, RM, 1000, "<5s"),
    # added beside the manual's table
    "global_api_enabled": ("bool", True, SA, False, "<1s"),
    "betting_traffic_pct": ("int", 100, RM, 0, "<5s"),
    "hedge_dry_run": ("bool", False, RM, True, "<5s"),
}

# Per-switch bounds of every numeric switch that has them (a new bounded switch must be added here).
BOUNDS = {
    "hedge_max_leverage": (1.0, 20.0),
    "liquidation_check_interval_ms": (50, 60_000),
    "force_hl_volatility_pct": (0.1, 100.0),
    "force_hl_latency_ms": (1, 60_000),
    "betting_traffic_pct": (0, 100),
}

# (valid raw input -> parsed value) and invalid raw inputs, per type. Numeric samples for float/int
# are derived from each switch's bounds below.
VALID = {
    SwitchType.BOOL: [(True, True), (False, False), ("true", True), ("FALSE", False), (" true ", True)],
    SwitchType.MONEY: [(0, 0), ("0", 0), (10_000, 10_000), ("10000", 10_000), ("$10,000", 10_000),
                       ("1,250,000.50", 1_250_000.5),
                       ("2.5", 2.5), (12.34, 12.34), ("1000000000000", 1_000_000_000_000), ("0.01", 0.01)],
    SwitchType.SYMBOLS: [("BTC,ETH", ["BTC", "ETH"]), ("", []), ([], []), (["SOL"], ["SOL"]),
                         ("BTC, ETH", ["BTC", "ETH"]), ("1000PEPE", ["1000PEPE"])],
}
INVALID = {
    SwitchType.BOOL: ["yes", "1", "", 1, 0, None, "on", [True]],
    SwitchType.ENUM: ["hl_mode", "NORMAL", "", None, 1, "HL", ["HL_MODE"]],
    # a decimal comma ("2,5") or a malformed grouping is refused, never read as 25 or 15 (found by a user)
    SwitchType.MONEY: [-1, "-0.01", "abc", "", None, True, "NaN", "inf", 1.001, "1000000000000.01", [], "1e400x",
                       "2,5", "10,00", "1,0000", ",100", "100,", "1,000,00"],
    SwitchType.FLOAT: ["abc", "", None, True, "nan", "inf", "-inf", [], "1,2,3x", "1,5", "1,500", "2,5x"],
    SwitchType.INT: ["abc", "", None, True, 2.5, "2.5", [], "1e3"],
    SwitchType.SYMBOLS: ["btc", "BTC,BTC", "BTC,,ETH", "BT-C", 5, None, ["btc"], "ABCDEFGHIJKLMNOP", [1]],
}


def _cases(kind: str):
    out = []
    for sw in SWITCHES:
        if kind == "valid":
            if sw.type is SwitchType.ENUM:
                samples = [(c, c) for c in sw.choices] + [(f" {sw.choices[0]} ", sw.choices[0])]
            elif sw.type in (SwitchType.FLOAT, SwitchType.INT):
                lo, hi = BOUNDS[sw.name]
                cast = float if sw.type is SwitchType.FLOAT else int
                mid = cast((lo + hi) / 2)
                samples = [(lo, cast(lo)), (hi, cast(hi)), (str(mid), mid), (f"{mid}{sw.unit}", mid)]
            else:
                samples = VALID[sw.type]
            out += [pytest.param(sw, raw, want, id=f"{sw.name}-{raw!r}") for raw, want in samples]
        else:
            samples = list(INVALID[sw.type])
            if sw.name in BOUNDS:
                lo, hi = BOUNDS[sw.name]
                step = 1 if sw.type is SwitchType.INT else 0.01
                samples += [lo - step, hi + step, str(hi * 10)]
            out += [pytest.param(sw, raw, id=f"{sw.name}-{raw!r}") for raw in samples]
    return out


def test_table_matches_the_manual():
    assert [s.name for s in SWITCHES] == list(MANUAL_TABLE)
    for sw in SWITCHES:
        typ, default, owner, rollback, latency = MANUAL_TABLE[sw.name]
        assert (sw.type.value, sw.default, sw.permission, sw.rollback_value, sw.latency.value) == (
            typ, default, owner, rollback, latency), sw.name
        assert sw.rollback_text and sw.scope
    assert switches.get("routing_mode").choices == ("HL_MODE", "NORMAL_MODE", "BETTING_MODE")


def test_every_numeric_switch_has_bounds_and_money_is_a_json_number():
    for sw in SWITCHES:
        if sw.type in (SwitchType.FLOAT, SwitchType.INT):
            assert (sw.minimum, sw.maximum) == BOUNDS[sw.name], sw.name
        if sw.type is SwitchType.MONEY:
            assert isinstance(sw.default, int) and json.loads(json.dumps(sw.default)) == sw.default


@pytest.mark.parametrize("sw,raw,want", _cases("valid"))
def test_valid_value(sw, raw, want):
    got = sw.parse(raw)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("sw,raw", _cases("invalid"))
def test_invalid_value(sw, raw):
    with pytest.raises(SwitchValueError) as e:
        sw.parse(raw)
    assert str(e.value).startswith(sw.name + ":"), "the message names the switch"


@pytest.mark.parametrize("name", SWITCH_NAMES)
def test_render_is_the_inverse_of_parse(name):
    sw = switches.get(name)
    for v in (sw.default, sw.rollback_value, other_value(sw)):
        assert sw.parse(sw.render(v)) == v, (sw.render(v), v)


def test_a_comma_says_why_it_is_refused():
    from manual import switches

    with pytest.raises(switches.SwitchValueError, match=r"decimal comma.*'1\.5'"):
        switches.get("hedge_max_leverage").parse("1,5")
    with pytest.raises(switches.SwitchValueError, match=r"'2\.5' for a decimal"):
        switches.get("normal_threshold").parse("2,5")


def test_bounds_messages_say_the_limit():
    with pytest.raises(SwitchValueError, match=r"above the maximum 20x"):
        switches.get("hedge_max_leverage").parse("20.5")
    with pytest.raises(SwitchValueError, match=r"below the minimum 50ms"):
        switches.get("liquidation_check_interval_ms").parse(49)
    with pytest.raises(SwitchValueError, match=r"at most 2 decimals"):
        switches.get("normal_threshold").parse("1.005")
    with pytest.raises(switches.UnknownSwitch, match="did you mean hedge_enabled"):
        switches.get("hedge_enable")
    assert not math.isnan(switches.get("force_hl_volatility_pct").parse("0.1"))


def test_degradation_levels_and_preapproved_moves_are_valid_switch_values():
    assert degradation.LEVELS[1].switch_set == {
        "global_betting_enabled": False, "hedge_enabled": False, "routing_mode": "NORMAL_MODE"}
    assert degradation.LEVELS[2].switch_set == {
        "global_betting_enabled": False, "routing_mode": "HL_MODE", "liquidation_enabled": False}
    assert degradation.LEVELS[3].switch_set == {"global_api_enabled": False}
    assert approvals.PREAPPROVED["global_api_enabled"] == []
    for name, values in approvals.PREAPPROVED.items():
        for v in values:
            assert switches.get(name).parse(v) == v


# -- through the store (real etcd) -----------------------------------------------------------------

@pytest.mark.parametrize("name", SWITCH_NAMES)
async def test_store_accepts_a_valid_value_and_stores_typed_json(store, etcd, prefix, name):
    sw = switches.get(name)
    actor = "alice" if sw.permission is SA else "rita"
    v = other_value(sw)
    res = await store.apply(req(actor, {name: sw.render(v) if sw.type is not SwitchType.SYMBOLS else v}))
    assert [(c.switch, c.old, c.new) for c in res.changes] == [(name, sw.default, v)]
    raw = json.loads((await etcd.get(f"{prefix}switches/{name}")).value)
    assert raw["value"] == v and type(raw["value"]) is type(v)


@pytest.mark.parametrize("name", SWITCH_NAMES)
async def test_store_refuses_an_invalid_value_and_writes_nothing(store, etcd, prefix, name):
    sw = switches.get(name)
    bad = INVALID[sw.type][0]
    before = await dump(etcd, prefix)
    with pytest.raises(InvalidChange) as e:
        await store.apply(req("alice", {name: bad}))
    assert name in str(e.value)
    assert await dump(etcd, prefix) == before
