"""The Canary Strategy (manual: "Canary Strategy") as data: Phase 2 and Phase 3, stage by stage.

The manual names the stages and their days and leaves the rest blank ("Pass Criteria", Phase 3's
"Failure:"). Each blank is filled here, with the reasoning written beside the value. The workflow
(workflows/canary.py) interprets a `CanaryPlan` with the shared step vocabulary (manual/steps.py):

    for each stage:  ApplySwitches (the stage's profile, one etcd transaction, authority "plan")
                     Observe       (the stage's days; health checks every `interval`; `consecutive`
                                    failed checks in a row -> automatic rollback to the Phase 1 snapshot)
                     gate          (None: promote automatically when the days are over;
                                    an AwaitConfirmation: wait, still checking, until a human promotes)

"Phase 1" is whatever configuration is in force when the canary starts: the workflow snapshots it
and a rollback restores it (one transaction) and pages. "Fix, recanary" is a new run.

Interpretation of the switches (manual/switches.py): `routing_mode` NORMAL_MODE internalizes
orders up to `normal_threshold`, further capped by `max_order_size_internal`; only symbols in
`per_symbol_betting`; only `betting_traffic_pct` percent of the eligible orders; the rest go to HL.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from manual import alerts, approvals, switches
from contracts.roles import Role
from manual.steps import ApplySwitches, AwaitConfirmation, HealthCheck, Observe, Plan

DAY = timedelta(days=1)
CHECK_INTERVAL = timedelta(minutes=5)
GATE_REPAGE = timedelta(hours=4)
# Under --time-scale a check interval is divided too, but never below this (a health read every few
# milliseconds would measure the worker, not the exchange). Written into every scaled audit reason.
MIN_SCALED_INTERVAL = timedelta(seconds=1)
MIN_SCALED_REPAGE = timedelta(seconds=30)  # and a gate does not re-page every second
PROMOTE_ROLE = Role.RISK_MANAGER  # `promote` and `abort` (and `resume`) need at least this role
# Who may make each decision on a running canary: pause and extend only slow it down, so on-call may;
# resume, promote and abort decide its course.
DECISION_ROLES: dict[str, Role] = {"pause": Role.ON_CALL, "extend": Role.ON_CALL, "resume": PROMOTE_ROLE,
                                   "promote": PROMOTE_ROLE, "abort": PROMOTE_ROLE}
Phase = Literal["phase2", "phase3"]


def human(td: timedelta | None) -> str:
    """3d, 4h, 5m, 1h30m, 2.5s: durations as an operator reads them."""
    if td is None:
        return "-"
    total = td.total_seconds()
    if total < 60 and total != int(total):
        return f"{total:.3g}s"
    s = int(total)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    out = "".join(p for p in (f"{d}d" if d else "", f"{h}h" if h else "", f"{m}m" if m else "",
                              f"{s}s" if s and not d else "") if p)
    return out or "0s"


class Stage(BaseModel):
    """One canary stage: profile -> observation -> gate. `why` is the reasoning for the profile."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    number: int = Field(ge=1, le=20)
    name: str = Field(min_length=1, max_length=60)
    days: str  # the manual's days, e.g. "1-3"
    why: str
    apply: ApplySwitches | None = None  # None: the stage changes no switch
    observe: Observe
    gate: AwaitConfirmation | None = None  # after the observation; None = automatic promotion

    @model_validator(mode="after")
    def _shape(self) -> "Stage":
        if self.apply is not None and self.apply.authority != "plan":
            raise ValueError(f"stage {self.number}: a stage profile runs under the plan's approval (authority 'plan')")
        if self.apply is not None and self.apply.restore:
            raise ValueError(f"stage {self.number}: a stage profile lists its values (restore is for rollbacks)")
        if self.observe.on_breach != "rollback":
            raise ValueError(f"stage {self.number}: a canary observation rolls back on breach (on_breach='rollback')")
        if not self.observe.checks:
            raise ValueError(f"stage {self.number}: a stage needs pass criteria (health checks)")
        if self.gate is not None:
            if self.gate.expects != "promote":
                raise ValueError(f"stage {self.number}: a gate waits for 'promote'")
            if not self.gate.min_role.at_least(Role.ON_CALL):
                raise ValueError(f"stage {self.number}: a gate needs a human of on_call or above")
        return self

    @property
    def title(self) -> str:
        return f"Stage {self.number}: {self.name} (days {self.days})"

    @property
    def duration(self) -> timedelta:
        return self.observe.duration

    @property
    def profile(self) -> dict[str, Any]:
        return dict(self.apply.changes) if self.apply else {}


