"""Trading-core activities against the simulator over loopback (ActivityEnvironment; a real
Temporal worker for the retry case). Assertions on what the simulator saw, not only on results."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

import httpx
import pytest
from pydantic import SecretStr
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from contracts import trading_core as tc
from contracts.trading_core import (
    AppliedConfig,
    CoreActionInput,
    CoreActionResult,
    HealthSnapshot,
    ReadHealthInput,
    WaitAppliedInput,
    exposure_mismatches,
    recompute_exposure,
)
from activities.trading_core import TradingCoreActivities
from core import procs
from core.settings import TradingCoreSettings
from tests.support.fixtures_sim import apply, apply_and_wait, order


@pytest.fixture
async def core(core_settings):
    acts = TradingCoreActivities.from_settings(core_settings)
    yield acts
    await acts.aclose()


def key() -> str:
    return f"wf-{uuid.uuid4().hex[:8]}:step-2:pause"


async def run_err(coro) -> ApplicationError:
    with pytest.raises(ApplicationError) as ei:
        await coro
    return ei.value


# -- health ------------------------------------------------------------------------------------------
async def test_read_health_round_trips(sim, core):
    env = ActivityEnvironment()
    h = await env.run(core.read_health, ReadHealthInput())
    assert isinstance(h, HealthSnapshot) and h.as_of.tzinfo is not None and not h.maintenance
    # through Temporal's pydantic converter and back: equal
    conv = pydantic_data_converter.payload_converter
    assert conv.from_payloads(conv.to_payloads([h]), [HealthSnapshot])[0] == h
    # a fault injected now is in the next read
    await sim.inject({"hl_margin_ratio": 1.4, "order_price_deviation": {"ETH": 0.07}, "hl_connected": False})
    h = await env.run(core.read_health, ReadHealthInput(timeout_s=1.0))
    assert h.hl_margin_ratio == 1.4 and h.order_price_deviation["ETH"] == 0.07 and not h.hl_connected


async def test_read_exposure_can_be_verified(sim, store, core):
    await apply_and_wait(sim, store, global_betting_enabled=True, routing_mode="NORMAL_MODE")
    for side in ("buy", "sell", "buy"):
        await order(sim, "BTC", 3_000, side)
    rep = await ActivityEnvironment().run(core.read_exposure)
    assert rep.symbols["BTC"].positions and exposure_mismatches(rep) == []
    assert recompute_exposure(rep)["BTC"] == pytest.approx(rep.symbols["BTC"].net_exposure_usd, abs=1.0)


# -- actions -------------------------------------------------------------------------------------------
async def test_action_sends_the_key_and_reports_the_result(sim, core):
    k = key()
    res = await ActivityEnvironment().run(core.action, CoreActionInput(action="pause_symbol_hl_routing",
                                                                         body={"symbol": "BTC"}, idempotency_key=k))
    assert isinstance(res, CoreActionResult) and res.status == "done" and not res.replayed
    acts = await sim.actions()
    assert [(a["action"], a["body"], a["idempotency_key"]) for a in acts] == [
        ("pause_symbol_hl_routing", {"symbol": "BTC"}, k)]
    assert "hl_routing_paused:BTC" in (await sim.health())["controls"]


@pytest.mark.parametrize("fault", [
    {"api_status": 500, "api_fault_after": True, "api_fault_count": 1},  # acted, then the answer was a 500
    {"api_timeout": True, "api_fault_after": True, "api_fault_count": 1},  # acted, then the answer never came
])
async def test_a_retried_action_acts_once(sim, core_settings, fault):
    core = TradingCoreActivities.from_settings(core_settings.model_copy(update={"timeout_s": 0.3}))
    env, inp = ActivityEnvironment(), CoreActionInput(action="pause_new_orders", idempotency_key=key())
    await sim.inject(fault)
    e = await run_err(env.run(core.action, inp))
    assert not e.non_retryable and e.type in (tc.CORE_UNAVAILABLE, tc.CORE_TIMEOUT)
    res = await env.run(core.action, inp)  # the retry, same key
    assert res.replayed and res.status == "done"
    assert len(await sim.actions()) == 1
    await core.aclose()


async def test_keys_that_are_not_clean_header_values_are_hashed_stably(sim, core):
    env = ActivityEnvironment()
    for k in ("wf-1:Pause new orders (HL down):pause_new_orders", "wf-é:ünïcode", "x" * 300):
        inp = CoreActionInput(action="pause_new_orders", idempotency_key=k)
        first, again = await env.run(core.action, inp), await env.run(core.action, inp)
        assert first.idempotency_key == k and again.replayed and not first.replayed
    keys = [a["idempotency_key"] for a in await sim.actions()]
    assert keys[0] == "wf-1:Pause new orders (HL down):pause_new_orders"  # spaces are fine in a header
    assert keys[1].startswith("sha256:") and keys[2].startswith("sha256:") and len(keys) == 3


@workflow.defn(sandboxed=False)
class ActOnce:
    @workflow.run
    async def run(self, action: str) -> dict:
        return await workflow.execute_activity(
            "core.action", {"action": action, "body": {}, "idempotency_key": f"{workflow.info().workflow_id}:s1:{action}"},
            result_type=dict, start_to_close_timeout=timedelta(seconds=5),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_attempts=5,
                                     non_retryable_error_types=tc.NON_RETRYABLE))


async def test_a_temporal_retry_never_acts_twice(sim, core, ts_env, task_queue):
    await sim.inject(api_status=503, api_fault_after=True, api_fault_count=2)  # two answers lost
    async with Worker(ts_env.client, task_queue=task_queue, workflows=[ActOnce], activities=[core.action],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        out = await ts_env.client.execute_workflow(ActOnce.run, "pause_hl_opens", id=f"wf-{uuid.uuid4()}",
                                                   task_queue=task_queue)
    assert out["status"] == "done" and out["replayed"] is True
    assert [a["action"] for a in await sim.actions()] == ["pause_hl_opens"]


async def test_maintenance_is_not_retried_and_says_level_3(sim, store, core):
    await apply_and_wait(sim, store, global_api_enabled=False)
    env = ActivityEnvironment()
    e = await run_err(env.run(core.action, CoreActionInput(action="pause_new_orders", idempotency_key=key())))
    assert e.type == tc.MAINTENANCE and e.non_retryable and "Level 3" in e.message
    h = await env.run(core.read_health, ReadHealthInput())  # observation keeps working
    assert h.maintenance is True
    assert (await env.run(core.read_exposure)).maintenance is True
    assert await sim.actions() == []


async def test_a_key_still_in_flight_gets_409_and_its_retry_gets_the_first_answer(sim, core_settings):
    """The IETF idempotency-key draft: 409 while the key's first request is still running (retry later,
    here after its Retry-After); once done, the retry with the same key gets the stored answer and the
    action ran once. (A 409 used to be classed BadRequest: a timed-out pause_trading retried under the
    same key would have failed for good.)"""
    import asyncio

    core = TradingCoreActivities.from_settings(core_settings)
    inp = CoreActionInput(action="pause_trading", idempotency_key=key())
    await sim.inject(api_action_ms=400)
    first = asyncio.create_task(ActivityEnvironment().run(core.action, inp))
    await sim.wait_for(sim.status, lambda st: st["actions_in_flight"] == 1, 5, what="the first request in flight")
    r = await sim.v1("POST", "/v1/actions/pause_trading", {}, headers={"Idempotency-Key": inp.idempotency_key})
    assert r.status_code == 409 and r.headers["retry-after"] == "1" and r.json()["error"] == "in_flight"
    e = await run_err(ActivityEnvironment().run(core.action, inp))
    assert e.type == tc.CORE_UNAVAILABLE and not e.non_retryable and e.next_retry_delay.total_seconds() == 1
    assert (await first).status == "done"
    again = await ActivityEnvironment().run(core.action, inp)
    assert again.replayed and again.status == "done"
    assert [a["action"] for a in await sim.actions()] == ["pause_trading"]
    await core.aclose()


@pytest.mark.parametrize("status,etype,retry", [
    (503, tc.CORE_UNAVAILABLE, True),
    (500, tc.CORE_UNAVAILABLE, True),
    (400, tc.BAD_REQUEST, False),
])
async def test_rfc9457_problem_documents_are_understood(sim, core_settings, status, etype, retry):
    core = TradingCoreActivities.from_settings(core_settings)
    await sim.inject(api_problem_json=True, api_status=status)
    r = await sim.v1("GET", "/v1/health")
    assert r.headers["content-type"].startswith("application/problem+json") and r.json()["status"] == status
    e = await run_err(ActivityEnvironment().run(core.read_health, ReadHealthInput(timeout_s=1)))
    assert e.type == etype and e.non_retryable is (not retry)
    assert f"injected status {status}" in e.message  # the problem's detail, read
    await core.aclose()


async def test_a_maintenance_problem_document_is_still_maintenance(sim, store, core_settings):
    """Level 3 answered as RFC 9457 problem+json is not misread as a retryable 503."""
    core = TradingCoreActivities.from_settings(core_settings)
    await apply_and_wait(sim, store, global_api_enabled=False)
    await sim.inject(api_problem_json=True)
    r = await sim.v1("POST", "/v1/actions/pause_new_orders", {}, headers={"Idempotency-Key": "k-raw"})
    assert r.status_code == 503 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"].endswith("/maintenance") and "error" not in r.json()
    e = await run_err(ActivityEnvironment().run(core.action, CoreActionInput(action="pause_new_orders",
                                                                             idempotency_key=key())))
    assert e.type == tc.MAINTENANCE and e.non_retryable and "Level 3" in e.message
    await core.aclose()


def test_the_simulator_keeps_answers_for_its_ttl_then_forgets_them():
    import asyncio

    from simulator.core import IDEMPOTENCY_TTL_S, Simulator

    from workflows.base import CORE_ACTION_HORIZON

    assert IDEMPOTENCY_TTL_S >= CORE_ACTION_HORIZON.total_seconds()  # longer than any retry of one key
    sim = Simulator(None)

    async def go():
        first, replayed = await sim.act("pause_hl_opens", {}, "k1")
        assert not replayed
        again, replayed = await sim.act("pause_hl_opens", {}, "k1")
        assert replayed and again == first
        sim.idempotency["k1"]["stored"] -= IDEMPOTENCY_TTL_S + 1  # a day later
        _, replayed = await sim.act("pause_hl_opens", {}, "k1")
        assert not replayed  # forgotten: the key acts again

    asyncio.run(go())


# -- error classes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fault,etype,retry", [
    ({"api_status": 500}, tc.CORE_UNAVAILABLE, True),
    ({"api_status": 502}, tc.CORE_UNAVAILABLE, True),
    ({"api_status": 503}, tc.CORE_UNAVAILABLE, True),  # a 503 that is not maintenance
    ({"api_status": 429}, tc.CORE_UNAVAILABLE, True),
    ({"api_status": 400}, tc.BAD_REQUEST, False),
    ({"api_status": 404}, tc.BAD_REQUEST, False),
    ({"api_timeout": True}, tc.CORE_TIMEOUT, True),
    ({"api_malformed": "not_json"}, tc.SCHEMA_VIOLATION, False),
    ({"api_malformed": "wrong_type"}, tc.SCHEMA_VIOLATION, False),
    ({"api_malformed": "missing_field", "api_malformed_field": "as_of"}, tc.SCHEMA_VIOLATION, False),
])
async def test_health_errors_are_classified(sim, core_settings, fault, etype, retry):
    core = TradingCoreActivities.from_settings(core_settings)
    await sim.inject(fault)
    e = await run_err(ActivityEnvironment().run(core.read_health, ReadHealthInput(timeout_s=0.3)))
    assert e.type == etype and e.non_retryable is (not retry), e.message
    if fault.get("api_malformed") == "wrong_type":
        assert "'hl_margin_ratio'" in e.message
    if fault.get("api_malformed") == "missing_field":
        assert "'as_of'" in e.message and "missing" in e.message.lower()
    await core.aclose()


async def test_action_errors_are_classified(sim, core):
    env = ActivityEnvironment()
    e = await run_err(env.run(core.action, CoreActionInput(action="pause_symbol_hl_routing", body={"symbol": "DOGE"},
                                                           idempotency_key=key())))
    assert e.type == tc.BAD_REQUEST and e.non_retryable and "DOGE" in e.message
    e = await run_err(env.run(core.action, CoreActionInput(action="pause_symbol_hl_routing", idempotency_key=key())))
    assert e.type == tc.BAD_REQUEST and "symbol" in e.message  # refused before sending
    e = await run_err(env.run(core.action, CoreActionInput(action="launch_rockets", idempotency_key=key())))
    assert e.type == tc.BAD_REQUEST and e.non_retryable
    k = key()
    await env.run(core.action, CoreActionInput(action="pause_hl_opens", idempotency_key=k))
    e = await run_err(env.run(core.action, CoreActionInput(action="pause_trading", idempotency_key=k)))
    assert e.type == tc.BAD_REQUEST and "idempotency_key_reused" in e.message
    await sim.inject(api_malformed="missing_field", api_malformed_field="status")
    e = await run_err(env.run(core.action, CoreActionInput(action="resume_hl_opens", idempotency_key=key())))
    assert e.type == tc.SCHEMA_VIOLATION and "'status'" in e.message
    assert [a["action"] for a in await sim.actions()] == ["pause_hl_opens", "resume_hl_opens"]


async def test_wrong_token_and_no_core(sim, core_settings):
    bad = TradingCoreActivities.from_settings(core_settings.model_copy(update={"token": SecretStr("nope")}))
    e = await run_err(ActivityEnvironment().run(bad.read_health, ReadHealthInput()))
    assert e.type == tc.UNAUTHORIZED and e.non_retryable and "ROLLBACKCTL_TRADING_CORE_TOKEN" in e.message
    await bad.aclose()
    gone = TradingCoreActivities.from_settings(TradingCoreSettings(url=f"http://127.0.0.1:{procs.free_port()}"))
    e = await run_err(ActivityEnvironment().run(gone.read_health, ReadHealthInput()))
    assert e.type == tc.CORE_UNAVAILABLE and not e.non_retryable
    await gone.aclose()


# -- wait_applied ------------------------------------------------------------------------------------------
async def test_wait_applied_returns_once_the_core_has_the_revision(sim, store, core):
    beats: list = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *d: beats.append(d)
    res = await apply(store, betting_traffic_pct=5, hedge_dry_run=True)
    cfg = await env.run(core.wait_applied, WaitAppliedInput(revision=res.revision, timeout_s=5))
    assert isinstance(cfg, AppliedConfig) and cfg.revision >= res.revision
    assert cfg.switches["betting_traffic_pct"].value == 5 and cfg.switches["betting_traffic_pct"].revision == res.revision
    assert cfg.switches["hedge_dry_run"].value is True
    assert 0 <= cfg.waited_s < 5 and cfg.polls >= 1


async def test_wait_applied_times_out_retryably_and_heartbeats(sim, core):
    beats: list = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *d: beats.append(d)
    cur = (await sim.switches())["revision"]
    e = await run_err(env.run(core.wait_applied, WaitAppliedInput(revision=cur + 10_000, timeout_s=0.3)))
    assert e.type == tc.NOT_APPLIED and not e.non_retryable and str(cur + 10_000) in e.message
    assert len(beats) >= 2  # one per poll (~20 ms)


async def test_wait_applied_polls_through_transient_failures(sim, store, core):
    res = await apply(store, hedge_max_leverage=2.5)
    await sim.inject(api_status=500, api_fault_count=3, api_paths=["/v1/config/"])
    cfg = await ActivityEnvironment().run(core.wait_applied, WaitAppliedInput(revision=res.revision, timeout_s=5))
    assert cfg.switches["hedge_max_leverage"].value == 2.5 and cfg.polls >= 4


# -- secrets -------------------------------------------------------------------------------------------------
async def test_the_token_never_reaches_logs_or_errors(sim, store, core, core_settings, caplog):
    token = core_settings.token.get_secret_value()
    caplog.set_level(logging.DEBUG)
    env = ActivityEnvironment()
    msgs = [repr(core), repr(core_settings)]
    await env.run(core.read_health, ReadHealthInput())
    await env.run(core.action, CoreActionInput(action="pause_new_orders", idempotency_key=key()))
    for fault in ({"api_status": 500}, {"api_status": 401}, {"api_malformed": "wrong_type"}):
        await sim.clear_faults()
        await sim.inject(fault)
        msgs.append(str(await run_err(env.run(core.read_health, ReadHealthInput()))))
    await sim.clear_faults()
    res = await apply(store, hedge_max_leverage=2.0)
    await env.run(core.wait_applied, WaitAppliedInput(revision=res.revision))
    assert token not in caplog.text
    assert not any(token in m for m in msgs)
    assert "trading core action pause_new_orders" in caplog.text  # logged, without the token


def test_from_settings_reads_the_environment(monkeypatch):
    monkeypatch.setenv("ROLLBACKCTL_TRADING_CORE_URL", "http://127.0.0.1:9999/")
    monkeypatch.setenv("ROLLBACKCTL_TRADING_CORE_TOKEN", "s3cret-token")
    acts = TradingCoreActivities.from_settings(TradingCoreSettings(), httpx.AsyncClient())
    assert acts.base_url == "http://127.0.0.1:9999" and "s3cret" not in repr(acts)
    assert acts._headers()["Authorization"] == "Bearer s3cret-token"
