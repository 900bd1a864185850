"""Stand-ins for the trading-core activities, registered under the real activity names, and paging
through the real activities into the strict sink models.

Used only where a test is about workflow logic (STYLE.md); end-to-end tests use the simulator.
Each stand-in records its calls, and the health it serves can be changed by the test.

Paging is not stubbed: `paging.page`, `paging.chat` and `paging.change_event` are the production
activities (activities/paging.py) whose HTTP client is wired in-process to the simulator's sink models
(simulator/sinks.py: PagerDuty's alert, dedup, acknowledge/resolve and notification rules, Slack's
payload and escaping rules), and the pager workflow sends them. So `si.pd.notifications` is what
PagerDuty would have notified. Only the rate limits are off here: they are wall-clock windows, and
under the time-skipping server workflow time runs ahead of the wall clock (the simulator's sinks keep
them, tested on the dev server).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any

import httpx
from pydantic import SecretStr
from temporalio import activity

from activities.pager_client import PagerClient
from contracts.paging import PagerLimits
from activities.paging import ChatInput, ChatResult, PageInput, PageResult, PagingActivities
from manual import escalation
from simulator.sinks import PagerDutySink, SlackSink

SINK_KEYS = [uuid.uuid4().hex for _ in escalation.LEVELS]  # 32 characters, as PagerDuty's integration keys
SINK_HOOKS = [f"/slack/T0/B{lv.level}/{uuid.uuid4().hex[:12]}" for lv in escalation.LEVELS]
SINK_BASE = "http://127.0.0.1:9"  # never contacted: the transport is in-process

HEALTHY: dict[str, Any] = {
    "error_rate": 0.002, "hl_connected": True, "hl_disconnected_for_s": 0.0, "hl_latency_ms": 80.0,
    "hl_margin_ratio": 3.0, "hedge_margin_ratio": 3.5, "liquidation_detection_failures": 0,
    "liquidation_execution_failure_rate": 0.0, "hot_wallet_usd": 2_000_000.0, "order_price_deviation": {"BTC": 0.001},
    "asset_mismatch_ratio": 0.0, "volatility_pct": {"BTC": 1.0}, "internal_net_exposure_usd": {"BTC": 120_000.0},
    "daily_net_pnl_usd": 1000.0, "risk_reserve_usd": 900_000.0, "hl_routing_failures": 0, "maintenance": False,
    "internal_orders_per_min": 24.0,  # orders flow on the internal path (0: paused; absent: not reported)
}


def server_time() -> float:
    """The Temporal server's time of this activity attempt (under time skipping: the skipped time)."""
    return activity.info().current_attempt_scheduled_time.timestamp()


class StandIns:
    def __init__(self, real_limits: bool = False) -> None:
        self.health: dict[str, Any] = dict(HEALTHY)
        self.actions: list[dict] = []
        self.pages: list[dict] = []
        self.chats: list[dict] = []
        self.health_reads = 0
        if real_limits:  # PagerDuty's 120/min and Slack's 1/s, counted in the server's (skipped) time
            self.pd = PagerDutySink(events_per_min=120, known_keys=set(SINK_KEYS), clock=server_time)
            self.slack = SlackSink(per_s=1.0, clock=server_time)
        else:
            self.pd = PagerDutySink(events_per_min=None, known_keys=set(SINK_KEYS))
            self.slack = SlackSink(per_s=None)
        self.paging = PagingActivities(
            httpx.AsyncClient(transport=httpx.MockTransport(self._sinks)),
            pagerduty_url=SecretStr(f"{SINK_BASE}/v2/enqueue"), routing_keys=[SecretStr(k) for k in SINK_KEYS],
            slack_webhooks=[SecretStr(SINK_BASE + h) for h in SINK_HOOKS])
        # Budgets off too unless `real_limits` (the sinks above keep none then): the pager's budget and storms
        # are tested with them (tests/test_pager.py), and on the dev server against the simulator's sinks.
        self.pager = PagerClient(PagerLimits() if real_limits else PagerLimits(pagerduty_per_min=10_000, slack_per_s=100))
        # GET /v1/risk/exposure (activities.trading_core.ExposureReport as JSON); a test may skew
        # `net_exposure_usd` to make the risk-calc precision check fail.
        self.exposure: dict[str, Any] = {
            "as_of": "2026-01-01T00:00:00Z",
            "symbols": {"BTC": {"mark_price": 60_000.0, "net_exposure_usd": -120_000.0,
                                "positions": [{"account": "u1", "size": 1.5, "entry_price": 59_000.0},
                                              {"account": "u2", "size": 0.5, "entry_price": 61_000.0}]}},
        }

    @activity.defn(name="core.read_health")
    async def read_health(self, inp: dict) -> dict:
        self.health_reads += 1
        return {**self.health, "as_of": datetime.now(timezone.utc).isoformat()}

    @activity.defn(name="core.read_exposure")
    async def read_exposure(self) -> dict:
        return {**self.exposure, "as_of": datetime.now(timezone.utc).isoformat()}

    @activity.defn(name="core.action")
    async def action(self, inp: dict) -> dict:
        if all(a["idempotency_key"] != inp["idempotency_key"] for a in self.actions):
            self.actions.append(inp)
        return {"action": inp["action"], "idempotency_key": inp["idempotency_key"], "status": "ok"}

    @activity.defn(name="core.wait_applied")
    async def wait_applied(self, inp: dict) -> dict:
        return {"revision": inp["revision"], "switches": {}}

    def _sinks(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        path = request.url.path
        if path == "/v2/enqueue":
            code, answer = self.pd.receive(body, len(request.content))
            return httpx.Response(code, json=answer)
        if path == "/v2/change/enqueue":
            code, answer = self.pd.receive_change(body, len(request.content))
            return httpx.Response(code, json=answer)
        code, text, headers = self.slack.receive(path, body)
        return httpx.Response(code, text=text, headers=headers)

    @activity.defn(name="paging.page")
    async def page(self, inp: PageInput) -> PageResult:
        self.pages.append(inp.model_dump())
        return await self.paging.page(inp)

    @activity.defn(name="paging.chat")
    async def chat(self, inp: ChatInput) -> ChatResult:
        self.chats.append(inp.model_dump())
        return await self.paging.chat(inp)

    def notifications(self, *, urgent: bool | None = None) -> list[dict]:
        """What PagerDuty would have notified a person of (urgent: high-urgency only)."""
        return [n for n in self.pd.notifications if urgent is None or (n["urgency"] == "high") == urgent]

    def open_alerts(self) -> list[dict]:
        return [a for a in self.pd.alerts.values() if a["status"] != "resolved"]

    @activity.defn(name="ops.pause_canaries")
    async def pause_canaries(self, wid: str) -> str:
        return "no canary running"

    def methods(self) -> list:
        return [self.read_health, self.read_exposure, self.action, self.wait_applied, self.page, self.chat,
                self.paging.change_event, self.pager.submit, self.pause_canaries]
