"""The trading-core simulator, over loopback HTTP, following a real etcd."""

from __future__ import annotations

import asyncio

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from contracts.trading_core import ExposureReport, HealthSnapshot, exposure_mismatches, recompute_exposure
from core import procs
from rollbackctl import devstack
from simulator.client import SimClient
from tests.support.fixtures_sim import apply, apply_and_wait, order


async def act(sim: SimClient, name: str, body: dict | None = None, key: str | None = None) -> httpx.Response:
    return await sim.v1("POST", f"/v1/actions/{name}", body or {},
                        headers={"Idempotency-Key": key or uuid.uuid4().hex})


# -- health -----------------------------------------------------------------------------------------
async def test_health_is_healthy_and_moves(sim):
    first = await sim.health()
    h = HealthSnapshot.model_validate(first)
    assert not h.maintenance and h.hl_connected and h.hl_disconnected_for_s == 0
    assert h.error_rate < 0.01 and h.hl_margin_ratio > 2.0 and h.hedge_margin_ratio > 2.5
    assert h.hot_wallet_usd > 1_000_000 and h.asset_mismatch_ratio < 0.001
    assert max(h.order_price_deviation.values()) < 0.01 and max(h.volatility_pct.values()) < 5.0
    assert set(h.order_price_deviation) == {"BTC", "ETH", "SOL"}
    # a seeded random walk: the values move
    await sim.wait_for(sim.health, lambda x: x["hl_margin_ratio"] != first["hl_margin_ratio"]
                       and x["error_rate"] != first["error_rate"], 5, what="metrics moving")


async def test_v1_routes_need_the_bearer_token(sim):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {sim.token}"}):
        r = await sim.http.get(sim.url("/v1/health"), headers=headers)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        r = await sim.http.post(sim.url("/v1/actions/pause_new_orders"), headers={**headers, "Idempotency-Key": "k"})
        assert r.status_code == 401
    assert (await sim.actions()) == []
    assert (await sim.http.get(sim.url("/sim/status"))).status_code == 200  # /sim/: no token


async def test_fault_shows_in_the_next_health_read_and_clears(sim):
    await sim.inject({"error_rate": 0.02, "hl_margin_ratio": 1.4, "order_price_deviation": {"BTC": 0.07}})
    h = await sim.health()
    assert h["error_rate"] == 0.02 and h["hl_margin_ratio"] == 1.4
    assert h["order_price_deviation"]["BTC"] == 0.07 and h["order_price_deviation"]["ETH"] < 0.01
    await sim.inject(hl_margin_ratio=None)  # null removes one fault
    assert (await sim.faults()) == {"error_rate": 0.02, "order_price_deviation": {"BTC": 0.07}}
    await sim.clear_faults()
    h = await sim.health()
    assert h["error_rate"] < 0.01 and h["order_price_deviation"]["BTC"] < 0.01 and h["hl_margin_ratio"] > 2


async def test_bad_faults_are_refused_naming_the_field(sim):
    for body, word in (({"hl_margin_ratio": "low"}, "hl_margin_ratio"), ({"hl_conected": False}, "hl_conected"),
                       ({"error_rate": 3}, "error_rate"), ({"api_status": 200}, "api_status"),
                       ({"order_price_deviation": {"BTC": "x"}}, "order_price_deviation.BTC")):
        r = await sim.http.post(sim.url("/sim/faults"), json=body)
        assert r.status_code == 400 and word in r.json()["detail"], (body, r.text)
    assert (await sim.faults()) == {}


async def test_hl_disconnection_is_timed_by_the_simulator(sim):
    await sim.inject(hl_connected=False)
    h = await sim.health()
    assert h["hl_connected"] is False and 0 <= h["hl_disconnected_for_s"] < 5
    h = await sim.wait_for(sim.health, lambda x: x["hl_disconnected_for_s"] >= 0.3, 5, what="clock running")
    # orders routed to HL fail while it is down (HL_MODE: every order goes to HL)
    h = await sim.wait_for(sim.health, lambda x: x["hl_routing_failures"] > 0, 5, what="routing failures")
    # pausing new orders stops them: the flow is rejected, no more HL failures
    assert (await act(sim, "pause_new_orders")).status_code == 200
    before = (await sim.health())["hl_routing_failures"]
    rejected = (await sim.status())["orders"]["rejected"]
    await sim.wait_for(sim.status, lambda s: s["orders"]["rejected"] >= rejected + 8, 10, what="paused flow")
    assert (await sim.health())["hl_routing_failures"] == before
    # the five-minute case without waiting five minutes: the clock itself can be overridden
    await sim.inject(hl_disconnected_for_s=301.0)
    assert (await sim.health())["hl_disconnected_for_s"] == 301.0
    await sim.clear_faults()
    h = await sim.health()
    assert h["hl_connected"] is True and h["hl_disconnected_for_s"] == 0