class CanaryPlan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    phase: Phase
    title: str
    objective: str
    cycle: str
    failure: str
    notes: tuple[str, ...] = ()
    stages: tuple[Stage, ...] = Field(min_length=1, max_length=20)
    time_scale: float = Field(default=1.0, ge=1.0, le=10_000_000)

    @model_validator(mode="after")
    def _valid(self) -> "CanaryPlan":
        if [s.number for s in self.stages] != list(range(1, len(self.stages) + 1)):
            raise ValueError(f"{self.phase}: stages must be numbered 1..{len(self.stages)} in order")
        self.as_plan()  # one kind per step, unique step names
        if not self.touched():
            raise ValueError(f"{self.phase}: the plan changes no switch")
        # A person signs off the last widening (or the close): a gate of a risk manager or above on
        # one of the last two stages. A --plan file cannot drop it.
        last_two = [s.gate for s in self.stages[-2:] if s.gate is not None]
        if not any(g.min_role.at_least(PROMOTE_ROLE) for g in last_two):
            raise ValueError(f"{self.phase}: the last or second-to-last stage needs a gate of "
                             f"{PROMOTE_ROLE.value} or above (e.g. before Full Open)")
        return self

    def as_plan(self) -> Plan:
        """The stages as one flat list of shared steps (validates one kind per step, unique names)."""
        steps: list = []
        for s in self.stages:
            steps += [x for x in (s.apply, s.observe, s.gate) if x is not None]
        return Plan(name=f"canary {self.phase}", steps=tuple(steps))

    def touched(self) -> list[str]:
        out: list[str] = []
        for s in self.stages:
            out += [k for k in s.profile if k not in out]
        return out

    def owner_role(self) -> Role:
        """Who may start (approve) this plan: the owner role of every switch it touches."""
        return approvals.plan_owner_role(self.touched())

    @property
    def total(self) -> timedelta:
        return sum((s.duration for s in self.stages), timedelta(0))

    def scaled(self, factor: float) -> "CanaryPlan":
        """Every duration divided by `factor` (check intervals not below MIN_SCALED_INTERVAL, gate
        re-pages not below MIN_SCALED_REPAGE)."""
        if factor == 1:
            return self
        f = float(factor) * self.time_scale

        def div(td: timedelta) -> timedelta:
            return timedelta(seconds=td.total_seconds() / factor)

        data = self.model_dump()
        for st in data["stages"]:
            ob = st["observe"]
            ob["duration"] = div(ob["duration"])
            ob["interval"] = min(max(div(ob["interval"]), MIN_SCALED_INTERVAL), ob["duration"])
            if st["gate"] is not None:
                st["gate"]["timeout"] = max(div(st["gate"]["timeout"]), MIN_SCALED_REPAGE)
        data["time_scale"] = f
        return CanaryPlan.model_validate(data)

    def scale_note(self) -> str:
        if self.time_scale == 1:
            return ""
        return (f" [time-scale {self.time_scale:g}: every duration divided by {self.time_scale:g}, "
                f"check intervals at least {MIN_SCALED_INTERVAL.total_seconds():g}s, gate re-pages at least "
                f"{MIN_SCALED_REPAGE.total_seconds():g}s apart]")


# -- pass criteria ----------------------------------------------------------------------------------
def _hc(metric: str, op: str, threshold: float | bool = 0, why: str = "", **kw: Any) -> HealthCheck:
    return HealthCheck(metric=metric, op=op, threshold=threshold, why=why, **kw)


ERROR_RATE = _hc("error_rate", "<=", 0.01, "the manual's failure line: >1% error rate rolls back to Phase 1")
HL_ROUTING_ZERO = _hc("hl_routing_failures", "==", 0, consecutive=1,
                      why="Phase 2 objective: full HL routing with zero failures; one failure fails the canary")
HL_UP = _hc("hl_connected", "==", True, why="every order not internalized goes to HL: HL must be up")
PRECISION = _hc("exposure_mismatches", "==", 0, consecutive=2,
                why="risk calc precision: the core's exposure must equal the one recomputed from positions "
                    "(GET /v1/risk/exposure); two in a row, so one torn read is not a failure")
