"""The trading core: its HTTP contract (as pydantic models) and the activities that call it.

The contract is documented in docs/trading-core-api.md; the simulator (simulator) serves it
and validates its own answers against these models.

Error classes, raised as `ApplicationError(type=...)` (the `type` names are the constants below;
a workflow's RetryPolicy lists `NON_RETRYABLE`):

| what the core did                              | type              | retried? |
|------------------------------------------------|-------------------|----------|
| 401 / 403 (token refused)                      | Unauthorized      | no       |
| other 4xx (bad body, unknown action, key reuse)| BadRequest        | no       |
| 2xx with a body that breaks the contract       | SchemaViolation   | no       |
| 503 `{"error": "maintenance"}` (Level 3)       | Maintenance       | no       |
| 409 (the Idempotency-Key's request in flight)  | CoreUnavailable   | yes      |
| 408 / 429, other 5xx, other 503, refused conn. | CoreUnavailable   | yes      |

Error bodies are the contract's `{"error", "detail"}` or RFC 9457 problem documents
(`application/problem+json`; the error is the last segment of `type`, e.g. `.../problems/maintenance`);
a Retry-After header sets the next attempt's delay.
| no answer within the timeout                   | CoreTimeout       | yes      |
| wait_applied: revision not applied in time     | NotApplied        | yes      |

408 and 429 are 4xx but say "try again later" (HTTP semantics), so they are retried.
Every action carries an `Idempotency-Key` (derived by the workflow from its id and step): the core
answers a repeated key with the first result and acts once, so a retried activity never acts twice.
The bearer token is read from a SecretStr at request time and never logged or put in an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
from datetime import datetime, timedelta
from typing import Any

import httpx
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.settings import TradingCoreSettings

log = logging.getLogger(__name__)

# -- error types ---------------------------------------------------------------------------------
BAD_REQUEST = "BadRequest"
UNAUTHORIZED = "Unauthorized"
SCHEMA_VIOLATION = "SchemaViolation"
MAINTENANCE = "Maintenance"
CORE_UNAVAILABLE = "CoreUnavailable"
CORE_TIMEOUT = "CoreTimeout"
NOT_APPLIED = "NotApplied"

NON_RETRYABLE = [BAD_REQUEST, UNAUTHORIZED, SCHEMA_VIOLATION, MAINTENANCE]
RETRYABLE = [CORE_UNAVAILABLE, CORE_TIMEOUT, NOT_APPLIED]

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"

# -- the contract: actions -------------------------------------------------------------------------
# name -> body fields it requires. The manual's immediate responses (P0 table) and Degradation Level 2.
ACTIONS: dict[str, tuple[str, ...]] = {
    "pause_new_orders": (),
    "resume_new_orders": (),
    "pause_hl_opens": (),
    "resume_hl_opens": (),
    "pause_symbol_hl_routing": ("symbol",),
    "resume_symbol_hl_routing": ("symbol",),
    "pause_large_withdrawals": ("above_usd",),
    "resume_large_withdrawals": (),
    "pause_trading": (),
    "resume_trading": (),
    "start_reconciliation": (),
}

# Paths of the contract.
HEALTH_PATH = "/v1/health"
EXPOSURE_PATH = "/v1/risk/exposure"
APPLIED_PATH = "/v1/config/applied"
ACTION_PATH = "/v1/actions/{action}"


# -- the contract: models ----------------------------------------------------------------------------
class HealthSnapshot(BaseModel):
    """GET /v1/health. Field names are part of the contract: other tools read them."""

    # NaN / Infinity are not JSON numbers: a NaN margin ratio compares false with every P0 threshold
    # and would hide the alert, so such a body is a SchemaViolation naming the field.
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    error_rate: float = Field(ge=0, le=1, description="rolling share of failed API requests, 0..1")
    hl_connected: bool = Field(description="WS and REST to Hyperliquid both up")
    hl_disconnected_for_s: float = Field(ge=0, description="seconds since HL went down; 0 while connected")
    hl_latency_ms: float = Field(ge=0)
    hl_margin_ratio: float = Field(ge=0, description="exchange's HL account equity / maintenance; 1.5 = 150%")
    hedge_margin_ratio: float = Field(ge=0, description="hedge account equity / maintenance; 1.5 = 150%")
    liquidation_detection_failures: int = Field(ge=0, description="consecutive failed detection passes")
    liquidation_execution_failure_rate: float = Field(ge=0, le=1)
    hot_wallet_usd: float = Field(ge=0, description="available in the hot wallet")
    order_price_deviation: dict[str, float] = Field(description="symbol -> |fill - reference| / reference")
    asset_mismatch_ratio: float = Field(ge=0, description="|user balances - holdings| / holdings")
    volatility_pct: dict[str, float] = Field(description="symbol -> volatility in percent")
    internal_net_exposure_usd: dict[str, float] = Field(
        description="symbol -> magnitude (>= 0) of the exchange's internal net exposure in USD; "
                    "the signed value is in /v1/risk/exposure")
    daily_net_pnl_usd: float = Field(description="today's internal P&L (negative = loss)")
    risk_reserve_usd: float
    hl_routing_failures: int = Field(ge=0, description="orders that failed to route to HL today")
    maintenance: bool = Field(description="global_api_enabled is false: trading routes answer 503")
    as_of: AwareDatetime
    # Beyond the list: which control actions are in force (e.g. "new_orders_paused",
    # "hl_routing_paused:BTC", "large_withdrawals_paused:>10000"). Optional for other cores.
    controls: list[str] = []


class ReadHealthInput(BaseModel):
    timeout_s: float = Field(default=2.0, gt=0, le=60)


class CoreActionInput(BaseModel):
    action: str
    body: dict[str, Any] = {}
    # Derived by the caller from the workflow id and step. Sent as is when it is a clean header value
    # (printable ASCII, <= 255 characters), else as a stable hash of it (see wire_key).
    idempotency_key: str = Field(min_length=1)


class CoreActionResult(BaseModel):
    action: str
    idempotency_key: str
    status: str  # "done" (state changed), "noop" (already in that state), "started" (reconciliation)
    result: dict[str, Any] = {}
    replayed: bool = False  # the core had seen this key: this is the first answer, nothing was redone
    at: datetime | None = None


class WaitAppliedInput(BaseModel):
    revision: int = Field(ge=0)
    timeout_s: float = Field(default=10.0, gt=0, le=300)


class AppliedSwitch(BaseModel):
    value: Any
    revision: int  # etcd mod_revision of the value applied (0: the default, never written)
    applied_at: datetime


class AppliedConfig(BaseModel):
    """GET /v1/config/applied, plus how long wait_applied waited for it."""

    model_config = ConfigDict(extra="ignore")

    revision: int = Field(ge=0, description="highest etcd revision of the switch config the core has applied")
    switches: dict[str, AppliedSwitch]
    maintenance: bool = False
    waited_s: float = 0.0  # filled by wait_applied: from its first poll to the answer showing the revision
    polls: int = 0


class Position(BaseModel):
    """A user position the exchange holds the other side of (internalized, B-book)."""

    account: str
    size: float  # base units, signed from the user's side: + long, - short
    entry_price: float = Field(gt=0)


class SymbolExposure(BaseModel):
    mark_price: float = Field(gt=0)
    positions: list[Position]
    net_exposure_usd: float  # core-computed, signed, the exchange's side: -(sum of user sizes) * mark
    hedge_size: float = 0.0  # the exchange's hedge on HL (base units, signed), 0 when hedging is off/dry-run
    hedge_planned_size: float = 0.0  # what the hedge engine computed (also under hedge_dry_run)
    internalizing: bool = False  # new orders in this symbol may be internalized right now


class ExposureReport(BaseModel):
    """GET /v1/risk/exposure: positions and the core's own exposure figure, per symbol."""

    model_config = ConfigDict(extra="ignore")

    as_of: AwareDatetime
    maintenance: bool = False
    symbols: dict[str, SymbolExposure]


