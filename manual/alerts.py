"""The P0 alerts (manual: "Alert System & Emergency Response") as data.

    Alert                       Trigger                                Immediate Action                     Further
    HL disconnection            WS/REST down >1min                     Slack/PagerDuty, pause new orders    Reconnect; if >5min -> manual
    HL account margin <150%     margin_ratio < 150%                    Pause all HL new opens               Top up to >200%, reduce leverage
    Hedge account margin <200%  margin_ratio < 200%                    Same, reduce to 2x leverage          Emergency top-up/closeout
    Liquidation engine failure  Detection fails 5+ times or >10% exec  liquidation_enabled=false, manual    Debug, fix, restart
    Hot wallet <$100K           Available <$100K                       Pause large withdrawals (>$10K)      Transfer from cold wallet
    Single-order deviation >5%  Price discrepancy >5%                  Pause symbol HL routing -> internal  Debug cause
    User asset mismatch >0.1%   Discrepancy >0.1%                      Pause trading, start reconciliation  Manual adjustment
    SLA: 5-min confirm, 10-min action. No response after 5min -> escalate

Each row below keeps the manual's words and adds what the manual leaves open, with the reason:
how long the trigger must hold, how it clears, whether its immediate action is undone
automatically (the manual's "Failure Detection & Auto-Recovery") or only by a human, and whether
the incident starts the decision-tree rollback. The monitor (activities/monitor.py) evaluates the
triggers; the incident workflow (workflows/incident.py) takes the actions, pages and keeps the SLA.

Metrics are the trading core's health fields (docs/trading-core-api.md), plus one the monitor
measures itself: `core_unreachable_for_s`, seconds since the trading core last answered a health
read (0 while it answers). An unreachable core is the "REST down" half of the HL/API row.

Immediate actions are the manual's pre-approved moves and nothing else: trading-core actions and
the two switch moves below (`preapproved_switch_values()` feeds manual/approvals.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from manual import switches
from contracts.roles import Role
from manual.steps import HealthCheck

SYMBOL = "$symbol"  # in an action body: replaced by the incident's symbol (per-symbol rules)

# Health metrics the rules may read: the trading core's fields plus the monitor's own.
MONITOR_METRICS = ("core_unreachable_for_s",)
CORE_METRICS = (
    "error_rate", "hl_connected", "hl_disconnected_for_s", "hl_latency_ms", "hl_margin_ratio", "hedge_margin_ratio",
    "liquidation_detection_failures", "liquidation_execution_failure_rate", "hot_wallet_usd", "order_price_deviation",
    "asset_mismatch_ratio", "volatility_pct", "internal_net_exposure_usd", "daily_net_pnl_usd", "risk_reserve_usd",
    "hl_routing_failures", "maintenance",
)
PER_SYMBOL_METRICS = ("order_price_deviation", "volatility_pct", "internal_net_exposure_usd")

_OPS = {
    "<": lambda v, t: v < t, "<=": lambda v, t: v <= t, ">": lambda v, t: v > t, ">=": lambda v, t: v >= t,
    "==": lambda v, t: v == t,
}


class Condition(BaseModel):
    """`metric op threshold`: true when the reported value satisfies it (None: the value is unknown)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    metric: str
    op: Literal["<", "<=", ">", ">=", "=="]
    threshold: float | bool

    @model_validator(mode="after")
    def _known_metric(self) -> "Condition":
        if self.metric not in CORE_METRICS + MONITOR_METRICS:
            raise ValueError(f"unknown health metric {self.metric!r}")
        return self

    def holds(self, value: Any) -> bool | None:
        if value is None or isinstance(value, dict):
            return None
        try:
            return bool(_OPS[self.op](value, self.threshold))
        except TypeError:
            return None

    def __str__(self) -> str:
        t = str(self.threshold).lower() if isinstance(self.threshold, bool) else f"{self.threshold:g}"
        return f"{self.metric} {self.op} {t}"


class Hold(BaseModel):
    """How long a trigger must hold before the rule fires.

    `polls`: consecutive health reads in which the trigger held. `reported_s`: the trigger is itself a
    duration the trading core measures (HL: `hl_disconnected_for_s > 60`), so one read suffices and a
    shorter outage (a 30-second blip) never fires, however often it is polled.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    polls: int = Field(default=1, ge=1, le=100)
    reported_s: float | None = None
    why: str


class CoreMove(BaseModel):
    """A trading-core action (POST /v1/actions/<action>) and the action that undoes it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["core"] = "core"
    action: str
    body: dict[str, Any] = {}
    undo: str | None = None

    def body_for(self, symbol: str | None) -> dict[str, Any]:
        return {k: (symbol if v == SYMBOL else v) for k, v in self.body.items()}


