"""manual/alerts.py: the manual's seven P0 rows as data, checked against the manual and the contract."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from contracts.trading_core import ACTIONS, HealthSnapshot
from manual import alerts, approvals, switches
from contracts.roles import Role

MANUAL_ROWS = [  # Alert, Trigger, Immediate Action, Further: the manual's table, word for word
    ("HL disconnection", "WS/REST down >1min", "Slack/PagerDuty, pause new orders", "Reconnect; if >5min → manual"),
    ("HL account margin <150%", "margin_ratio < 150%", "Pause all HL new opens", "Top up to >200%, reduce leverage"),
    ("Hedge account margin <200%", "margin_ratio < 200%", "Same, reduce to 2x leverage", "Emergency top-up/closeout"),
    ("Liquidation engine failure", "Detection fails 5+ times or >10% execution failure",
     "liquidation_enabled=false, manual liquidate", "Debug, fix, restart"),
    ("Hot wallet <$100K", "Available <$100K", "Pause large withdrawals (>$10K)", "Transfer from cold wallet"),
    ("Single-order deviation >5%", "Price discrepancy >5%", "Pause symbol HL routing → internal", "Debug cause"),
    ("User asset mismatch >0.1%", "Discrepancy >0.1%", "Pause trading, start manual reconciliation",
     "Manual adjustment"),
]


def test_the_seven_rows_keep_the_manuals_words():
    assert [(r.alert, r.manual_trigger, r.manual_action, r.manual_further) for r in alerts.RULES] == MANUAL_ROWS


def test_the_sla():
    assert alerts.SLA.ack == timedelta(minutes=5) and alerts.SLA.action == timedelta(minutes=10)


EXPECTED = {
    # rule: (trigger conditions, hold polls or reported seconds, core actions (body), switch moves)
    "hl_disconnection": ({("hl_disconnected_for_s", ">", 60), ("core_unreachable_for_s", ">", 60)}, 60.0,
                         [("pause_new_orders", {})], []),
    "hl_margin": ({("hl_margin_ratio", "<", 1.5)}, 3, [("pause_hl_opens", {})], []),
    "hedge_margin": ({("hedge_margin_ratio", "<", 2.0)}, 3, [("pause_hl_opens", {})],
                     [("hedge_max_leverage", 2.0, "lower_to")]),
    "liquidation_failure": ({("liquidation_detection_failures", ">=", 5),
                             ("liquidation_execution_failure_rate", ">", 0.10)}, 2, [],
                            [("liquidation_enabled", False, "set")]),
    "hot_wallet": ({("hot_wallet_usd", "<", 100_000)}, 3, [("pause_large_withdrawals", {"above_usd": 10_000})], []),
    "order_deviation": ({("order_price_deviation", ">", 0.05)}, 2, [("pause_symbol_hl_routing", {"symbol": "BTC"})],
                        []),
    "asset_mismatch": ({("asset_mismatch_ratio", ">", 0.001)}, 2, [("pause_trading", {}), ("start_reconciliation", {})],
                       []),
}


@pytest.mark.parametrize("rule_id", list(EXPECTED))
def test_trigger_hold_and_immediate_action(rule_id):
    r = alerts.get(rule_id)
    trig, hold, core, sw = EXPECTED[rule_id]
    assert {(c.metric, c.op, c.threshold) for c in r.trigger} == trig
    if isinstance(hold, float):
        assert r.hold.reported_s == hold and r.hold.polls == 1
    else:
        assert r.hold.polls == hold and r.hold.reported_s is None
    assert [(m.action, m.body_for("BTC")) for m in r.core_moves] == core
    assert [(m.switch, m.value, m.mode) for m in r.switch_moves] == sw
    assert r.further and r.hold.why and r.clear_why and r.recovery.why


def test_core_actions_are_the_contracts_and_every_pause_has_its_resume():
    for r in alerts.RULES:
        for m in r.core_moves:
            assert m.action in ACTIONS and set(ACTIONS[m.action]) <= set(m.body_for("BTC")), (r.id, m.action)
            if m.undo:
                assert m.undo in ACTIONS and m.undo == m.action.replace("pause_", "resume_")
        assert all(m.undo for m in r.core_moves if m.action.startswith("pause_"))


def test_metrics_are_the_health_contracts_fields():
    fields = set(HealthSnapshot.model_fields)
    for r in alerts.RULES:
        for c in (*r.trigger, *r.clear):
            assert c.metric in fields or c.metric in alerts.MONITOR_METRICS


def test_clear_never_overlaps_trigger():
    """A value that fires a rule never also clears it (each rule has a band of hysteresis or none)."""
    probes = [0, 0.001, 0.0011, 0.01, 0.05, 0.051, 0.06, 0.1, 0.11, 1, 1.4, 1.5, 1.9, 2.0, 2.4, 2.5, 4, 5, 59, 60, 61,
              99_999, 100_000, 149_999, 150_000]
    for r in alerts.RULES:
        for c in r.trigger:
            for v in probes:
                if c.holds(v):
                    same = [k for k in r.clear if k.metric == c.metric]
                    assert not all(k.holds(v) for k in same) or not same, (r.id, c.metric, v)


def test_recovery_rules():
    auto = {r.id for r in alerts.RULES if r.recovery.mode == "auto"}
    assert auto == {"hl_disconnection", "hl_margin", "hot_wallet"}
    assert alerts.get("hl_disconnection").recovery.clear_hold == timedelta(minutes=2)
    assert alerts.get("asset_mismatch").recovery.role is Role.SUPER_ADMIN
    assert alerts.get("liquidation_failure").recovery.role is Role.SUPER_ADMIN  # liquidation_enabled's owner
    assert alerts.get("hedge_margin").recovery.role is Role.RISK_MANAGER  # hedge_max_leverage's owner
    assert [r.id for r in alerts.RULES if r.rollback] == ["asset_mismatch"]
    assert alerts.get("asset_mismatch").rollback.severity == "data_inconsistency"
    assert alerts.get("hl_disconnection").manual_after.after == timedelta(minutes=5)
    assert [r.id for r in alerts.RULES if r.per_symbol] == ["order_deviation"]


def test_the_p0_switch_moves_are_preapproved_and_nothing_more():
    assert alerts.preapproved_switch_values() == [("hedge_max_leverage", 2.0), ("liquidation_enabled", False)]
    for name, value in alerts.preapproved_switch_values():
        assert approvals.is_preapproved(name, value)
        switches.get(name).parse(value)
    assert not approvals.is_preapproved("hedge_max_leverage", 3.0)
    assert not approvals.is_preapproved("routing_mode", "BETTING_MODE")
    assert approvals.is_preapproved("routing_mode", "HL_MODE")  # what the auto mode switch forces


def test_a_bad_rule_is_refused_when_the_table_loads():
    base = alerts.get("hot_wallet").model_dump()
    with pytest.raises(ValidationError, match="unknown health metric"):
        alerts.Rule.model_validate({**base, "trigger": [{"metric": "hot_walet_usd", "op": "<", "threshold": 1}]})
    with pytest.raises(ValidationError, match="automatic recovery"):
        alerts.Rule.model_validate({**base, "actions": [{"kind": "switch", "switch": "withdrawal_enabled", "value": False}]})
    with pytest.raises(ValidationError, match="per-symbol"):
        alerts.Rule.model_validate({**base, "actions": [{"kind": "core", "action": "pause_symbol_hl_routing",
                                                         "body": {"symbol": alerts.SYMBOL}, "undo": "resume_symbol_hl_routing"}]})
    with pytest.raises(ValidationError):
        alerts.SwitchMove(switch="hedge_max_leverage", value=50)  # outside the switch's range
