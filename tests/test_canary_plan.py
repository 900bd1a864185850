"""The canary plans as data: what the manual names, the blanks filled, and validation at load time."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from manual import canary, switches
from contracts.roles import Role
from manual.steps import HealthCheck
from workflows.runner import check_one, evaluate

DAY = timedelta(days=1)


def test_phase2_is_the_manuals_three_stages_plus_a_closing_review():
    p = canary.PHASE2
    assert [(s.name, s.days) for s in p.stages][:3] == [
        ("Full HL Routing", "1-3"), ("Risk Monitoring", "4-5"), ("Simulated Hedging", "6-7")]
    assert p.stages[3].name == "Closing Review" and p.stages[3].gate.min_role is Role.RISK_MANAGER
    assert sum((s.duration for s in p.stages[:3]), timedelta(0)) == 7 * DAY
    assert any("names three" in n for n in p.notes)
    assert p.stages[2].profile == {"hedge_enabled": True, "hedge_dry_run": True}
    assert all("exposure_precision" in s.observe.probes for s in p.stages[1:])
    assert p.owner_role() is Role.RISK_MANAGER and "global_betting_enabled" not in p.touched()
    assert canary.HL_ROUTING_ZERO in p.stages[0].observe.checks and canary.HL_ROUTING_ZERO.consecutive == 1


def test_phase3_ramps_btc_then_eth_to_the_matrix_defaults_then_full_open():
    p = canary.PHASE3
    assert [(s.name, s.days, s.duration) for s in p.stages] == [
        ("Ultra-Conservative", "1-3", 3 * DAY), ("Low Risk", "4-5", 2 * DAY), ("Target Config", "6-7", 2 * DAY),
        ("Full Open", "8-10", 3 * DAY)]
    s1, s2, s3, s4 = (s.profile for s in p.stages)
    assert s1["global_betting_enabled"] is True and s1["routing_mode"] == "NORMAL_MODE"
    assert s1["per_symbol_betting"] == ["BTC"] and s1["betting_traffic_pct"] == 5
    assert s1["max_order_size_internal"] == 1_000 and s1["max_internal_exposure_usd"] < 500_000
    assert s1["auto_mode_switch"] is False and s1["hedge_dry_run"] is False
    assert s2["per_symbol_betting"] == ["BTC", "ETH"]
    pct = [prof.get("betting_traffic_pct") for prof in (s1, s2, s3, s4)]
    assert pct == sorted(pct) and pct[-1] == 100
    # Target Config: every limit it sets is the control matrix's default
    assert {k: v for k, v in s3.items() if k != "betting_traffic_pct"} == {
        k: switches.get(k).default for k in s3 if k != "betting_traffic_pct"}
    assert s4 == {"betting_traffic_pct": 100, "auto_mode_switch": True}
    assert p.stages[2].gate is not None and p.stages[2].gate.min_role is Role.RISK_MANAGER  # before Full Open
    assert [s.gate for s in (p.stages[0], p.stages[1], p.stages[3])] == [None, None, None]
    assert p.owner_role() is Role.SUPER_ADMIN
    for s in p.stages:
        assert s.why and all(c.why for c in s.observe.checks)
        assert s.observe.on_breach == "rollback" and s.apply.authority == "plan"


def test_pass_criteria_read_the_stage_limits():
    values = {"daily_net_loss_limit": 25_000, "risk_reserve_min_usd": 300_000, "max_internal_exposure_usd": 50_000}
    ok = {"daily_net_pnl_usd": -24_000, "risk_reserve_usd": 310_000, "internal_net_exposure_usd": {"BTC": 49_000}}
    assert evaluate((canary.DAILY_LOSS, canary.RESERVE, canary.EXPOSURE), ok, values) == []
    assert check_one(canary.DAILY_LOSS, {"daily_net_pnl_usd": -26_000}, values) == \
        "daily_net_pnl_usd=-26000 (needs >= -25000.0)"
    assert check_one(canary.EXPOSURE, {"internal_net_exposure_usd": {"BTC": 1, "ETH": 60_000}}, values)
    assert check_one(canary.RESERVE, {"risk_reserve_usd": 299_999}, values)
    assert check_one(canary.ERROR_RATE, {"error_rate": 0.011}, values)
    assert check_one(canary.PRECISION, {}, values) == "exposure_mismatches missing"


def test_time_scale_divides_every_duration_with_floors():
    p = canary.plan_for("phase3", 14400)
    assert p.time_scale == 14400 and p.total == timedelta(minutes=1)
    assert all(s.observe.interval == canary.MIN_SCALED_INTERVAL for s in p.stages)
    assert p.stages[2].gate.timeout == canary.MIN_SCALED_REPAGE
    assert "time-scale 14400" in p.scale_note() and canary.PHASE3.scale_note() == ""
    assert p.scaled(2).time_scale == 28800
    assert [s.profile for s in p.stages] == [s.profile for s in canary.PHASE3.stages]


def test_a_plan_file_round_trips_and_bad_plans_are_refused_at_load():
    text = canary.PHASE3.model_dump_json()
    assert canary.load_plan(text, "phase3") == canary.PHASE3
    with pytest.raises(ValueError, match="for phase3, not phase2"):
        canary.load_plan(text, "phase2")
    data = canary.PHASE3.model_dump(mode="json")
    data["stages"][2]["gate"] = None  # drop the gate before Full Open
    with pytest.raises(ValidationError, match="needs a gate of risk_manager"):
        canary.CanaryPlan.model_validate(data)
    data = canary.PHASE3.model_dump(mode="json")
    data["stages"][0]["apply"]["changes"]["betting_traffic_pct"] = 150
    with pytest.raises(ValidationError, match="above the maximum"):
        canary.CanaryPlan.model_validate(data)
    data = canary.PHASE3.model_dump(mode="json")
    data["stages"][1]["observe"]["name"] = "s1_observe"  # step names must be unique
    with pytest.raises(ValidationError, match="used twice"):
        canary.CanaryPlan.model_validate(data)
    data = canary.PHASE3.model_dump(mode="json")
    data["stages"][0]["observe"]["on_breach"] = "record"
    with pytest.raises(ValidationError, match="rolls back on breach"):
        canary.CanaryPlan.model_validate(data)
    data = canary.PHASE3.model_dump(mode="json")
    data["stages"][0]["observe"]["checks"][0]["kind"] = "observe"
    with pytest.raises(ValidationError):
        canary.CanaryPlan.model_validate(data)
    with pytest.raises(ValidationError, match="did you mean auto_mode_switch"):
        HealthCheck(metric="x", op="<=", threshold=1, threshold_switch="no_such_switch")
    data = canary.PHASE3.model_dump(mode="json")
    data["stages"][0]["apply"]["changes"]["betting_trafic_pct"] = 5
    with pytest.raises(ValidationError, match="did you mean betting_traffic_pct"):
        canary.CanaryPlan.model_validate(data)


def test_describe_writes_the_reasoning_beside_each_stage():
    text = canary.describe(canary.PHASE3)
    for s in canary.PHASE3.stages:
        assert s.title in text and s.why in text
    assert "needs super_admin" in text and "risk_manager promotes" in text
    assert "daily_net_pnl_usd >= -daily_net_loss_limit" in text