def recompute_exposure(report: ExposureReport) -> dict[str, float]:
    """The exchange's signed net exposure per symbol, recomputed from the positions (pure).

    The exchange is the counterparty of internalized user positions: its exposure is minus the
    users' net size times the mark price. Workflows compare this with `net_exposure_usd`.
    """
    return {
        sym: -math.fsum(p.size for p in s.positions) * s.mark_price for sym, s in sorted(report.symbols.items())
    }


def exposure_mismatches(report: ExposureReport, abs_tol_usd: float = 1.0, rel_tol: float = 1e-6) -> list[str]:
    """Symbols where the core's exposure differs from the recomputed one (pure; empty = verified)."""
    out = []
    for sym, mine in recompute_exposure(report).items():
        core = report.symbols[sym].net_exposure_usd
        if not math.isclose(core, mine, rel_tol=rel_tol, abs_tol=abs_tol_usd):
            out.append(f"{sym}: core says ${core:,.2f}, positions give ${mine:,.2f}")
    return out


# -- error helpers --------------------------------------------------------------------------------------
def _error_body(resp: httpx.Response) -> tuple[str, str]:
    """(error code, detail) of an error answer: the contract's `{"error", "detail"}`, or an RFC 9457
    problem document (application/problem+json: the code is the last segment of its `type` URI)."""
    try:
        j = resp.json()
    except ValueError:
        return "", resp.text[:200]
    if not isinstance(j, dict):
        return "", str(j)[:200]
    if "error" not in j and ("type" in j or "title" in j):
        kind = re.split(r"[/:#]", str(j.get("type") or "").rstrip("/"))[-1] if j.get("type") else ""
        if kind in ("", "about:blank", "blank"):
            kind = str(j.get("title") or "").strip().lower().replace(" ", "_")
        return kind, str(j.get("detail") or j.get("title") or "")
    return str(j.get("error") or ""), str(j.get("detail") or "")