DAILY_LOSS = _hc("daily_net_pnl_usd", ">=", threshold_switch="daily_net_loss_limit", threshold_factor=-1.0,
                 consecutive=1, why="today's internal loss within daily_net_loss_limit (the stage's own, tighter "
                                    "value): past it the canary has lost more than it was allowed to")
RESERVE = _hc("risk_reserve_usd", ">=", threshold_switch="risk_reserve_min_usd", consecutive=1,
              why="the risk reserve stays above risk_reserve_min_usd: below it internalization must stop")
EXPOSURE = _hc("internal_net_exposure_usd", "<=", threshold_switch="max_internal_exposure_usd", consecutive=1,
               why="internal net exposure (worst symbol) within the stage's cap: above it the core is not "
                   "enforcing its own limit")
# "No open P0": the P0 table's triggers that the health snapshot shows, as pass criteria (each its
# rule's trigger negated, at the threshold written once in manual/alerts.py).
P0_CLEAR = (
    alerts.not_triggered("asset_mismatch", consecutive=1),
    alerts.not_triggered("hl_margin"),
    alerts.not_triggered("hedge_margin"),
)

PHASE2_CHECKS = (ERROR_RATE, HL_ROUTING_ZERO, HL_UP)
PHASE2_RISK_CHECKS = (*PHASE2_CHECKS, PRECISION)
PHASE3_CHECKS = (ERROR_RATE, DAILY_LOSS, RESERVE, EXPOSURE, HL_UP, *P0_CLEAR)
CONSECUTIVE = 3  # failed checks in a row (any check): 15 minutes at one check every 5 minutes


def _observe(name: str, duration: timedelta, checks: tuple[HealthCheck, ...], *, probes: tuple = (),
             interval: timedelta = CHECK_INTERVAL) -> Observe:
    return Observe(name=name, duration=duration, interval=interval, checks=checks, consecutive=CONSECUTIVE,
                   on_breach="rollback", probes=probes, local_reads=True)


def _apply(name: str, reason: str, **changes: Any) -> ApplySwitches:
    return ApplySwitches(name=name, changes=changes, authority="plan", reason=reason)


def _gate(name: str, prompt: str) -> AwaitConfirmation:
    return AwaitConfirmation(name=name, expects="promote", min_role=PROMOTE_ROLE, timeout=GATE_REPAGE,
                             on_timeout="repage_and_wait", prompt=prompt)


# -- Phase 2: Routing + Hedging ---------------------------------------------------------------------
PHASE2 = CanaryPlan(
    phase="phase2",
    title="Phase 2 Canary (Routing + Hedging)",
    objective="7 days full HL routing with zero failures, risk calc precision verified",
    cycle="7 days (4 stages)",
    failure=">1% error rate (3 checks in a row), any HL routing failure, or a risk-calc mismatch (2 in a row) "
            "-> automatic rollback to Phase 1 (the snapshot), page; fix, then a new canary run",
    notes=(
        "The manual heads Phase 2 '7 days (4 stages)' but names three. The fourth here is a closing "
        "review: the configuration stays as Stage 3 left it, checks go on, and a risk manager confirms "
        "the pass criteria (`promote`) to close the canary.",
        "Phase 2 never turns internalization on: HL_MODE routes every order to HL whatever "
        "global_betting_enabled says, so the plan does not touch it and a risk manager may start it.",
        "hedge_dry_run stays true at the end: with nothing internalized there is nothing to hedge; Phase 3's "
        "first stage turns real hedging on together with internalization.",
    ),
    stages=(
        Stage(
            number=1, name="Full HL Routing", days="1-3",
            why="Every order to Hyperliquid (A-book only): proves routing at full volume before any risk is "
                "taken. auto_mode_switch off so nothing moves routing away from HL_MODE; betting_traffic_pct "
                "0 as a second lock; the hedge engine off until Stage 3 simulates it.",
            apply=_apply("s1_apply_full_hl_routing", "canary phase2 stage 1 (Full HL Routing)",
                         routing_mode="HL_MODE", auto_mode_switch=False, betting_traffic_pct=0, hedge_enabled=False),
            observe=_observe("s1_observe", 3 * DAY, PHASE2_CHECKS),
        ),
        Stage(
            number=2, name="Risk Monitoring", days="4-5",
            why="No switch changes: the risk engine keeps computing exposure on the positions it sees, and "
                "every check recomputes that exposure from the positions (GET /v1/risk/exposure) and compares "
                "it with the core's figure.",
            observe=_observe("s2_observe", 2 * DAY, PHASE2_RISK_CHECKS, probes=("exposure_precision",)),
        ),
        Stage(
            number=3, name="Simulated Hedging", days="6-7",
            why="The hedge engine computes hedges from real exposure but sends nothing to HL "
                "(hedge_dry_run): its plans can be reviewed without a single hedge order at risk.",
            apply=_apply("s3_apply_simulated_hedging", "canary phase2 stage 3 (Simulated Hedging)",
                         hedge_enabled=True, hedge_dry_run=True),
            observe=_observe("s3_observe", 2 * DAY, PHASE2_RISK_CHECKS, probes=("exposure_precision",)),
        ),
        Stage(
            number=4, name="Closing Review", days="7, at its end",
            why="Added (the manual counts 4 stages, names 3): no switch changes; at least an hour more of "
                "checks, then a risk manager confirms the pass criteria. Checks continue while waiting.",
            observe=_observe("s4_observe", timedelta(hours=1), PHASE2_RISK_CHECKS, probes=("exposure_precision",)),
            gate=_gate("s4_review", "Phase 2 pass criteria: 7 days of full HL routing with zero failures, error "
                                    "rate <= 1%, risk calc precision verified, hedge plans computed in dry run. "
                                    "A risk manager confirms with `rollbackctl canary promote phase2 --as OP`."),
        ),
    ),
)