# -- switches ------------------------------------------------------------------------------------------
async def test_switch_change_is_applied_and_reported(sim, store):
    t0 = datetime.now(timezone.utc)
    res = await apply(store, hedge_max_leverage=2.0)
    sw = await sim.wait_applied(res.revision)
    entry = sw["switches"]["hedge_max_leverage"]
    assert entry["value"] == 2.0 and entry["revision"] == res.revision
    applied_at = datetime.fromisoformat(entry["applied_at"].replace("Z", "+00:00"))
    assert t0 - timedelta(seconds=1) <= applied_at <= datetime.now(timezone.utc)
    assert sw["prefix"] == store.prefix
    # the contract's view is the same
    r = await sim.v1("GET", "/v1/config/applied")
    assert r.json()["revision"] >= res.revision and r.json()["switches"]["hedge_max_leverage"]["value"] == 2.0
    # untouched switches carry the revision that wrote them (init), or 0 for a default never written
    assert 0 < sw["switches"]["routing_mode"]["revision"] < res.revision


async def test_maintenance_mode_503_on_trading_routes_only(sim, store):
    await apply_and_wait(sim, store, global_api_enabled=False)
    r = await act(sim, "pause_new_orders")
    assert r.status_code == 503 and r.json()["error"] == "maintenance"
    r = await sim.v1("POST", "/v1/orders", {"symbol": "BTC", "notional_usd": 100})
    assert r.status_code == 503 and r.json()["error"] == "maintenance"
    assert (await sim.actions()) == []
    h = await sim.health()
    assert h["maintenance"] is True
    # a browser (asking for HTML, with or without a token) gets the manual's static maintenance page, same 503
    async with httpx.AsyncClient(base_url=sim.base_url) as c:
        r = await c.post("/v1/orders", json={"symbol": "BTC"}, headers={"Accept": "text/html,application/xhtml+xml"})
    assert r.status_code == 503 and r.headers["content-type"].startswith("text/html")
    assert "Trading is paused for maintenance" in r.text and r.headers["retry-after"] == "60"
    r = await sim.v1("GET", "/v1/risk/exposure")
    assert r.status_code == 200 and r.json()["maintenance"] is True
    r = await sim.v1("GET", "/v1/config/applied")
    assert r.status_code == 200 and r.json()["maintenance"] is True
    await apply_and_wait(sim, store, global_api_enabled=True)
    assert (await act(sim, "pause_new_orders")).status_code == 200
    assert (await sim.health())["maintenance"] is False


