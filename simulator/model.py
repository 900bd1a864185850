"""The simulated exchange: metrics as seeded random walks, a synthetic order flow routed by the switches.

No I/O, no clock of its own: `Market.tick(dt, ...)` advances it, the caller (simulator.core)
supplies the switch values, the control actions in force and the effective metrics (fault
overrides included), so a fault such as a volatility spike changes routing the way it would in
the real core.

Healthy values sit well away from the manual's P0 lines: HL margin ~3.0 (P0 < 1.5), hedge margin
~3.5 (P0 < 2.0), error rate ~0.2% (failure > 1%), hot wallet ~$2M (P0 < $100K), price deviation
~0.05% (P0 > 5%), asset mismatch ~0.001% (P0 > 0.1%), volatility 1.5-3% (force-HL 5%).

Routing of one order (see `route_order`), following manual/switches.py's reading of the matrix:
trading or new orders paused -> rejected; internalized only if `global_betting_enabled`, the
routing mode is not HL_MODE, the symbol is in `per_symbol_betting`, the notional is within the
mode's threshold (NORMAL_MODE -> normal_threshold, BETTING_MODE -> betting_threshold) and
`max_order_size_internal`, volatility and HL latency are under their force-HL lines, the
symbol's exposure stays within `max_internal_exposure_usd`, the reserve and the day's loss are
within their circuit breakers, and the `betting_traffic_pct` draw picks it; otherwise it goes to
HL. A symbol whose HL routing is paused (P0 "Single-order deviation") is internalized when allowed,
else rejected.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

SYMBOLS: dict[str, float] = {"BTC": 65_000.0, "ETH": 3_200.0, "SOL": 150.0}  # symbol -> start mark price
BASE_VOLATILITY = {"BTC": 1.5, "ETH": 2.0, "SOL": 3.0}
ACCOUNTS_PER_SYMBOL = 24
ORDERS_PER_S = 4.0  # synthetic orders per symbol per second
CLOSE_RATE_PER_S = 0.04  # share of each user position closed per second
RECONCILIATION_S = 10.0


@dataclass
class Walk:
    """Mean-reverting random walk (Ornstein-Uhlenbeck), clamped to [lo, hi]."""

    mean: float
    sigma: float
    lo: float
    hi: float
    theta: float = 0.5
    value: float = float("nan")

    def __post_init__(self) -> None:
        if math.isnan(self.value):
            self.value = self.mean

    def step(self, rng: random.Random, dt: float, mean: float | None = None) -> float:
        m = self.mean if mean is None else mean
        self.value += self.theta * (m - self.value) * dt + self.sigma * math.sqrt(dt) * rng.gauss(0.0, 1.0)
        self.value = min(max(self.value, self.lo), self.hi)
        return self.value


@dataclass
class Controls:
    """What the core's actions have put in force."""

    new_orders_paused: bool = False
    hl_opens_paused: bool = False
    trading_paused: bool = False
    hl_routing_paused: set[str] = field(default_factory=set)
    large_withdrawals_above_usd: float | None = None
    reconciliations: dict[str, float] = field(default_factory=dict)  # id -> seconds left

    def listing(self) -> list[str]:
        out = []
        if self.trading_paused:
            out.append("trading_paused")
        if self.new_orders_paused:
            out.append("new_orders_paused")
        if self.hl_opens_paused:
            out.append("hl_opens_paused")
        out += [f"hl_routing_paused:{s}" for s in sorted(self.hl_routing_paused)]
        if self.large_withdrawals_above_usd is not None:
            out.append(f"large_withdrawals_paused:>{self.large_withdrawals_above_usd:g}")
        out += [f"reconciliation_running:{r}" for r in sorted(self.reconciliations)]
        return out


@dataclass
class UserPosition:
    account: str
    size: float = 0.0  # base units, user's side
    entry_price: float = 0.0

    def add(self, qty: float, price: float) -> None:
        new = self.size + qty
        if self.size == 0 or (self.size > 0) == (qty > 0):  # opening / increasing: average the entry
            self.entry_price = (abs(self.size) * self.entry_price + abs(qty) * price) / max(abs(new), 1e-12)
        elif (new > 0) != (self.size > 0) and new != 0:  # flipped through zero
            self.entry_price = price
        self.size = new


@dataclass
class RouteDecision:
    route: str  # "internal" | "hl" | "rejected"
    reason: str


def mode_limit(sw: dict[str, Any]) -> float:
    """The internalization size limit of the routing mode (0 in HL_MODE)."""
    mode = sw.get("routing_mode")
    if mode == "NORMAL_MODE":
        return float(sw.get("normal_threshold", 0))
    if mode == "BETTING_MODE":
        return float(sw.get("betting_threshold", 0))
    return 0.0


