"""The simulator's state: switches followed from etcd, the market, faults, actions, paging sinks.

Single event loop, no threads: every handler runs to completion between awaits, so checking an
Idempotency-Key and recording its action cannot interleave with another request.
"""

from __future__ import annotations

import asyncio
import os
import logging
import random
import time
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contracts.trading_core import ACTIONS, ExposureReport, HealthSnapshot
from manual import switches as matrix
from core.etcd import Etcd
from simulator.faults import ApiFaults, Faults
from simulator.model import ORDERS_PER_S, RECONCILIATION_S, SYMBOLS, Controls, Market, internalization_block, route_order
from simulator.sinks import PagerDutySink, SlackSink
from core.watcher import SwitchUpdate, SwitchWatcher

log = logging.getLogger("simulator")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime) -> str:
    return dt.isoformat(timespec="microseconds").replace("+00:00", "Z")


class PagingConfig(BaseModel):
    """How strict the PagerDuty and Slack sinks are (the real services' limits by default)."""

    model_config = ConfigDict(extra="forbid")

    pagerduty_events_per_min: int | None = Field(default=120, ge=1)
    slack_per_s: float | None = Field(default=1.0, gt=0)
    pagerduty_known_keys: list[str] | None = None
    webhook_url: str | None = None
    webhook_secrets: list[str] = []
    slack_broken: dict[str, str] = {}  # webhook path -> permanent error (channel_is_archived, no_service, ...)

    @field_validator("webhook_url")
    @classmethod
    def _loopback(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from urllib.parse import urlparse

        host = urlparse(v).hostname or ""
        if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
            raise ValueError("the simulator posts webhooks to loopback addresses only")
        return v

    @field_validator("slack_broken")
    @classmethod
    def _errors(cls, v: dict[str, str]) -> dict[str, str]:
        from simulator.sinks import SLACK_PERMANENT

        bad = [e for e in v.values() if e not in SLACK_PERMANENT]
        if bad:
            raise ValueError(f"unknown Slack error {bad[0]!r}; one of {', '.join(SLACK_PERMANENT)}")
        return v


IDEMPOTENCY_TTL_S = 24 * 3600.0  # a performed action's answer is replayed for a repeated key this long


class ActionError(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers or {}


def extra_symbol_names(n: int) -> list[str]:
    """Listed symbols beyond the traded ones (ROLLBACKCTL_SIM_EXTRA_SYMBOLS): S001, S002, ..."""
    return [f"S{i:03d}" for i in range(1, n + 1)]


class Simulator:
    def __init__(self, etcd: Etcd | None, prefix: str = "/perps/", *, seed: int = 7, tick_s: float = 0.25,
                 extra_symbols: int = 0, paging: PagingConfig | None = None):
        self.etcd = etcd
        self.idempotency_ttl_s = IDEMPOTENCY_TTL_S
        self.paging_defaults = paging or PagingConfig()
        self.paging = self.paging_defaults
        # Listed symbols: the traded ones (the market model's) and any extra ones, which per-symbol
        # actions and faults take but the synthetic order flow does not trade.
        self.extra_symbols = extra_symbol_names(extra_symbols)
        self.listed = frozenset(SYMBOLS) | frozenset(self.extra_symbols)
        self.prefix = prefix
        self.seed = seed
        self.tick_s = tick_s
        self.started_at = utcnow()
        self.watcher: SwitchWatcher | None = None
        self._follow_task: asyncio.Task | None = None
        self._ticker: asyncio.Task | None = None
        self._follow_lock = asyncio.Lock()
        self._init_state(seed)

    def _init_state(self, seed: int) -> None:
        self.seed = seed
        self.market = Market(seed)
        self.controls = Controls()
        self.faults = Faults()
        self.exposure_errors: dict[str, float] = {}
        self.api_rng = random.Random(seed + 1)
        self.applied: dict[str, dict[str, Any]] = {}
        self.applied_revision = 0
        self.followed_at = utcnow()
        self.actions: list[dict[str, Any]] = []
        self.idempotency: dict[str, dict[str, Any]] = {}
        self.in_flight: set[str] = set()
        self.paging = getattr(self, "paging_defaults", None) or PagingConfig()  # a reset restores the defaults
        self.configure_paging(self.paging)
        self.hl_down_since: float | None = None
        self._last_tick = time.monotonic()
        self._release = asyncio.Event()

    def configure_paging(self, cfg: PagingConfig) -> None:
        """New sinks with this strictness (everything they received is forgotten)."""
        self.paging = cfg
        self.pagerduty = PagerDutySink(events_per_min=cfg.pagerduty_events_per_min,
                                       known_keys=set(cfg.pagerduty_known_keys) if cfg.pagerduty_known_keys else None,
                                       webhook_url=cfg.webhook_url, webhook_secrets=list(cfg.webhook_secrets))
        self.slack = SlackSink(per_s=cfg.slack_per_s)
        self.slack.broken = dict(cfg.slack_broken)

    async def post_webhook(self, hook: dict[str, Any]) -> None:
        """Deliver a v3 webhook as PagerDuty does: one POST, signed, a 2xx expected within 5 s (its status
        and any error are recorded on the hook; PagerDuty would retry a 5xx/429/timeout, the sink does not)."""
        import httpx

        if not hook.get("url"):
            hook["error"] = "no webhook subscription (ROLLBACKCTL_SIM_PAGERDUTY_WEBHOOK_URL or /sim/paging/config)"
            return
        headers = {"Content-Type": "application/json", "User-Agent": "PagerDuty-Webhook/V3.0",
                   "X-Webhook-Id": hook["id"]}
        if hook.get("signature"):
            headers["X-PagerDuty-Signature"] = hook["signature"]
        try:
            async with httpx.AsyncClient(timeout=5.0) as c:
                r = await c.post(hook["url"], content=hook["body"], headers=headers)
            hook["status"] = r.status_code
        except httpx.HTTPError as e:
            hook["error"] = f"{type(e).__name__}: {e}"

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick_loop(), name="sim-ticker")
        if self.etcd is not None:
            # in the background: the API answers (with defaults) while etcd is still coming up
            self._follow_task = asyncio.create_task(self.follow(self.prefix), name="sim-follow")

    async def stop(self) -> None:
        self._release.set()
        for t in (self._ticker, self._follow_task):
            if t is not None:
                t.cancel()
                try:
                    await t
                except (asyncio.CancelledError, Exception):
                    pass
        if self.watcher is not None:
            await self.watcher.stop()
        if self.etcd is not None:
            await self.etcd.close()

    async def reset(self, prefix: str | None = None, seed: int | None = None) -> None:
        """Forget everything (faults, actions, pages, market) and follow `prefix` (tests: one per test)."""
        self._release.set()
        if self._follow_task is not None and not self._follow_task.done():
            self._follow_task.cancel()
        self._init_state(self.seed if seed is None else seed)
        if self.etcd is not None:
            await self.follow(prefix or self.prefix)
        elif prefix:
            self.prefix = prefix

    async def follow(self, prefix: str) -> None:
        """(Re)start the switch watcher under `prefix`; returns once the current values are loaded."""
        async with self._follow_lock:
            if self.watcher is not None:
                await self.watcher.stop()
            self.prefix, self.applied, self.applied_revision = prefix, {}, 0
            self.followed_at = utcnow()
            # ROLLBACKCTL_CONSUMER_ID: this instance's receipt (`rollbackctl consumers`); unset: none
            w = SwitchWatcher(self.etcd, prefix, consumer_id=os.environ.get("ROLLBACKCTL_CONSUMER_ID") or None)
            w.on_change = lambda upd: self._on_switch(w, upd)
            self.watcher = w
            await w.start()
            now = utcnow()
            for name, value in w.values.items():
                rev = w.revisions.get(name, 0)
                if self.applied.get(name, {}).get("revision", -1) < rev:
                    self.applied[name] = {"value": self._parse(name, value), "revision": rev, "applied_at": now}
            self.applied_revision = max(self.applied_revision, w.revision)
            log.info("following switches under %s from revision %s", prefix, w.revision)

    @staticmethod
    def _parse(name: str, value: Any) -> Any:
        sw = matrix.BY_NAME.get(name)
        if sw is None:
            return value
        try:
            return sw.parse(value)
        except ValueError:
            log.warning("switch %s: value %r refused; keeping the default", name, value)
            return sw.default

    def _on_switch(self, w: SwitchWatcher, upd: SwitchUpdate) -> None:
        if w is not self.watcher:
            return  # a late event of a watcher already replaced
        now = utcnow()
        if upd.value is None and not upd.record:  # deleted: back to the default
            sw = matrix.BY_NAME.get(upd.name)
            self.applied[upd.name] = {"value": sw.default if sw else None, "revision": upd.revision, "applied_at": now,
                                      "deleted": True}
        else:
            self.applied[upd.name] = {"value": self._parse(upd.name, upd.value), "revision": upd.revision,
                                      "applied_at": now}
        self.applied_revision = max(self.applied_revision, upd.revision)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                self.step()
            except Exception:  # the market must keep moving
                log.exception("simulation tick failed")

    def step(self) -> None:
        now = time.monotonic()
        dt, self._last_tick = now - self._last_tick, now
        self.market.tick(dt, self.values(), self.controls, self.effective())

    # -- switches --------------------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        v = matrix.defaults()
        v.update({k: a["value"] for k, a in self.applied.items()})
        return v

    @property
    def maintenance(self) -> bool:
        return not self.values().get("global_api_enabled", True)

    def applied_config(self) -> dict[str, Any]:
        out = {}
        for s in matrix.SWITCHES:
            a = self.applied.get(s.name)
            out[s.name] = {"value": a["value"], "revision": a["revision"], "applied_at": iso(a["applied_at"])} if a \
                else {"value": s.default, "revision": 0, "applied_at": iso(self.followed_at)}
        for name, a in self.applied.items():
            if name not in out:
                out[name] = {"value": a["value"], "revision": a["revision"], "applied_at": iso(a["applied_at"])}
        return {"revision": self.applied_revision, "switches": out, "maintenance": self.maintenance,
                "as_of": iso(utcnow())}

    # -- metrics -----------------------------------------------------------------------------------------
    def track_hl(self, connected: bool) -> None:
        if connected:
            self.hl_down_since = None
        elif self.hl_down_since is None:
            self.hl_down_since = time.monotonic()

    def effective(self) -> dict[str, Any]:
        """Simulated metrics with fault overrides; HL connectivity and its down-clock measured here."""
        base = self.market.base_metrics()
        base["hl_connected"] = True
        eff = self.faults.overlay(base)
        connected = bool(eff["hl_connected"])
        self.track_hl(connected)
        if "hl_disconnected_for_s" not in self.faults.metrics:
            eff["hl_disconnected_for_s"] = 0.0 if connected else round(time.monotonic() - self.hl_down_since, 3)
        return eff

    def health(self) -> dict[str, Any]:
        eff = self.effective()
        body = {
            "error_rate": round(eff["error_rate"], 6),
            "hl_connected": bool(eff["hl_connected"]),
            "hl_disconnected_for_s": float(eff["hl_disconnected_for_s"]),
            "hl_latency_ms": round(eff["hl_latency_ms"], 1),
            "hl_margin_ratio": round(eff["hl_margin_ratio"], 4),
            "hedge_margin_ratio": round(eff["hedge_margin_ratio"], 4),
            "liquidation_detection_failures": int(eff["liquidation_detection_failures"]),
            "liquidation_execution_failure_rate": round(eff["liquidation_execution_failure_rate"], 6),
            "hot_wallet_usd": round(eff["hot_wallet_usd"], 2),
            "order_price_deviation": {k: round(v, 6) for k, v in eff["order_price_deviation"].items()},
            "asset_mismatch_ratio": round(eff["asset_mismatch_ratio"], 8),
            "volatility_pct": {k: round(v, 4) for k, v in eff["volatility_pct"].items()},
            "internal_net_exposure_usd": {k: round(v, 2) for k, v in eff["internal_net_exposure_usd"].items()},
            "daily_net_pnl_usd": round(eff["daily_net_pnl_usd"], 2),
            "risk_reserve_usd": round(eff["risk_reserve_usd"], 2),
            "hl_routing_failures": int(eff["hl_routing_failures"]),
            "maintenance": self.maintenance,
            "as_of": iso(utcnow()),
            "controls": self.controls.listing(),
            "internal_orders_per_min": self.internal_orders_per_min(eff),
        }
        HealthSnapshot.model_validate(body)  # the simulator keeps its own contract
        return body

    def internal_orders_per_min(self, eff: dict[str, Any]) -> float:
        """The order model's rate on the internal path now (a real core reports its realized rolling rate):
        0 while trading or new orders are paused, or where a symbol may not be internalized."""
        c = self.controls
        if c.trading_paused or c.new_orders_paused:
            return 0.0
        sw, share = self.values(), 0.0
        for s in SYMBOLS:
            if internalization_block(sw, s, 0.0, eff, self.market.exposure_usd(s), 0.0) is not None:
                continue
            share += 1.0 if s in c.hl_routing_paused else min(max(float(sw.get("betting_traffic_pct", 0)), 0.0), 100.0) / 100
        return round(ORDERS_PER_S * 60 * share, 2)

    def exposure(self) -> dict[str, Any]:
        sw, eff = self.values(), self.effective()
        symbols = {}
        for s in SYMBOLS:
            m = self.market
            mark = m.marks[s]
            positions = [{"account": p.account, "size": p.size, "entry_price": p.entry_price}
                         for p in m.positions[s] if p.size != 0]
            net = m.exposure_usd(s)
            # the hedge offsets part of the exchange's position (-user size): hedge = fraction * user size
            planned = m.hedge_fraction(sw, net) * m.user_net_size(s)
            hedging = bool(sw.get("hedge_enabled")) and not sw.get("hedge_dry_run")
            open_to_internal = internalization_block(sw, s, 0.0, eff, net, 0.0) is None and (
                float(sw.get("betting_traffic_pct", 0)) > 0 or s in self.controls.hl_routing_paused)
            symbols[s] = {
                "mark_price": mark,
                "positions": positions,
                "net_exposure_usd": net + self.exposure_errors.get(s, 0.0),
                "hedge_size": planned if hedging else 0.0,
                "hedge_planned_size": planned,
                "internalizing": open_to_internal and not self.controls.trading_paused
                and not self.controls.new_orders_paused,
            }
        body = {"as_of": iso(utcnow()), "maintenance": self.maintenance, "symbols": symbols}
        ExposureReport.model_validate(body)
        return body

    # -- faults --------------------------------------------------------------------------------------------
    def set_faults(self, body: dict[str, Any]) -> None:
        body = dict(body)
        errs = body.pop("exposure_error_usd", None)
        self.faults.merge(body)
        if errs is not None:
            if not isinstance(errs, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                     for v in errs.values()):
                raise ValueError("exposure_error_usd: expected an object symbol -> USD")
            self.exposure_errors.update({k: float(v) for k, v in errs.items()})
        self.track_hl(bool(self.effective()["hl_connected"]))

    def clear_faults(self) -> None:
        self.faults.clear()
        self.exposure_errors = {}
        self.release_hanging()
        self.track_hl(True)

    def faults_view(self) -> dict[str, Any]:
        d = self.faults.as_dict()
        if self.exposure_errors:
            d["exposure_error_usd"] = dict(self.exposure_errors)
        return d

    def release_hanging(self) -> None:
        self._release.set()
        self._release = asyncio.Event()

    @property
    def release_event(self) -> asyncio.Event:
        return self._release

    def api_fault_for(self, path: str) -> ApiFaults | None:
        """The API faults striking this request, if any (counts down `api_fault_count`)."""
        f = self.faults.api
        if not f.active() or not f.matches(path):
            return None
        if f.api_fault_count is not None:
            if f.api_fault_count <= 1:
                self.faults.clear_api()
            else:
                self.faults.api = f.model_copy(update={"api_fault_count": f.api_fault_count - 1})
        return f

    # -- actions ---------------------------------------------------------------------------------------
    async def act(self, name: str, body: Any, key: str | None) -> tuple[dict[str, Any], bool]:
        """Perform an action once per Idempotency-Key. Returns (answer, replayed). Raises ActionError.

        As the IETF idempotency-key draft has it: a key whose first request is still being processed
        answers 409 (`in_flight`, retry later); a key reused with another action or body 422; a
        performed action's 2xx answer is stored and returned for a repeated key for IDEMPOTENCY_TTL_S
        (24 h, longer than any retry horizon of the automation: 1 h); errors are not stored (a retry
        runs again)."""
        if key and key in self.in_flight:
            raise ActionError(409, "in_flight", f"a request with Idempotency-Key {key!r} is still being processed; "
                                                "retry later", {"Retry-After": "1"})
        self._expire_keys()
        if not key:
            raise ActionError(400, "bad_request", "the Idempotency-Key header is required on actions")
        if len(key) > 255:
            raise ActionError(400, "bad_request", "Idempotency-Key is longer than 255 characters")
        if not isinstance(body, dict):
            raise ActionError(400, "bad_request", "the body must be a JSON object")
        prev = self.idempotency.get(key)
        if prev is not None:
            if prev["action"] != name or prev["body"] != body:
                raise ActionError(422, "idempotency_key_reused",
                                  f"Idempotency-Key {key!r} was used for {prev['action']} with another body")
            return prev["answer"], True
        if name not in ACTIONS:
            raise ActionError(404, "unknown_action", f"no action {name!r}; known: {', '.join(ACTIONS)}")
        delay = self.faults.api.api_action_ms
        if delay:
            self.in_flight.add(key)
            try:
                await asyncio.sleep(delay / 1000.0)
            finally:
                self.in_flight.discard(key)
        status, result = self._perform(name, body)
        at = utcnow()
        answer = {"action": name, "idempotency_key": key, "status": status, "result": result, "at": iso(at)}
        self.idempotency[key] = {"action": name, "body": body, "answer": answer, "stored": time.monotonic()}
        self.actions.append({"action": name, "body": body, "idempotency_key": key, "at": iso(at)})
        log.info("action %s %s -> %s", name, body, status)
        return answer, False

    def _expire_keys(self) -> None:
        limit = time.monotonic() - self.idempotency_ttl_s
        for k in [k for k, v in self.idempotency.items() if v.get("stored", 0) < limit]:
            del self.idempotency[k]

    def _symbol(self, body: dict[str, Any], traded: bool = False) -> str:
        """The body's symbol: a listed one (`traded`: one the market model trades, for orders)."""
        s = body.get("symbol")
        if not isinstance(s, str) or not s:
            raise ActionError(400, "bad_request", "field 'symbol' is required (a ticker such as BTC)")
        if s not in (SYMBOLS if traded else self.listed):
            listed = ", ".join(SYMBOLS) + (f", {self.extra_symbols[0]}..{self.extra_symbols[-1]}"
                                          if self.extra_symbols and not traded else "")
            raise ActionError(400, "bad_request", f"field 'symbol': unknown symbol {s!r}; "
                                                  f"{'traded' if traded else 'listed'}: {listed}")
        return s

    def _perform(self, name: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        c = self.controls

        def flag(attr: str, on: bool) -> str:
            was = getattr(c, attr)
            setattr(c, attr, on)
            return "noop" if was == on else "done"

        if name in ("pause_new_orders", "resume_new_orders"):
            st = flag("new_orders_paused", name.startswith("pause"))
        elif name in ("pause_hl_opens", "resume_hl_opens"):
            st = flag("hl_opens_paused", name.startswith("pause"))
        elif name in ("pause_trading", "resume_trading"):
            st = flag("trading_paused", name.startswith("pause"))
        elif name == "pause_symbol_hl_routing":
            s = self._symbol(body)
            st = "noop" if s in c.hl_routing_paused else "done"
            c.hl_routing_paused.add(s)
        elif name == "resume_symbol_hl_routing":
            s = self._symbol(body)
            st = "done" if s in c.hl_routing_paused else "noop"
            c.hl_routing_paused.discard(s)
        elif name == "pause_large_withdrawals":
            above = body.get("above_usd")
            if isinstance(above, bool) or not isinstance(above, (int, float)) or above <= 0:
                raise ActionError(400, "bad_request", f"field 'above_usd': expected a positive number, got {above!r}")
            st = "noop" if c.large_withdrawals_above_usd == float(above) else "done"
            c.large_withdrawals_above_usd = float(above)
        elif name == "resume_large_withdrawals":
            st = "noop" if c.large_withdrawals_above_usd is None else "done"
            c.large_withdrawals_above_usd = None
        elif name == "start_reconciliation":
            rid = self.market.next_id("rec")
            c.reconciliations[rid] = RECONCILIATION_S
            return "started", {"reconciliation_id": rid, "expected_s": RECONCILIATION_S, "controls": c.listing()}
        else:  # pragma: no cover - ACTIONS and this list are kept together
            raise ActionError(404, "unknown_action", name)
        return st, {"controls": c.listing()}

    # -- trading routes ------------------------------------------------------------------------------------
    def order(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ActionError(400, "bad_request", "the body must be a JSON object")
        s = self._symbol(body, traded=True)
        notional = body.get("notional_usd")
        if isinstance(notional, bool) or not isinstance(notional, (int, float)) or notional <= 0:
            raise ActionError(400, "bad_request", "field 'notional_usd': expected a positive number")
        side_s = body.get("side", "buy")
        if side_s not in ("buy", "sell"):
            raise ActionError(400, "bad_request", "field 'side': expected buy or sell")
        side = 1 if side_s == "buy" else -1
        eff, m = self.effective(), self.market
        d = route_order(self.values(), self.controls, s, float(notional), side, eff, m.exposure_usd(s),
                        self.api_rng.random())
        m.orders[d.route] += 1
        status = {"internal": "filled", "hl": "filled", "rejected": "rejected"}[d.route]
        if d.route == "internal":
            acct = m.positions[s][self.api_rng.randrange(len(m.positions[s]))]
            acct.add(side * float(notional) / m.marks[s], m.marks[s])
        elif d.route == "hl" and not eff["hl_connected"]:
            m.orders["hl_failed"] += 1
            m.hl_routing_failures += 1
            status, d.reason = "failed", "HL unreachable"
        return {"order_id": m.next_id("ord"), "symbol": s, "side": side_s, "notional_usd": notional,
                "route": d.route, "status": status, "reason": d.reason}

    def withdraw(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ActionError(400, "bad_request", "the body must be a JSON object")
        amt = body.get("amount_usd")
        if isinstance(amt, bool) or not isinstance(amt, (int, float)) or amt <= 0:
            raise ActionError(400, "bad_request", "field 'amount_usd': expected a positive number")
        wid = self.market.next_id("wd")
        above = self.controls.large_withdrawals_above_usd
        eff = self.effective()
        if not self.values().get("withdrawal_enabled", True):
            return {"withdrawal_id": wid, "status": "rejected", "reason": "withdrawals disabled"}
        if above is not None and amt > above:
            return {"withdrawal_id": wid, "status": "held", "reason": f"large withdrawals (>{above:g}) paused"}
        if amt > eff["hot_wallet_usd"]:
            return {"withdrawal_id": wid, "status": "queued", "reason": "hot wallet below the amount"}
        if "hot_wallet_usd" not in self.faults.metrics:
            w = self.market.walks["hot_wallet_usd"]
            w.value = max(w.lo, w.value - float(amt))
        return {"withdrawal_id": wid, "status": "sent", "reason": ""}

    def status(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "revision": self.applied_revision,
            "watching": self.watcher is not None and self.watcher.ready.is_set(),
            "seed": self.seed,
            "started_at": iso(self.started_at),
            "maintenance": self.maintenance,
            "orders": dict(self.market.orders),
            "listed_symbols": len(self.listed),
            "actions_in_flight": len(self.in_flight),
        }