async def test_routing_follows_the_switches(sim, store):
    assert (await order(sim, "BTC", 5_000))["route"] == "hl"  # defaults: HL_MODE, betting off
    await apply_and_wait(sim, store, global_betting_enabled=True, routing_mode="NORMAL_MODE")
    assert (await order(sim, "BTC", 5_000))["route"] == "internal"
    assert (await order(sim, "BTC", 20_000))["route"] == "hl"  # above normal_threshold 10k
    assert (await order(sim, "SOL", 1_000))["route"] == "hl"  # not in per_symbol_betting
    await apply_and_wait(sim, store, routing_mode="BETTING_MODE", max_order_size_internal=50_000)
    assert (await order(sim, "BTC", 20_000))["route"] == "internal"  # within betting_threshold 50k
    await apply_and_wait(sim, store, global_betting_enabled=False)
    o = await order(sim, "BTC", 5_000)
    assert o["route"] == "hl" and "global_betting_enabled" in o["reason"]  # whatever routing_mode says
    await apply_and_wait(sim, store, global_betting_enabled=True, betting_traffic_pct=0)
    assert (await order(sim, "BTC", 5_000))["route"] == "hl"
    await apply_and_wait(sim, store, betting_traffic_pct=100)
    await sim.inject(volatility_pct={"BTC": 7.5})  # above force_hl_volatility_pct 5%
    o = await order(sim, "BTC", 5_000)
    assert o["route"] == "hl" and "volatility" in o["reason"]
    await sim.clear_faults()
    # what was internalized shows as exposure, and the core's figure can be recomputed from positions
    rep = ExposureReport.model_validate((await sim.v1("GET", "/v1/risk/exposure")).json())
    assert rep.symbols["BTC"].positions and rep.symbols["BTC"].internalizing
    assert not rep.symbols["SOL"].internalizing
    assert exposure_mismatches(rep) == []
    assert recompute_exposure(rep)["BTC"] == pytest.approx(rep.symbols["BTC"].net_exposure_usd, abs=1.0)
    h = await sim.health()
    assert h["internal_net_exposure_usd"]["BTC"] == pytest.approx(abs(rep.symbols["BTC"].net_exposure_usd), rel=0.5)


async def test_a_wrong_core_exposure_figure_is_caught(sim, store):
    await apply_and_wait(sim, store, global_betting_enabled=True, routing_mode="NORMAL_MODE")
    for side in ("buy", "buy", "sell", "buy"):
        await order(sim, "ETH", 4_000, side)
    await sim.inject(exposure_error_usd={"ETH": 2_500})
    rep = ExposureReport.model_validate((await sim.v1("GET", "/v1/risk/exposure")).json())
    bad = exposure_mismatches(rep)
    assert len(bad) == 1 and bad[0].startswith("ETH")


# -- actions ---------------------------------------------------------------------------------------------
async def test_actions_are_idempotent_by_key_and_listed_once(sim):
    r1 = await act(sim, "pause_hl_opens", key="wf-1:step-3:pause_hl_opens")
    r2 = await act(sim, "pause_hl_opens", key="wf-1:step-3:pause_hl_opens")
    assert r1.status_code == r2.status_code == 200 and r1.json() == r2.json()
    assert r1.headers["Idempotent-Replayed"] == "false" and r2.headers["Idempotent-Replayed"] == "true"
    acts = await sim.actions()
    assert [(a["action"], a["body"], a["idempotency_key"]) for a in acts] == \
        [("pause_hl_opens", {}, "wf-1:step-3:pause_hl_opens")]
    assert set(acts[0]) == {"action", "body", "idempotency_key", "at"}
    # the same key for another action or body is refused
    r = await act(sim, "pause_trading", key="wf-1:step-3:pause_hl_opens")
    assert r.status_code == 422 and r.json()["error"] == "idempotency_key_reused"
    # a repeated pause under a new key is a no-op, and says so
    r = await act(sim, "pause_hl_opens")
    assert r.json()["status"] == "noop"
    await sim.clear_actions()
    assert await sim.actions() == []


async def test_bad_action_requests_get_4xx_with_error_and_detail(sim):
    r = await sim.v1("POST", "/v1/actions/pause_new_orders", {})  # no Idempotency-Key
    assert r.status_code == 400 and "Idempotency-Key" in r.json()["detail"]
    r = await act(sim, "launch_rockets")
    assert r.status_code == 404 and r.json()["error"] == "unknown_action"
    r = await act(sim, "pause_symbol_hl_routing", {})
    assert r.status_code == 400 and "symbol" in r.json()["detail"]
    r = await act(sim, "pause_symbol_hl_routing", {"symbol": "DOGE"})
    assert r.status_code == 400 and "DOGE" in r.json()["detail"]
    r = await act(sim, "pause_large_withdrawals", {"above_usd": -1})
    assert r.status_code == 400 and "above_usd" in r.json()["detail"]
    r = await sim.http.post(sim.url("/v1/actions/pause_trading"), content=b"{not json",
                            headers={**sim.auth(), "Idempotency-Key": "x"})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    assert await sim.actions() == []