def _retry_after(resp: httpx.Response) -> timedelta | None:
    try:
        return timedelta(seconds=max(0.0, min(float(resp.headers["retry-after"]), 60.0)))
    except (KeyError, ValueError):
        return None


def classify(resp: httpx.Response, what: str, *, action: bool = False) -> ApplicationError | None:
    """The ApplicationError for a non-2xx answer (None for 2xx). `what` names the call, e.g. 'GET /v1/health'."""
    code = resp.status_code
    if 200 <= code < 300:
        return None
    err, detail = _error_body(resp)
    said = f"{err}: {detail}" if err and detail else (err or detail or resp.reason_phrase)
    details = {"status": code, "error": err, "detail": detail, "call": what}
    if code in (401, 403):
        return ApplicationError(
            f"trading core refused the credentials for {what} ({code}): check ROLLBACKCTL_TRADING_CORE_TOKEN",
            details, type=UNAUTHORIZED, non_retryable=True)
    if code == 503 and err == "maintenance":
        tail = "no action can run until a Super Admin restores global_api_enabled" if action else \
            "the core is not serving this route"
        return ApplicationError(
            f"trading core is in maintenance mode (global_api_enabled=false, Degradation Level 3): "
            f"{what} answered 503; {tail}", details, type=MAINTENANCE, non_retryable=True)
    if code == 409:
        # the idempotency-key draft: a request with this key is still in flight; the same key later gets its
        # answer (never a second action), so retrying is safe and right
        return ApplicationError(f"trading core: {what} is still being processed under its Idempotency-Key "
                                f"(409 {said}); retrying", details, type=CORE_UNAVAILABLE, non_retryable=False,
                                next_retry_delay=_retry_after(resp))
    if code in (408, 429) or code >= 500:
        return ApplicationError(f"trading core unavailable: {what} answered {code} ({said})", details,
                                type=CORE_UNAVAILABLE, non_retryable=False, next_retry_delay=_retry_after(resp))
    if 400 <= code < 500:
        return ApplicationError(f"trading core rejected {what} ({code} {said})", details,
                                type=BAD_REQUEST, non_retryable=True)
    return ApplicationError(f"trading core answered {what} with unexpected status {code}", details,
                            type=CORE_UNAVAILABLE, non_retryable=False)