# -- Phase 3: Internalization Launch --------------------------------------------------------------------
PHASE3 = CanaryPlan(
    phase="phase3",
    title="Phase 3 Canary (Internalization Launch)",
    objective="1-week internal test, BTC/ETH internalization open, gradual ramp to production",
    cycle="10 days (4 stages)",
    failure="any pass criterion failing 3 checks in a row (error rate > 1%, HL down, P0 margins), or once "
            "(daily loss past daily_net_loss_limit, reserve below risk_reserve_min_usd, exposure above "
            "max_internal_exposure_usd, asset mismatch) -> automatic rollback to Phase 1 (the snapshot: "
            "internalization off as before), page; fix, then a new canary run",
    notes=(
        "Pass criteria are the same in every stage; the limits they read (daily loss, reserve minimum, "
        "exposure cap) are the stage's own switch values, so they tighten with the stage.",
        "Widening is automatic while checks pass, except into Full Open: a risk manager promotes it.",
        "Starting Phase 3 turns global_betting_enabled on: the starter must be a super admin.",
    ),
    stages=(
        Stage(
            number=1, name="Ultra-Conservative", days="1-3",
            why="First real B-book risk, kept tiny: BTC only (the deepest HL market to hedge in), 5% of eligible "
                "orders, orders up to $1K (normal_threshold = max_order_size_internal = $1K), a $50K exposure "
                "cap (a tenth of the matrix's), hedging real and early (tier 1 at $10K, tier 2 at $40K), a $25K "
                "daily loss breaker and the reserve minimum raised to the matrix's cautious $300K. NORMAL_MODE, "
                "auto mode switching off: the mode stays the one chosen here.",
            apply=_apply("s1_apply_ultra_conservative", "canary phase3 stage 1 (Ultra-Conservative)",
                         global_betting_enabled=True, routing_mode="NORMAL_MODE", auto_mode_switch=False,
                         per_symbol_betting=["BTC"], betting_traffic_pct=5, normal_threshold=1_000,
                         max_order_size_internal=1_000, max_internal_exposure_usd=50_000,
                         hedge_enabled=True, hedge_dry_run=False, hedge_threshold_tier1=10_000,
                         hedge_threshold_tier2=40_000, daily_net_loss_limit=25_000, risk_reserve_min_usd=300_000),
            observe=_observe("s1_observe", 3 * DAY, PHASE3_CHECKS),
        ),
        Stage(
            number=2, name="Low Risk", days="4-5",
            why="ETH joins BTC; 20% of eligible orders, orders up to $5K, a $150K cap (hedge tiers at $30K / "
                "$120K), $100K daily loss breaker; reserve minimum still $300K.",
            apply=_apply("s2_apply_low_risk", "canary phase3 stage 2 (Low Risk)",
                         per_symbol_betting=["BTC", "ETH"], betting_traffic_pct=20, normal_threshold=5_000,
                         max_order_size_internal=5_000, max_internal_exposure_usd=150_000,
                         hedge_threshold_tier1=30_000, hedge_threshold_tier2=120_000, daily_net_loss_limit=100_000),
            observe=_observe("s2_observe", 2 * DAY, PHASE3_CHECKS),
        ),
        Stage(
            number=3, name="Target Config", days="6-7",
            why="Every limit at the control matrix's default (the production target): $10K orders, $500K cap, "
                "hedge tiers $100K / $500K, $500K daily loss breaker, $200K reserve minimum; half the eligible "
                "orders. A risk manager then signs off Full Open.",
            apply=_apply("s3_apply_target_config", "canary phase3 stage 3 (Target Config)",
                         betting_traffic_pct=50, normal_threshold=10_000, max_order_size_internal=10_000,
                         max_internal_exposure_usd=500_000, hedge_threshold_tier1=100_000,
                         hedge_threshold_tier2=500_000, daily_net_loss_limit=500_000, risk_reserve_min_usd=200_000),
            observe=_observe("s3_observe", 2 * DAY, PHASE3_CHECKS),
            gate=_gate("s3_gate_full_open", "Stage 3 (Target Config) passed its checks. Full Open sends 100% of "
                                            "eligible orders to internalization and turns auto mode switching on: "
                                            "a risk manager promotes (`rollbackctl canary promote phase3 --as OP`)."),
        ),
        Stage(
            number=4, name="Full Open", days="8-10",
            why="100% of eligible BTC/ETH orders internalized within the target limits, and auto mode switching "
                "on (the core may move between NORMAL_MODE and BETTING_MODE and force HL on volatility or HL "
                "latency). Three days of checks at full production before the canary closes.",
            apply=_apply("s4_apply_full_open", "canary phase3 stage 4 (Full Open)",
                         betting_traffic_pct=100, auto_mode_switch=True),
            observe=_observe("s4_observe", 3 * DAY, PHASE3_CHECKS),
        ),
    ),
)