class SwitchMove(BaseModel):
    """A pre-approved switch move. `lower_to`: only if the switch is above the value (never raises it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["switch"] = "switch"
    switch: str
    value: Any
    mode: Literal["set", "lower_to"] = "set"

    @model_validator(mode="after")
    def _valid_value(self) -> "SwitchMove":
        object.__setattr__(self, "value", switches.get(self.switch).parse(self.value))
        return self


Move = Annotated[Union[CoreMove, SwitchMove], Field(discriminator="kind")]


class FurtherStep(BaseModel):
    """One line of the further-step checklist the responder ticks off."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")
    title: str
    role: Role = Role.ON_CALL  # who may tick it off (a super admin's sign-off is not an on-call's to record)


class Recovery(BaseModel):
    """Who undoes the immediate action once the condition has cleared.

    `auto`: the incident workflow runs each action's `undo` after the condition stayed clear for
    `clear_hold`, once, audited and paged, and only if nothing else holds the same pause (another
    incident, a rollback or degradation). `human`: only an operator of at least `role` undoes it
    (`rollbackctl resolve ID --undo`), switches by compare-and-swap against what the incident set.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    mode: Literal["auto", "human"]
    clear_hold: timedelta | None = None
    role: Role = Role.ON_CALL
    why: str


class RollbackSpec(BaseModel):
    """The decision-tree rollback this incident starts (values of manual.rollback.Severity / Scope).

    Started as a child when a responder acknowledges, on that responder's authority: the monitor's
    identity takes the immediate actions and nothing else.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    severity: Literal["critical_path_failure", "data_inconsistency", "non_critical"]
    scope: Literal["single_module", "cross_module", "full_system"]
    why: str


class ManualAfter(BaseModel):
    """"if >5min -> manual": still firing this long after the condition began: escalate and ask."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    after: timedelta
    prompt: str


class Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    alert: str  # the manual's "Alert" column
    manual_trigger: str  # the manual's words
    manual_action: str
    manual_further: str
    trigger: tuple[Condition, ...] = Field(min_length=1)  # fires when ANY holds
    hold: Hold
    clear: tuple[Condition, ...] = Field(min_length=1)  # cleared when ALL hold
    clear_why: str
    per_symbol: bool = False  # evaluated per symbol of a per-symbol metric; one incident per symbol
    actions: tuple[Move, ...] = Field(min_length=1)
    further: tuple[FurtherStep, ...] = Field(min_length=1)
    recovery: Recovery
    manual_after: ManualAfter | None = None
    rollback: RollbackSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "Rule":
        metrics = [c.metric for c in (*self.trigger, *self.clear)]
        if self.per_symbol != any(m in PER_SYMBOL_METRICS for m in metrics):
            raise ValueError(f"rule {self.id}: per_symbol must match its metrics")
        if self.per_symbol and any(m not in PER_SYMBOL_METRICS for m in metrics):
            raise ValueError(f"rule {self.id}: a per-symbol rule reads per-symbol metrics only")
        if self.hold.reported_s is not None and any(
            c.op not in (">", ">=") or c.threshold != self.hold.reported_s for c in self.trigger
        ):
            raise ValueError(f"rule {self.id}: a reported hold is the trigger's own duration threshold")
        if self.recovery.mode == "auto":
            if self.recovery.clear_hold is None:
                raise ValueError(f"rule {self.id}: automatic recovery needs clear_hold")
            for m in self.actions:
                # The monitor may take pre-approved moves only; undoing a switch move is not one of them.
                if not isinstance(m, CoreMove) or m.undo is None:
                    raise ValueError(f"rule {self.id}: automatic recovery undoes core actions with an undo only")
        if any(isinstance(m, CoreMove) and SYMBOL in m.body.values() for m in self.actions) and not self.per_symbol:
            raise ValueError(f"rule {self.id}: {SYMBOL} in an action body needs a per-symbol rule")
        ids = [f.id for f in self.further]
        if len(set(ids)) != len(ids):
            raise ValueError(f"rule {self.id}: checklist ids must be unique")
        return self

    @property
    def switch_moves(self) -> list[SwitchMove]:
        return [m for m in self.actions if isinstance(m, SwitchMove)]

    @property
    def core_moves(self) -> list[CoreMove]:
        return [m for m in self.actions if isinstance(m, CoreMove)]


class Sla(BaseModel):
    """The manual's SLA: 5-min confirm (acknowledge), 10-min action; unacknowledged -> escalate."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    ack: timedelta = timedelta(minutes=5)
    action: timedelta = timedelta(minutes=10)
    # The first page waits at most this long for the immediate action (an unreachable trading core
    # must not hold the page back); the action keeps retrying after it.
    page_after: timedelta = timedelta(seconds=10)