def schema_error(e: ValidationError, what: str) -> ApplicationError:
    """A contract violation, naming the field(s) at fault."""
    parts = []
    for err in e.errors()[:5]:
        field = ".".join(str(x) for x in err.get("loc", ())) or "(body)"
        if err.get("type") == "missing":
            parts.append(f"field {field!r} is missing")
        else:
            parts.append(f"field {field!r}: {err.get('msg')} (got {err.get('input')!r:.60})")
    fields = [".".join(str(x) for x in err.get("loc", ())) for err in e.errors()]
    return ApplicationError(f"trading core broke the contract on {what}: " + "; ".join(parts),
                            {"fields": fields, "call": what}, type=SCHEMA_VIOLATION, non_retryable=True)


def _not_json(what: str, resp: httpx.Response) -> ApplicationError:
    return ApplicationError(
        f"trading core broke the contract on {what}: body is not JSON "
        f"(content-type {resp.headers.get('content-type', '?')!r}, {len(resp.content)} bytes)",
        {"fields": ["(body)"], "call": what}, type=SCHEMA_VIOLATION, non_retryable=True)


_CLEAN_KEY = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?$")


def wire_key(key: str) -> str:
    """The Idempotency-Key header value for `key`: itself when it is a clean header value, else
    "sha256:<hex>" of it (the same key always maps to the same value, so idempotency holds)."""
    if _CLEAN_KEY.match(key):
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _logger():
    return activity.logger if activity.in_activity() else log