PLANS: dict[str, CanaryPlan] = {"phase2": PHASE2, "phase3": PHASE3}


def plan_for(phase: str, time_scale: float = 1.0) -> CanaryPlan:
    try:
        plan = PLANS[phase]
    except KeyError:
        raise ValueError(f"unknown canary phase {phase!r}: phase2 or phase3") from None
    return plan.scaled(time_scale)


def load_plan(text: str, phase: str | None = None, time_scale: float = 1.0) -> CanaryPlan:
    """A plan from a JSON file's text (validated whole, before anything starts)."""
    plan = CanaryPlan.model_validate_json(text)
    if phase is not None and plan.phase != phase:
        raise ValueError(f"the plan file is for {plan.phase}, not {phase}")
    return plan.scaled(time_scale)


def describe(plan: CanaryPlan) -> str:
    """The plan as text: stages, profiles, checks and the reasoning beside each."""
    lines = [f"{plan.title}", f"  objective: {plan.objective}", f"  cycle: {plan.cycle}" + plan.scale_note(),
             f"  failure: {plan.failure}",
             f"  approval: starting it needs {plan.owner_role().value} (owner of every switch it touches)"]
    for n in plan.notes:
        lines.append(f"  note: {n}")
    for s in plan.stages:
        lines.append(f"\n  {s.title}  [{human(s.duration)}, a check every {human(s.observe.interval)}, "
                     f"{s.observe.consecutive} failed in a row roll back]")
        lines.append(f"    why: {s.why}")
        if s.profile:
            lines.append("    profile: " + ", ".join(f"{k}={switches.get(k).render(v)}" for k, v in s.profile.items()))
        prev = plan.stages[s.number - 2].observe if s.number > 1 else None
        same = prev is not None and prev.checks == s.observe.checks and prev.probes == s.observe.probes
        for c in () if same else s.observe.checks:
            t = (f"{'-' if c.threshold_factor == -1 else ''}{c.threshold_switch}" if c.threshold_switch
                 else str(c.threshold))
            strict = f" (alone after {c.consecutive})" if c.consecutive else ""
            lines.append(f"    check: {c.metric} {c.op} {t}{strict}  -- {c.why}")
        if same:
            lines.append(f"    checks: as stage {s.number - 1}")
        elif s.observe.probes:
            lines.append(f"    probes: {', '.join(s.observe.probes)}")
        gate = (f"{s.gate.min_role.value} promotes (re-page every {human(s.gate.timeout)})" if s.gate
                else "automatic when the days are over and the checks pass")
        lines.append(f"    gate: {gate}")
    return "\n".join(lines)