async def test_pause_actions_change_what_the_core_reports(sim):
    assert (await act(sim, "pause_hl_opens")).json()["status"] == "done"
    assert (await act(sim, "pause_symbol_hl_routing", {"symbol": "BTC"})).json()["status"] == "done"
    assert (await act(sim, "pause_large_withdrawals", {"above_usd": 10_000})).json()["status"] == "done"
    rec = (await act(sim, "start_reconciliation")).json()
    assert rec["status"] == "started" and rec["result"]["reconciliation_id"]
    controls = (await sim.health())["controls"]
    assert {"hl_opens_paused", "hl_routing_paused:BTC", "large_withdrawals_paused:>10000",
            f"reconciliation_running:{rec['result']['reconciliation_id']}"} <= set(controls)
    # BTC's HL routing paused and internalization off: a BTC order has no route
    o = await order(sim, "BTC", 1_000)
    assert o["route"] == "rejected" and "HL routing paused" in o["reason"]
    assert (await order(sim, "ETH", 1_000))["route"] == "hl"
    w = await sim.v1("POST", "/v1/withdrawals", {"amount_usd": 20_000})
    assert w.json()["status"] == "held"
    assert (await sim.v1("POST", "/v1/withdrawals", {"amount_usd": 5_000})).json()["status"] == "sent"
    await act(sim, "resume_large_withdrawals")
    assert (await sim.v1("POST", "/v1/withdrawals", {"amount_usd": 20_000})).json()["status"] == "sent"
    await act(sim, "resume_symbol_hl_routing", {"symbol": "BTC"})
    assert (await order(sim, "BTC", 1_000))["route"] == "hl"
    await act(sim, "pause_trading")
    assert (await order(sim, "ETH", 1_000))["route"] == "rejected"
    await act(sim, "resume_trading")
    assert "trading_paused" not in (await sim.health())["controls"]


# -- API faults -------------------------------------------------------------------------------------------
async def test_api_faults(sim):
    await sim.inject(api_status=502, api_fault_count=2)
    assert (await sim.v1("GET", "/v1/health")).status_code == 502
    assert (await sim.v1("GET", "/v1/risk/exposure")).status_code == 502
    assert (await sim.v1("GET", "/v1/health")).status_code == 200  # count used up
    assert await sim.faults() == {}
    await sim.inject(api_error_share=1.0, api_paths=["/v1/risk/"])
    assert (await sim.v1("GET", "/v1/risk/exposure")).status_code == 500
    assert (await sim.v1("GET", "/v1/health")).status_code == 200  # other paths untouched
    await sim.clear_faults()
    await sim.inject(api_malformed="not_json")
    r = await sim.v1("GET", "/v1/health")
    with pytest.raises(ValueError):
        json.loads(r.content)
    await sim.inject(api_malformed="missing_field", api_malformed_field="as_of")
    assert "as_of" not in (await sim.v1("GET", "/v1/health")).json()
    await sim.clear_faults()
    await sim.inject(api_latency_ms=150)
    t0 = datetime.now(timezone.utc)
    assert (await sim.v1("GET", "/v1/health")).status_code == 200
    assert datetime.now(timezone.utc) - t0 >= timedelta(milliseconds=150)
    await sim.clear_faults()
    await sim.inject(api_timeout=True)
    with pytest.raises(httpx.ReadTimeout):
        await sim.http.get(sim.url("/v1/health"), headers=sim.auth(), timeout=0.2)
    await sim.clear_faults()  # releases the held request
    assert (await sim.v1("GET", "/v1/health")).status_code == 200


async def test_openapi_documents_the_contract(sim):
    spec = (await sim.http.get(sim.url("/openapi.json"))).json()
    assert {"/v1/health", "/v1/risk/exposure", "/v1/config/applied", "/v1/actions/{name}"} <= set(spec["paths"])
    props = spec["components"]["schemas"]["HealthSnapshot"]["properties"]
    assert set(HealthSnapshot.model_fields) == set(props)
    enum = spec["paths"]["/v1/actions/{name}"]["post"]["parameters"][0]["schema"]["enum"]
    assert "pause_symbol_hl_routing" in enum and "start_reconciliation" in enum