class TradingCoreActivities:
    """Activities against the trading core's HTTP API (or the simulator)."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, token, *, timeout_s: float = 2.0,
                 poll_interval_s: float = 0.02, owns_client: bool = False):
        self.client = client
        self.base_url = base_url.rstrip("/")
        self._token = token  # pydantic SecretStr (or a plain str in tests); read only when sending
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self._owns_client = owns_client

    @classmethod
    def from_settings(cls, settings: TradingCoreSettings, client: httpx.AsyncClient | None = None,
                      ) -> "TradingCoreActivities":
        owns = client is None
        client = client or httpx.AsyncClient()
        return cls(client, settings.url, settings.token, timeout_s=settings.timeout_s, owns_client=owns)

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    def __repr__(self) -> str:  # never the token
        return f"TradingCoreActivities(base_url={self.base_url!r})"

    # -- transport -----------------------------------------------------------------------------
    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        tok = self._token.get_secret_value() if hasattr(self._token, "get_secret_value") else str(self._token)
        return {"Authorization": f"Bearer {tok}", "Accept": "application/json", **(extra or {})}

    async def _request(self, method: str, path: str, *, timeout_s: float, json: Any = None,
                       headers: dict[str, str] | None = None, action: bool = False) -> httpx.Response:
        what = f"{method} {path}"
        try:
            resp = await self.client.request(method, self.base_url + path, json=json,
                                             headers=self._headers(headers), timeout=timeout_s)
        except httpx.TimeoutException as e:
            raise ApplicationError(f"trading core did not answer {what} within {timeout_s:g}s ({type(e).__name__})",
                                   {"call": what}, type=CORE_TIMEOUT, non_retryable=False) from None
        except httpx.TransportError as e:
            raise ApplicationError(f"trading core unreachable at {self.base_url} for {what}: {type(e).__name__}: {e}",
                                   {"call": what}, type=CORE_UNAVAILABLE, non_retryable=False) from None
        err = classify(resp, what, action=action)
        if err is not None:
            raise err
        return resp

    @staticmethod
    def _parse(model: type[BaseModel], resp: httpx.Response, what: str):
        try:
            resp.json()
        except ValueError:
            raise _not_json(what, resp) from None
        try:
            return model.model_validate_json(resp.content, strict=True)
        except ValidationError as e:
            raise schema_error(e, what) from None

    # -- activities ------------------------------------------------------------------------------
    @activity.defn(name="core.read_health")
    async def read_health(self, inp: ReadHealthInput) -> HealthSnapshot:
        resp = await self._request("GET", HEALTH_PATH, timeout_s=inp.timeout_s)
        return self._parse(HealthSnapshot, resp, f"GET {HEALTH_PATH}")

    @activity.defn(name="core.read_exposure")
    async def read_exposure(self) -> ExposureReport:
        resp = await self._request("GET", EXPOSURE_PATH, timeout_s=self.timeout_s)
        return self._parse(ExposureReport, resp, f"GET {EXPOSURE_PATH}")

    @activity.defn(name="core.action")
    async def action(self, inp: CoreActionInput) -> CoreActionResult:
        path = ACTION_PATH.format(action=inp.action)
        what = f"POST {path}"
        if inp.action not in ACTIONS:
            raise ApplicationError(f"unknown trading-core action {inp.action!r}; known: {', '.join(ACTIONS)}",
                                   {"call": what}, type=BAD_REQUEST, non_retryable=True)
        missing = [f for f in ACTIONS[inp.action] if f not in inp.body]
        if missing:
            raise ApplicationError(f"action {inp.action} needs {', '.join(missing)} in its body",
                                   {"call": what, "fields": missing}, type=BAD_REQUEST, non_retryable=True)
        key = wire_key(inp.idempotency_key)
        resp = await self._request("POST", path, timeout_s=self.timeout_s, json=inp.body,
                                   headers={IDEMPOTENCY_HEADER: key}, action=True)
        res: CoreActionResult = self._parse(CoreActionResult, resp, what)
        if res.idempotency_key != key or res.action != inp.action:
            raise ApplicationError(
                f"trading core answered {what} for another request (action {res.action!r}, key {res.idempotency_key!r})",
                {"call": what, "fields": ["action", "idempotency_key"]}, type=SCHEMA_VIOLATION, non_retryable=True)
        replayed = res.replayed or resp.headers.get(REPLAYED_HEADER, "").lower() == "true"
        res = res.model_copy(update={"replayed": replayed, "idempotency_key": inp.idempotency_key})
        _logger().info("trading core action %s key=%s -> %s%s", inp.action, inp.idempotency_key, res.status,
                       " (replayed: done before, not repeated)" if res.replayed else "")
        return res

    @activity.defn(name="core.wait_applied")
    async def wait_applied(self, inp: WaitAppliedInput) -> AppliedConfig:
        """Poll GET /v1/config/applied (every ~20 ms) until the core reports revision >= inp.revision.

        Transient failures (5xx, timeouts, refused connections) are polled through until the
        deadline; refusals (401, 4xx, maintenance, a broken body) end the wait at once.
        """
        what = f"GET {APPLIED_PATH}"
        start = time.monotonic()
        deadline = start + inp.timeout_s
        polls, seen, last_err = 0, None, None
        while True:
            left = deadline - time.monotonic()
            try:
                resp = await self._request("GET", APPLIED_PATH, timeout_s=max(0.05, min(self.timeout_s, left)))
                cfg: AppliedConfig = self._parse(AppliedConfig, resp, what)
                polls += 1
                seen, last_err = cfg.revision, None
                if cfg.revision >= inp.revision:
                    return cfg.model_copy(update={"waited_s": time.monotonic() - start, "polls": polls})
            except ApplicationError as e:
                if e.non_retryable:
                    raise
                polls += 1
                last_err = e
            if activity.in_activity():
                activity.heartbeat({"polls": polls, "revision_seen": seen})
            if time.monotonic() >= deadline:
                why = f"; last error: {last_err.message}" if last_err else ""
                raise ApplicationError(
                    f"trading core did not apply revision {inp.revision} within {inp.timeout_s:g}s "
                    f"(last applied revision seen: {seen}, {polls} polls){why}",
                    {"revision": inp.revision, "revision_seen": seen, "polls": polls},
                    type=NOT_APPLIED, non_retryable=False)
            await asyncio.sleep(min(self.poll_interval_s, max(0.0, deadline - time.monotonic())))