def internalization_block(sw: dict[str, Any], symbol: str, notional: float, metrics: dict[str, Any],
                          exposure_usd: float, extra_usd: float) -> str | None:
    """Why an order may not be internalized (None: it may). Traffic share is drawn separately."""
    if not sw.get("global_betting_enabled"):
        return "internalization disabled (global_betting_enabled=false)"
    if sw.get("routing_mode") == "HL_MODE":
        return "routing_mode=HL_MODE"
    if symbol not in (sw.get("per_symbol_betting") or []):
        return f"{symbol} not in per_symbol_betting"
    limit = min(mode_limit(sw), float(sw.get("max_order_size_internal", 0)))
    if notional > limit:
        return f"notional {notional:,.0f} above the internal size limit {limit:,.0f}"
    vol = metrics["volatility_pct"].get(symbol, 0.0)
    if vol > float(sw.get("force_hl_volatility_pct", 1e9)):
        return f"volatility {vol:.2f}% above force_hl_volatility_pct"
    if metrics["hl_latency_ms"] > float(sw.get("force_hl_latency_ms", 1e12)):
        return "HL latency above force_hl_latency_ms"
    if abs(exposure_usd + extra_usd) > float(sw.get("max_internal_exposure_usd", 0)):
        return "would exceed max_internal_exposure_usd"
    if metrics["risk_reserve_usd"] < float(sw.get("risk_reserve_min_usd", 0)):
        return "risk reserve below risk_reserve_min_usd"
    if metrics["daily_net_pnl_usd"] < -float(sw.get("daily_net_loss_limit", 1e18)):
        return "daily net loss limit reached"
    return None


def route_order(sw: dict[str, Any], ctl: Controls, symbol: str, notional: float, side: int,
                metrics: dict[str, Any], exposure_usd: float, draw: float) -> RouteDecision:
    """Where one order goes. `side` +1 user buys, -1 sells; `draw` uniform in [0, 1) for the traffic share."""
    if ctl.trading_paused:
        return RouteDecision("rejected", "trading paused")
    if ctl.new_orders_paused:
        return RouteDecision("rejected", "new orders paused")
    # the exchange takes the other side: a user buy adds negative exchange exposure
    block = internalization_block(sw, symbol, notional, metrics, exposure_usd, -side * notional)
    if symbol in ctl.hl_routing_paused:
        if block is None:
            return RouteDecision("internal", f"HL routing paused for {symbol}: internalized")
        return RouteDecision("rejected", f"HL routing paused for {symbol} and not internalizable: {block}")
    if block is None:
        pct = float(sw.get("betting_traffic_pct", 100))
        if draw * 100.0 < pct:
            return RouteDecision("internal", f"internalized ({sw.get('routing_mode')}, {pct:g}% traffic)")
        block = f"outside the {pct:g}% internalization share"
    return RouteDecision("hl", block)