def test_sim_routes_answer_loopback_clients_only():
    from starlette.requests import Request

    from simulator.app import _loopback

    def req(host: str) -> Request:
        return Request({"type": "http", "method": "GET", "path": "/sim/faults", "headers": [],
                        "client": (host, 40000)})

    assert _loopback(req("127.0.0.1")) and _loopback(req("::1")) and _loopback(req("127.0.0.9"))
    assert not _loopback(req("10.1.2.3")) and not _loopback(req("192.168.0.7"))


# -- sinks -----------------------------------------------------------------------------------------------
async def test_pagerduty_sink_checks_events_like_pagerduty(sim):
    """Over HTTP at PagerDuty's path (the rules themselves: tests/test_sinks.py)."""
    from tests.support.fixtures_sim import LEVEL_KEYS

    url = sim.url("/sim/pagerduty/v2/enqueue")
    key = LEVEL_KEYS[0]
    r = await sim.http.post(url, json={"routing_key": "k", "event_action": "trigger", "payload": {"summary": "x"}})
    assert r.status_code == 400 and r.json()["status"] == "invalid event"
    assert any("severity" in e for e in r.json()["errors"]) and any("32-character" in e for e in r.json()["errors"])
    ev = {"routing_key": key, "event_action": "trigger", "dedup_key": "d1",
          "payload": {"summary": "HL down", "source": "t", "severity": "critical"}}
    r = await sim.http.post(url, json=ev)
    assert r.status_code == 202 and r.json() == {"status": "success", "message": "Event processed", "dedup_key": "d1"}
    await sim.http.post(url, json=ev)  # same dedup_key on an open alert: appended, nobody notified
    inc = await sim.incidents()
    assert len(inc) == 1 and len(inc[0]["log"]) == 2 and len(await sim.notifications()) == 1
    r = await sim.http.post(url, json={"routing_key": key, "event_action": "resolve"})
    assert r.status_code == 400  # resolve needs the dedup_key
    r = await sim.http.post(url, json={**ev, "routing_key": "0" * 32})
    assert r.status_code == 400 and "Invalid routing key" in r.text  # not an integration key of the account
    assert len(await sim.pages()) == 5
    r = await sim.http.post(url, content=b"{not json")
    assert r.status_code == 400 and (await sim.pagerduty())["events_received"] == 6


async def test_a_person_acks_in_the_pagerduty_app_and_the_signed_webhook_goes_out(sim, http):
    """The sink's "app" changes the alert and posts PagerDuty's v3 webhook, signed, to the receiver."""
    import hashlib
    import hmac

    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from core import procs
    from tests.support.fixtures_sim import LEVEL_KEYS

    got = []

    async def hook(request):
        got.append((dict(request.headers), await request.body()))
        return Response(status_code=202)

    import uvicorn

    port = procs.free_port()
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/hook", hook, methods=["POST"])]),
                                           host="127.0.0.1", port=port, log_level="warning"))
    import asyncio

    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)  # uvicorn's own start-up flag
        await sim.paging_config(webhook_url=f"http://127.0.0.1:{port}/hook", webhook_secrets=["sekrit"])
        await sim.http.post(sim.url("/sim/pagerduty/v2/enqueue"), json={
            "routing_key": LEVEL_KEYS[0], "event_action": "trigger", "dedup_key": "wf/x:L1",
            "payload": {"summary": "HL down", "source": "t", "severity": "critical"}})
        d = await sim.pagerduty_app("acknowledge", "wf/x:L1", "Olive")
        assert d["status"] == 202 and d["error"] is None
        [(headers, body)] = got
        assert headers["x-pagerduty-signature"] == "v1=" + hmac.new(b"sekrit", body, hashlib.sha256).hexdigest()
        assert headers["x-webhook-id"] == d["id"]
        assert (await sim.incidents())[0]["status"] == "acknowledged"
        r = await http.post(sim.url("/sim/pagerduty/app/acknowledge"), json={"dedup_key": "nope"})
        assert r.status_code == 404
        r = await http.post(sim.url("/sim/paging/config"), json={"webhook_url": "http://10.0.0.1/x"})
        assert r.status_code == 400 and "loopback" in r.text  # never a target off this machine
    finally:
        server.should_exit = True
        await task


