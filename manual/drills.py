"""Drill scenarios, generated from the manual's own tables (the manual: "Documentation & Training").

Nothing here is written per scenario by hand: each P0 rule (manual/alerts.py RULES), each rollback
severity x scope (manual/rollback.py), each degradation level (manual/degradation.py LEVELS), each canary
phase failing its pass criteria (manual/canary.py PLANS) and HL going down during a rollback become one
scenario, with
- the fault that rehearses it: a body for the trading core's fault API (`POST /sim/faults`), computed from
  the rule's own trigger and clear conditions (the trigger holds, the clear does not) or from the step's
  health checks (one is failed);
- what it teaches, in the manual's words (the rule's action and checklist, the level's switches);
- the SLAs the responder is scored against, as the manual states them; `scaled()` divides them by a drill's
  speed, with the floors the workflows enforce (a re-page interval never below MIN_REPAGE_INTERVAL).

A drill is practice: it never runs against a stack marked production (the drill runner refuses it).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from contracts.incidents import Timings
from contracts.trading_core import HealthSnapshot
from manual import alerts, canary, degradation, drill_kinds, rollback
from manual.rollback import MIN_REPAGE_INTERVAL, NEXT_SCOPE, OBSERVE_CHECKS, Durations, Scope, Severity
from manual.steps import HealthCheck

# The kinds, in the order `drill list` shows them, and the speed limit (manual/drill_kinds.py: light, for the CLI).
Kind = drill_kinds.Kind
KINDS = drill_kinds.KINDS
MAX_SPEED = drill_kinds.MAX_SPEED
# The symbol a per-symbol rule is rehearsed on (every trading core lists it; the simulator does).
DRILL_SYMBOL = "BTC"
# The module a single-module rollback drill rolls back unless the drill names another (manual/rollback.py
# MODULES): the rollback scenarios' fault is a failing error rate, internalization's symptom.
DRILL_MODULE = "internalization"
# Degradation levels have no machine trigger in the manual (its "Trigger" column is prose). The rules whose
# faults together rehearse each level's trigger:
LEVEL_FAULTS: dict[int, tuple[str, ...]] = {
    1: ("liquidation_failure",),  # "Internalization/Liquidation failure (HL OK)"
    2: ("liquidation_failure", "hedge_margin"),  # "Liquidation completely broken / Multi-module failures"
    3: ("asset_mismatch",),  # "Full outage / Database unavailable / Asset at risk"
}


class Sla(BaseModel):
    """One clock the responder is scored against."""

    model_config = ConfigDict(frozen=True)
    name: str  # "acknowledge", "first action", "decision window", "observe", "confirm"
    within: timedelta
    what: str  # from the manual
    repage: bool = False  # missing it re-pages: scaled, it keeps the workflows' floor (MIN_REPAGE_INTERVAL)


class Scenario(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str  # "p0-hot_wallet", "rollback-critical_path_failure-cross_module", "degrade-2", ...
    kind: Kind
    title: str
    teaches: str
    fault: dict[str, Any]  # POST /sim/faults (a metric override per health field)
    slas: tuple[Sla, ...]
    rule: str | None = None
    severity: Severity | None = None
    scope: Scope | None = None
    level: int | None = None
    phase: str | None = None


# -- faults from conditions ---------------------------------------------------------------------------
def _integral(metric: str) -> bool:
    return HealthSnapshot.model_fields[metric].annotation is int


def _failing(metric: str, op: str, threshold: float | bool) -> float | bool:
    """A value for which `metric op threshold` holds, well past the line (x2, /2) so it is unambiguous."""
    if isinstance(threshold, bool):
        return threshold if op == "==" else not threshold
    t = float(threshold)
    if op in (">", ">="):
        v = t * 2 if t > 0 else 1.0
    elif op in ("<", "<="):
        v = t / 2 if t > 0 else -1.0
    else:  # "=="
        v = t
    if t <= 1 < v and metric.endswith(("_rate", "_ratio")):  # a share: at most 1
        v = 1.0
    return int(v) if _integral(metric) else v


def _violating(metric: str, op: str, threshold: float | bool) -> float | bool:
    """A value for which `metric op threshold` does not hold."""
    if isinstance(threshold, bool):
        return (not threshold) if op == "==" else threshold
    if op == "==":
        v = float(threshold) + 1
        return int(v) if _integral(metric) else v
    return _failing(metric, alerts.NEGATED[op], threshold)


def _put(fault: dict[str, Any], metric: str, value: Any, per_symbol: bool) -> None:
    fault[metric] = {DRILL_SYMBOL: float(value)} if per_symbol else value


def rule_fault(rule: alerts.Rule) -> dict[str, Any]:
    """Health overrides under which `rule` fires and does not clear: its first trigger on a trading-core
    field held well past its line, and every clear condition on such a field made false."""
    core = [c for c in rule.trigger if c.metric in alerts.CORE_METRICS]
    if not core:
        raise ValueError(f"rule {rule.id}: no trigger on a trading-core health field to rehearse it with")
    fault: dict[str, Any] = {}
    c = core[0]
    _put(fault, c.metric, _failing(c.metric, c.op, c.threshold), rule.per_symbol)
    for cl in rule.clear:  # the trigger's own field, held past its line, already fails its clear
        if cl.metric in alerts.CORE_METRICS and cl.metric not in fault:
            _put(fault, cl.metric, _violating(cl.metric, cl.op, cl.threshold), rule.per_symbol)
    return fault


def check_fault(check: HealthCheck) -> dict[str, Any]:
    """Health overrides under which one pass criterion fails."""
    if check.threshold_switch is not None:
        raise ValueError(f"{check.metric}: its threshold comes from a switch; pick a fixed-threshold check")
    per_symbol = check.metric in alerts.PER_SYMBOL_METRICS
    fault: dict[str, Any] = {}
    _put(fault, check.metric, _violating(check.metric, check.op, check.threshold), per_symbol)
    return fault


# -- the scenarios --------------------------------------------------------------------------------------
def _p0_slas() -> tuple[Sla, ...]:
    return (Sla(name="acknowledge", within=alerts.SLA.ack, repage=True,
                what="the manual: acknowledge a P0 within 5 minutes, or it escalates"),
            Sla(name="first action", within=alerts.SLA.action, repage=True, what="the manual: act within 10 minutes"))


def _rollback_slas(severity: Severity) -> tuple[Sla, ...]:
    d = Durations()
    out = []
    if severity is Severity.DATA:
        out.append(Sla(name="decision window", within=d.decision_window,
                       what="the decision tree: a data inconsistency is rolled back within 5 minutes"))
    out += [Sla(name="observe", within=d.observe, what="the decision tree: observe 5 minutes after the change"),
            Sla(name="confirm", within=d.observe + d.confirm_sla, repage=True,
                what="confirm the rollback before the first re-page (10 minutes after the observation)")]
    return tuple(out)


def _move(m: alerts.CoreMove | alerts.SwitchMove) -> str:
    if isinstance(m, alerts.SwitchMove):
        return f"{m.switch} {'lowered to' if m.mode == 'lower_to' else '='} {m.value}"
    body = ", ".join(f"{k}={v}" for k, v in m.body_for(DRILL_SYMBOL).items())
    return f"core {m.action}" + (f" ({body})" if body else "")


def _p0(rule: alerts.Rule) -> Scenario:
    moves = "; ".join(_move(m) for m in rule.actions)
    steps = "; ".join(f.title for f in rule.further)
    return Scenario(
        name=f"p0-{rule.id}", kind="p0", rule=rule.id, title=f"P0: {rule.alert}",
        teaches=(f"Trigger: {rule.manual_trigger}. Immediate action: {rule.manual_action} (taken by the monitor: "
                 f"{moves}). Acknowledge the page, then work the checklist: {steps}."),
        fault=rule_fault(rule), slas=_p0_slas())


def _rollback(severity: Severity, scope: Scope) -> Scenario:
    nxt = NEXT_SCOPE[scope]
    return Scenario(
        name=f"rollback-{severity.value}-{scope.value}", kind="rollback", severity=severity, scope=scope,
        title=f"Rollback: {severity.value.replace('_', ' ')}, {scope.value.replace('_', ' ')}",
        teaches=(f"The decision tree for a {severity.value.replace('_', ' ')} at {scope.value.replace('_', ' ')} "
                 f"scope: the checklist, the change set, 5 minutes of observation"
                 f"{f' (a breach escalates to {nxt.value.replace(chr(95), chr(32))})' if nxt else ''}, "
                 "your confirmation, then the fix and the 5% restore canary."),
        fault=check_fault(OBSERVE_CHECKS[0]), slas=_rollback_slas(severity))


def _degrade(level: degradation.DegradationLevel) -> Scenario:
    fault: dict[str, Any] = {}
    for rid in LEVEL_FAULTS[level.level]:
        fault.update(rule_fault(alerts.get(rid)))
    sets = ", ".join(f"{k}={v}" for k, v in level.switch_set.items())
    return Scenario(
        name=f"degrade-{level.level}", kind="degradation", level=level.level,
        title=f"Degradation Level {level.level}: {level.name}",
        teaches=(f"Trigger: {level.trigger}. Level {level.level} sets {sets}"
                 f"{'; the API answers 503' if level.level == 3 else ''}. Who may start it: "
                 f"{level.permission.value}{' (pre-approved)' if level.preapproved else ''}. What stays available: "
                 f"{'; '.join(level.available)}."),
        fault=fault, slas=_rollback_slas(Severity.CRITICAL))


def _canary(plan: canary.CanaryPlan) -> Scenario:
    check = next(c for c in plan.stages[0].observe.checks if c.threshold_switch is None)
    return Scenario(
        name=f"canary-{plan.phase}-fails", kind="canary", phase=plan.phase,
        title=f"{plan.title}: a stage fails its pass criteria",
        teaches=(f"A {plan.phase} canary whose health fails {check.metric} {check.op} {check.threshold:g} "
                 f"({check.why}) rolls back on its own and pages: read the page, check the rollback landed, "
                 "find the cause before a restart."),
        fault=check_fault(check), slas=())


def _hl_down() -> Scenario:
    hl = alerts.get("hl_disconnection")
    return Scenario(
        name="rollback-hl-down", kind="hl_down_rollback", severity=Severity.CRITICAL, scope=Scope.CROSS, rule=hl.id,
        title="HL goes down during a cross-module rollback",
        teaches=("A critical cross-module rollback moves every order to HL; HL then drops. The observation's "
                 "'HL_MODE needs HL up' check breaches and the rollback escalates to full system (Level 3); the "
                 "HL P0 fires beside it. Decide with both in view."),
        fault=rule_fault(hl), slas=_rollback_slas(Severity.CRITICAL) + _p0_slas())


def scenarios() -> list[Scenario]:
    out = [_p0(r) for r in alerts.RULES]
    out += [_rollback(sev, sc) for sev in Severity for sc in Scope]
    out += [_degrade(lv) for lv in degradation.LEVELS.values()]
    out += [_canary(p) for p in canary.PLANS.values()]
    out.append(_hl_down())
    return out


class UnknownScenario(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def get(name: str) -> Scenario:
    found = {s.name: s for s in scenarios()}
    if name not in found:
        raise UnknownScenario(f"no drill scenario {name!r}: `rollbackctl drill list` shows the {len(found)} there are")
    return found[name]


def _speed(speed: float) -> None:
    if not 1 <= speed <= MAX_SPEED:
        raise ValueError(f"speed must be between 1 and {MAX_SPEED}, got {speed:g}")


def scaled(slas: tuple[Sla, ...], speed: float) -> tuple[Sla, ...]:
    """The SLAs at a drill's speed: every clock divided by `speed` (1 = the manual's); a re-page interval
    never below MIN_REPAGE_INTERVAL, as the workflows enforce."""
    _speed(speed)
    return tuple(s.model_copy(update={"within": max(s.within / speed, MIN_REPAGE_INTERVAL) if s.repage
                                      else s.within / speed}) for s in slas)


def incident_timings(rule: alerts.Rule, speed: float) -> Timings:
    """A P0 incident's clocks at a drill's speed: the acknowledge and action SLAs (each also the interval at
    which an unanswered page escalates), the automatic recovery's hold and the "if >5min -> manual" step;
    and the speed itself, for the rollbacks and degradations the incident starts (scaled_durations)."""
    _speed(speed)
    ack, action = scaled(_p0_slas(), speed)
    return Timings(ack=ack.within, action=action.within,
                   clear_hold=rule.recovery.clear_hold / speed if rule.recovery.clear_hold else None,
                   manual_after=rule.manual_after.after / speed if rule.manual_after else None, speed=speed)


def scaled_durations(speed: float) -> Durations:
    """A rollback's or degradation's timings at a drill's speed; re-page intervals keep their floor, and health
    checks stay at least canary.MIN_SCALED_INTERVAL (1 s) apart, as a scaled canary's do. The floor is what makes
    a fast drill fair: a check every 50 ms (15 s / 300) would count three failures in a row in the 150 ms before
    a drill's fault can come out after the change that fixes it."""
    _speed(speed)
    d = Durations()
    vals: dict[str, Any] = {}
    for name in Durations.model_fields:
        v = getattr(d, name)
        if isinstance(v, timedelta):
            v = v / speed
            if name in ("confirm_sla", "fix_reminder"):
                v = max(v, MIN_REPAGE_INTERVAL)
            elif name == "check_interval":
                v = max(v, canary.MIN_SCALED_INTERVAL)
        vals[name] = v
    return Durations(**vals)


def await_slas(d: Durations) -> dict[str, timedelta]:
    """Each human step a rollback or degradation can wait at, and the time the manual gives it (in `d`, so
    scaled when `d` is): the data-inconsistency decision window, and each confirmation or approval (the
    confirm SLA, after which it re-pages). `fix` is not here: its clock is a reminder, not an SLA."""
    steps = (rollback.window_step(d), rollback.confirm_step(d, Scope.SINGLE),
             rollback.super_admin_approval_step(d, 1), rollback.second_approval_step(d, "-"),
             rollback.approve_level_3_step(d, Scope.CROSS, 1), rollback.level_choice_step(d))
    return {s.name: s.timeout for s in steps}
