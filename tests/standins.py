"""Stand-ins for the trading-core and paging activities, registered under the real activity names.

Used only where a test is about workflow logic (STYLE.md); end-to-end tests use the simulator.
Each stand-in records its calls, and the health it serves can be changed by the test.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from temporalio import activity

HEALTHY: dict[str, Any] = {
    "error_rate": 0.002, "hl_connected": True, "hl_disconnected_for_s": 0.0, "hl_latency_ms": 80.0,
    "hl_margin_ratio": 3.0, "hedge_margin_ratio": 3.5, "liquidation_detection_failures": 0,
    "liquidation_execution_failure_rate": 0.0, "hot_wallet_usd": 2_000_000.0, "order_price_deviation": {"BTC": 0.001},
    "asset_mismatch_ratio": 0.0, "volatility_pct": {"BTC": 1.0}, "internal_net_exposure_usd": {"BTC": 120_000.0},
    "daily_net_pnl_usd": 1000.0, "risk_reserve_usd": 900_000.0, "hl_routing_failures": 0, "maintenance": False,
}


class StandIns:
    def __init__(self) -> None:
        self.health: dict[str, Any] = dict(HEALTHY)
        self.actions: list[dict] = []
        self.pages: list[dict] = []
        self.chats: list[dict] = []
        self.health_reads = 0
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

    @activity.defn(name="paging.page")
    async def page(self, inp: dict) -> dict:
        self.pages.append(inp)
        return {"status": "ok"}

    @activity.defn(name="paging.chat")
    async def chat(self, inp: dict) -> dict:
        self.chats.append(inp)
        return {"ok": True}

    @activity.defn(name="ops.pause_canaries")
    async def pause_canaries(self, wid: str) -> str:
        return "no canary running"

    def methods(self) -> list:
        return [self.read_health, self.read_exposure, self.action, self.wait_applied, self.page, self.chat, self.pause_canaries]