SLA = Sla()

_c = Condition
_POLLS3 = Hold(polls=3, why="three consecutive reads (3 s at the default 1 s interval): one noisy sample never pages")
_POLLS2 = Hold(polls=2, why="two consecutive reads: the data is already aggregated (a count, a rolling rate)")

RULES: tuple[Rule, ...] = (
    Rule(
        id="hl_disconnection", alert="HL disconnection", manual_trigger="WS/REST down >1min",
        manual_action="Slack/PagerDuty, pause new orders", manual_further="Reconnect; if >5min → manual",
        trigger=(_c(metric="hl_disconnected_for_s", op=">", threshold=60),
                 _c(metric="core_unreachable_for_s", op=">", threshold=60)),
        hold=Hold(reported_s=60, why="the outage is measured where it happens: the trading core reports "
                                     "hl_disconnected_for_s; an unreachable core is timed by the monitor"),
        clear=(_c(metric="hl_connected", op="==", threshold=True), _c(metric="core_unreachable_for_s", op="==", threshold=0)),
        clear_why="HL connected again and the trading core answering",
        actions=(CoreMove(action="pause_new_orders", undo="resume_new_orders"),),
        further=(FurtherStep(id="reconnect", title="Reconnect to HL (WebSocket and REST)"),
                 FurtherStep(id="choose_level", title="Still down at 5 min: choose degradation level 2 or 3 "
                                                      "(`rollbackctl escalate ID --level 2|3`)")),
        recovery=Recovery(mode="auto", clear_hold=timedelta(minutes=2),
                          why="HL reconnected and stable for 2 minutes: new orders resume by themselves"),
        manual_after=ManualAfter(after=timedelta(minutes=5), prompt=(
            "HL still down after 5 minutes: choose degradation level 2 (read-only + limited) or 3 "
            "(maintenance) with `rollbackctl escalate ID --level 2|3 --as OP`. No further automatic change.")),
    ),
    Rule(
        id="hl_margin", alert="HL account margin <150%", manual_trigger="margin_ratio < 150%",
        manual_action="Pause all HL new opens", manual_further="Top up to >200%, reduce leverage",
        trigger=(_c(metric="hl_margin_ratio", op="<", threshold=1.5),), hold=_POLLS3,
        clear=(_c(metric="hl_margin_ratio", op=">=", threshold=2.0),),
        clear_why="the manual's own target: topped up to 200% (hysteresis against flapping at 150%)",
        actions=(CoreMove(action="pause_hl_opens", undo="resume_hl_opens"),),
        further=(FurtherStep(id="top_up", title="Top up the HL account to > 200% margin"),
                 FurtherStep(id="reduce_leverage", title="Reduce leverage on HL")),
        recovery=Recovery(mode="auto", clear_hold=timedelta(minutes=5),
                          why="margin back above 200% for 5 minutes: HL opens resume by themselves"),
    ),
    Rule(
        id="hedge_margin", alert="Hedge account margin <200%", manual_trigger="margin_ratio < 200%",
        manual_action="Same, reduce to 2x leverage", manual_further="Emergency top-up/closeout",
        trigger=(_c(metric="hedge_margin_ratio", op="<", threshold=2.0),), hold=_POLLS3,
        clear=(_c(metric="hedge_margin_ratio", op=">=", threshold=2.5),),
        clear_why="no target in the manual: 250% keeps the same 50-point hysteresis as the HL row",
        actions=(CoreMove(action="pause_hl_opens", undo="resume_hl_opens"),
                 SwitchMove(switch="hedge_max_leverage", value=2.0, mode="lower_to")),
        further=(FurtherStep(id="top_up_or_close", title="Emergency top-up of the hedge account, or close out hedges"),
                 FurtherStep(id="review_leverage", title="Review hedge_max_leverage (capped at 2x by the alert)")),
        recovery=Recovery(mode="human", role=Role.RISK_MANAGER,
                          why="raising hedge leverage again is a risk manager's call, not a pre-approved move"),
    ),
    Rule(
        id="liquidation_failure", alert="Liquidation engine failure",
        manual_trigger="Detection fails 5+ times or >10% execution failure",
        manual_action="liquidation_enabled=false, manual liquidate", manual_further="Debug, fix, restart",
        trigger=(_c(metric="liquidation_detection_failures", op=">=", threshold=5),
                 _c(metric="liquidation_execution_failure_rate", op=">", threshold=0.10)),
        hold=_POLLS2,
        clear=(_c(metric="liquidation_detection_failures", op="==", threshold=0),
               _c(metric="liquidation_execution_failure_rate", op="<=", threshold=0.05)),
        clear_why="detection succeeding again and executions failing at most half the trigger rate",
        actions=(SwitchMove(switch="liquidation_enabled", value=False),),
        further=(FurtherStep(id="manual_liquidation", title="Liquidate at-risk positions by hand (risk desk)"),
                 FurtherStep(id="debug_fix", title="Debug and fix the liquidation engine"),
                 FurtherStep(id="restart", title="Restart it: liquidation_enabled=true (super admin)",
                             role=Role.SUPER_ADMIN)),
        recovery=Recovery(mode="human", role=Role.SUPER_ADMIN,
                          why="the manual says debug, fix, restart; liquidation_enabled is a super admin's switch"),
    ),
    Rule(
        id="hot_wallet", alert="Hot wallet <$100K", manual_trigger="Available <$100K",
        manual_action="Pause large withdrawals (>$10K)", manual_further="Transfer from cold wallet",
        trigger=(_c(metric="hot_wallet_usd", op="<", threshold=100_000),), hold=_POLLS3,
        clear=(_c(metric="hot_wallet_usd", op=">=", threshold=150_000),),
        clear_why="refilled with headroom: 150% of the limit, so one large withdrawal does not re-trigger",
        actions=(CoreMove(action="pause_large_withdrawals", body={"above_usd": 10_000},
                          undo="resume_large_withdrawals"),),
        further=(FurtherStep(id="cold_transfer", title="Transfer from the cold wallet"),),
        recovery=Recovery(mode="auto", clear_hold=timedelta(minutes=5),
                          why="wallet refilled and stable for 5 minutes: large withdrawals resume"),
    ),
    Rule(
        id="order_deviation", alert="Single-order deviation >5%", manual_trigger="Price discrepancy >5%",
        manual_action="Pause symbol HL routing → internal", manual_further="Debug cause",
        trigger=(_c(metric="order_price_deviation", op=">", threshold=0.05),), hold=_POLLS2, per_symbol=True,
        clear=(_c(metric="order_price_deviation", op="<=", threshold=0.01),),
        clear_why="the symbol's fills back within 1% of the reference price",
        actions=(CoreMove(action="pause_symbol_hl_routing", body={"symbol": SYMBOL}, undo="resume_symbol_hl_routing"),),
        further=(FurtherStep(id="debug_cause", title="Debug the cause (price feed, HL routing path)"),),
        recovery=Recovery(mode="human", role=Role.RISK_MANAGER,
                          why="the manual says debug the cause first: routing resumes when a human has"),
    ),
    Rule(
        id="asset_mismatch", alert="User asset mismatch >0.1%", manual_trigger="Discrepancy >0.1%",
        manual_action="Pause trading, start manual reconciliation", manual_further="Manual adjustment",
        trigger=(_c(metric="asset_mismatch_ratio", op=">", threshold=0.001),), hold=_POLLS2,
        clear=(_c(metric="asset_mismatch_ratio", op="<=", threshold=0.001),),
        clear_why="user balances and holdings agree within 0.1% again",
        actions=(CoreMove(action="pause_trading", undo="resume_trading"), CoreMove(action="start_reconciliation")),
        further=(FurtherStep(id="reconcile", title="Reconcile user balances against books and wallets"),
                 FurtherStep(id="manual_adjustment", title="Manual adjustment of the mismatched balances"),
                 FurtherStep(id="sign_off", title="Reconciliation signed off (super admin) before trading resumes",
                             role=Role.SUPER_ADMIN)),
        recovery=Recovery(mode="human", role=Role.SUPER_ADMIN,
                          why="trading resumes only after the reconciliation is signed off"),
        rollback=RollbackSpec(severity="data_inconsistency", scope="cross_module",
                              why="a ledger gap is a data inconsistency: the decision tree rolls back within 5 "
                                  "minutes (HL_MODE, internalization off) unless the responder cancels"),
    ),
)