async def test_slack_sink(sim):
    r = await sim.http.post(sim.url("/sim/slack/T1/B1/x"), json={"text": "hello"})
    assert r.status_code == 200 and r.text == "ok"
    r = await sim.http.post(sim.url("/sim/slack/T1/B1/x"), json={"username": "no text"})
    assert r.status_code == 400 and r.text == "no_text"
    assert await sim.chats("T1/B1/x") == [{"text": "hello"}, {"username": "no text"}]
    assert await sim.chats("T1/B2/y") == []
    await sim.paging_config(slack_broken={"T1/B3/z": "channel_is_archived"})
    r = await sim.http.post(sim.url("/sim/slack/T1/B3/z"), json={"text": "hello"})
    assert (r.status_code, r.text) == (410, "channel_is_archived")


# -- running it ----------------------------------------------------------------------------------------
def test_rollbackctl_sim_command_serves_and_refuses_a_taken_port(etcd_server, sim_server, tmp_path):
    exe = str(Path(sys.executable).parent / "rollbackctl")
    env = {"ROLLBACKCTL_ETCD_ENDPOINTS": etcd_server.endpoint, "ROLLBACKCTL_TRADING_CORE_TOKEN": "t"}
    # the port the session simulator holds: a clear refusal, exit code 5
    r = subprocess.run([exe, "sim", "--port", str(sim_server.port)], env={**os.environ, **env},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 5 and "already taken" in r.stderr
    port = procs.free_port()
    p = procs.spawn([exe, "sim", "--port", str(port)], tmp_path / "sim.log", env=env)
    try:
        deadline = time.monotonic() + 20
        while True:  # start-up of another process: poll until it answers
            try:
                r2 = httpx.get(f"http://127.0.0.1:{port}/v1/health", headers={"Authorization": "Bearer t"}, timeout=1)
                break
            except httpx.TransportError:
                assert p.poll() is None, (tmp_path / "sim.log").read_text()
                assert time.monotonic() < deadline, "rollbackctl sim did not answer"
                time.sleep(0.02)
        assert r2.status_code == 200 and HealthSnapshot.model_validate(r2.json())
    finally:
        procs.stop(p.pid)
    # `rollbackctl dev up` starts it too
    assert "sim" in [c.name for c in devstack.COMPONENTS]


def test_dev_up_refuses_a_taken_simulator_port_and_records_nothing(sim_server, tmp_path, monkeypatch):
    """`rollbackctl dev up` checks the simulator's port first and waits until it listens: a taken port is a
    clear error, and no pid file claims a simulator that is not there."""
    monkeypatch.setenv("ROLLBACKCTL_DEV_DIR", str(tmp_path / "dev"))
    monkeypatch.setenv("ROLLBACKCTL_TRADING_CORE_URL", f"http://127.0.0.1:{sim_server.port}")
    with pytest.raises(procs.StackError, match=f"127.0.0.1:{sim_server.port} for simulator is already taken"):
        devstack.up(only=["sim"], out=lambda *_: None)
    assert not devstack.Stack().pidfile("sim").exists()


def test_extra_listed_symbols_take_per_symbol_actions_but_are_not_traded():
    """ROLLBACKCTL_SIM_EXTRA_SYMBOLS: S001.. are listed (one P0 incident per symbol, bench/incidents.py),
    not traded by the market model."""
    from simulator.core import ActionError, Simulator

    sim = Simulator(None, extra_symbols=200)
    act = lambda *a: asyncio.run(sim.act(*a))  # noqa: E731
    answer, _ = act("pause_symbol_hl_routing", {"symbol": "S200"}, "k1")
    assert answer["status"] == "done" and "hl_routing_paused:S200" in sim.controls.listing()
    assert sim.status()["listed_symbols"] == 203
    with pytest.raises(ActionError, match="unknown symbol 'S201'.*S001..S200"):
        act("pause_symbol_hl_routing", {"symbol": "S201"}, "k2")
    with pytest.raises(ActionError, match="unknown symbol 'S001'; traded: BTC, ETH, SOL"):
        sim.order({"symbol": "S001", "notional_usd": 100})
    with pytest.raises(ActionError, match="unknown symbol 'S001'"):
        asyncio.run(Simulator(None).act("pause_symbol_hl_routing", {"symbol": "S001"}, "k3"))