class Market:
    """The simulated venue's state. Deterministic for a seed and a sequence of ticks."""

    def __init__(self, seed: int = 7):
        self.rng = random.Random(seed)
        self.t = 0.0
        self.walks: dict[str, Walk] = {
            "error_rate": Walk(0.002, 0.0006, 0.0, 0.005, theta=1.0),
            "hl_latency_ms": Walk(80.0, 12.0, 35.0, 220.0, theta=1.0),
            "hl_margin_ratio": Walk(3.0, 0.04, 2.6, 3.6),
            "hedge_margin_ratio": Walk(3.5, 0.04, 2.8, 4.8),
            "liquidation_execution_failure_rate": Walk(0.002, 0.0006, 0.0, 0.01, theta=1.0),
            "hot_wallet_usd": Walk(2_000_000.0, 30_000.0, 1_600_000.0, 2_400_000.0, theta=0.2),
            "asset_mismatch_ratio": Walk(0.00001, 0.000004, 0.0, 0.00008, theta=1.0),
            "risk_reserve_usd": Walk(1_200_000.0, 5_000.0, 1_000_000.0, 1_400_000.0, theta=0.2),
            "daily_net_pnl_usd": Walk(15_000.0, 1_500.0, -60_000.0, 90_000.0, theta=0.05),
        }
        self.deviation = {s: Walk(0.0005, 0.00015, 0.0, 0.003, theta=1.0) for s in SYMBOLS}
        self.volatility = {s: Walk(BASE_VOLATILITY[s], 0.08, 0.3, 4.0, theta=0.3) for s in SYMBOLS}
        self.marks = dict(SYMBOLS)
        self.positions = {s: [UserPosition(f"u{i:03d}") for i in range(ACCOUNTS_PER_SYMBOL)] for s in SYMBOLS}
        self.liquidation_detection_failures = 0
        self.hl_routing_failures = 0
        self.orders = {"internal": 0, "hl": 0, "rejected": 0, "hl_failed": 0}
        self._seq = 0

    # -- reading -------------------------------------------------------------------------------
    def user_net_size(self, symbol: str) -> float:
        return math.fsum(p.size for p in self.positions[symbol])

    def exposure_usd(self, symbol: str) -> float:
        """The exchange's signed net exposure (it holds the other side of user positions)."""
        return -self.user_net_size(symbol) * self.marks[symbol]

    def base_metrics(self) -> dict[str, Any]:
        """The simulated values, before fault overrides (hl_* connectivity is added by the caller)."""
        m: dict[str, Any] = {k: w.value for k, w in self.walks.items()}
        m["liquidation_detection_failures"] = self.liquidation_detection_failures
        m["order_price_deviation"] = {s: w.value for s, w in self.deviation.items()}
        m["volatility_pct"] = {s: w.value for s, w in self.volatility.items()}
        m["internal_net_exposure_usd"] = {s: abs(self.exposure_usd(s)) for s in SYMBOLS}
        m["hl_routing_failures"] = self.hl_routing_failures
        return m

    @staticmethod
    def hedge_fraction(sw: dict[str, Any], exposure_usd: float) -> float:
        e = abs(exposure_usd)
        if e > float(sw.get("hedge_threshold_tier2", math.inf)):
            return 0.8
        if e > float(sw.get("hedge_threshold_tier1", math.inf)):
            return 0.5
        return 0.0

    # -- moving ----------------------------------------------------------------------------------
    def tick(self, dt: float, sw: dict[str, Any], ctl: Controls, effective: dict[str, Any]) -> None:
        """Advance by dt seconds. `effective` = current metrics with fault overrides applied."""
        if dt <= 0:
            return
        dt = min(dt, 5.0)  # a long pause (debugger, suspended laptop) is one big step, not a flood
        rng = self.rng
        self.t += dt
        w = self.walks
        for name in ("error_rate", "hl_latency_ms", "liquidation_execution_failure_rate", "risk_reserve_usd",
                     "daily_net_pnl_usd"):
            w[name].step(rng, dt)
        w["hl_margin_ratio"].step(rng, dt, 3.3 if ctl.hl_opens_paused else None)
        lev = max(float(sw.get("hedge_max_leverage", 3.0)), 1.0)
        hedging = bool(sw.get("hedge_enabled")) and not sw.get("hedge_dry_run")
        w["hedge_margin_ratio"].step(rng, dt, (2.5 + 3.0 / lev) if hedging else 3.5)
        w["hot_wallet_usd"].step(rng, dt, 2_050_000.0 if not sw.get("withdrawal_enabled", True) else None)
        for r in list(ctl.reconciliations):
            ctl.reconciliations[r] -= dt
            if ctl.reconciliations[r] <= 0:
                del ctl.reconciliations[r]
                w["asset_mismatch_ratio"].value = w["asset_mismatch_ratio"].mean  # reconciled
        w["asset_mismatch_ratio"].step(rng, dt)
        # liquidation detection: a rare transient miss, reset by the next good pass
        if sw.get("liquidation_enabled", True) and rng.random() < 0.01 * dt:
            self.liquidation_detection_failures = 1
        else:
            self.liquidation_detection_failures = 0
        for s in SYMBOLS:
            vol = self.volatility[s].step(rng, dt)
            self.deviation[s].step(rng, dt)
            # geometric step of the mark: vol% is a daily-ish figure, scaled down to keep marks calm
            self.marks[s] *= math.exp((vol / 100.0) * 0.02 * math.sqrt(dt) * rng.gauss(0.0, 1.0))
        self._flow(dt, sw, ctl, effective)

    def _flow(self, dt: float, sw: dict[str, Any], ctl: Controls, effective: dict[str, Any]) -> None:
        rng = self.rng
        connected = bool(effective.get("hl_connected", True))
        for s in SYMBOLS:
            for p in self.positions[s]:  # users close part of their positions
                p.size *= (1.0 - CLOSE_RATE_PER_S * dt)
                if abs(p.size) * self.marks[s] < 1.0:
                    p.size, p.entry_price = 0.0, 0.0
            n = self._poisson(ORDERS_PER_S * dt)
            for _ in range(n):
                notional = min(math.exp(rng.gauss(math.log(3_000.0), 1.0)), 250_000.0)
                side = 1 if rng.random() < 0.5 else -1
                d = route_order(sw, ctl, s, notional, side, effective, self.exposure_usd(s), rng.random())
                self.orders[d.route] += 1
                if d.route == "internal":
                    rng_acct = self.positions[s][rng.randrange(ACCOUNTS_PER_SYMBOL)]
                    rng_acct.add(side * notional / self.marks[s], self.marks[s])
                elif d.route == "hl" and not connected:
                    self.orders["hl_failed"] += 1
                    self.hl_routing_failures += 1

    def _poisson(self, lam: float) -> int:
        # Knuth; lam is small (a few per tick)
        limit, k, p = math.exp(-lam), 0, 1.0
        while True:
            p *= self.rng.random()
            if p <= limit:
                return k
            k += 1

    def next_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}-{self._seq:06d}"
