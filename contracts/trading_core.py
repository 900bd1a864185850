"""The trading core's HTTP contract: paths, actions, error types and the models of its answers.

Pure data (pydantic, no I/O). Documented in docs/trading-core-api.md; the activities
(activities/trading_core.py) call it and the simulator (simulator/) serves it, validating its
own answers against these models.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from contracts.errors import ErrorKind

# -- error types ---------------------------------------------------------------------------------
BAD_REQUEST = ErrorKind.BAD_REQUEST
UNAUTHORIZED = ErrorKind.UNAUTHORIZED
SCHEMA_VIOLATION = ErrorKind.SCHEMA_VIOLATION
MAINTENANCE = ErrorKind.MAINTENANCE
CORE_UNAVAILABLE = ErrorKind.CORE_UNAVAILABLE
CORE_TIMEOUT = ErrorKind.CORE_TIMEOUT
NOT_APPLIED = ErrorKind.NOT_APPLIED

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
MAX_OUTAGE_S = 366 * 24 * 3600  # hl_disconnected_for_s: a year at most


class HealthSnapshot(BaseModel):
    """GET /v1/health. Field names are part of the contract: other tools read them."""

    # NaN / Infinity are not JSON numbers: a NaN margin ratio compares false with every P0 threshold
    # and would hide the alert, so such a body is a SchemaViolation naming the field.
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    error_rate: float = Field(ge=0, le=1, description="rolling share of failed API requests, 0..1")
    hl_connected: bool = Field(description="WS and REST to Hyperliquid both up")
    # At most a year: a longer outage is a broken clock or a broken field, refused naming it (a duration the
    # monitor cannot subtract from now would otherwise crash its poll).
    hl_disconnected_for_s: float = Field(ge=0, le=MAX_OUTAGE_S, description="seconds since HL went down; 0 while connected")
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
    # Orders per minute the core routes internally (B-book), rolling: the live traffic a 5% restore stage
    # observes. Optional (None: not reported; the restore then says it could not tell, and pages).
    internal_orders_per_min: float | None = Field(default=None, ge=0)


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