BY_ID: dict[str, Rule] = {r.id: r for r in RULES}
assert len(BY_ID) == len(RULES) == 7, "the manual has seven P0 rows"


class AutoModeSwitch(BaseModel):
    """`auto_mode_switch` (Control Matrix): force HL_MODE while volatility or HL latency is too high.

    Thresholds are the switches `force_hl_volatility_pct` and `force_hl_latency_ms`, read live. The
    monitor forces after `force_polls` reads over a threshold, releases after `release_polls` reads
    under both, and releases only what it forced, by compare-and-swap, never while a rollback or
    degradation runs.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    force_polls: int = 1
    release_polls: int = 30
    why: str = ("forcing is the safe direction and happens at the first read over a threshold; releasing waits "
                "30 reads (30 s) under both so a volatile market does not flip routing back and forth")
    switch: str = "auto_mode_switch"  # on/off for the whole rule
    routing: str = "routing_mode"  # what is forced
    forced: str = "HL_MODE"  # to what: routing_mode's rollback value, so a pre-approved move
    volatility_limit: str = "force_hl_volatility_pct"  # the switch holding the volatility threshold (%)
    latency_limit: str = "force_hl_latency_ms"  # the switch holding the HL latency threshold (ms)

    @model_validator(mode="after")
    def _switches_exist(self) -> "AutoModeSwitch":
        for name in (self.switch, self.routing, self.volatility_limit, self.latency_limit):
            switches.get(name)
        if switches.get(self.routing).rollback_value != self.forced:
            raise ValueError(f"auto mode forces {self.routing}={self.forced}, which is not its rollback value")
        return self

    def over(self, values: dict[str, Any], health: dict[str, Any]) -> list[str]:
        """Why routing must be forced at this read (empty: both under their thresholds). `values`: the
        switches now; `health`: the core's snapshot (volatility_pct per symbol, hl_latency_ms)."""
        vols = health.get("volatility_pct") or {}
        vol = max(vols.values(), default=0.0)
        lat = health.get("hl_latency_ms") or 0.0
        vmax, lmax = values.get(self.volatility_limit), values.get(self.latency_limit)
        why = []
        if vmax is not None and vol > vmax:
            worst = max(vols, key=vols.get)
            why.append(f"volatility {worst} {vol:g}% > {vmax:g}%")
        if lmax is not None and lat > lmax:
            why.append(f"HL latency {lat:g} ms > {lmax} ms")
        return why


AUTO_MODE = AutoModeSwitch()


def get(rule_id: str) -> Rule:
    try:
        return BY_ID[rule_id]
    except KeyError:
        raise KeyError(f"unknown P0 rule {rule_id!r} (one of {', '.join(BY_ID)})") from None


NEGATED = {"<": ">=", "<=": ">", ">": "<=", ">=": "<"}  # the comparison that holds exactly when op does not


def not_triggered(rule_id: str, **kw: Any) -> HealthCheck:
    """A health check that passes while `rule_id` does not fire: its (single) trigger negated, at the
    table's threshold, named after its alert. How a canary's "no open P0" and a rollback's observation
    read the P0 table without restating it."""
    rule = get(rule_id)
    (t,) = rule.trigger
    return HealthCheck(metric=t.metric, op=NEGATED[t.op], threshold=t.threshold, why=f"P0: {rule.alert}", **kw)


def preapproved_switch_values() -> list[tuple[str, Any]]:
    """The P0 table's switch moves: pre-approved for the monitor and on-call (manual/approvals.py)."""
    out: list[tuple[str, Any]] = []
    for r in RULES:
        for m in r.switch_moves:
            if (m.switch, m.value) not in out:
                out.append((m.switch, m.value))
    return out
