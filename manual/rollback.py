"""The Rollback Decision Tree (manual: "Rollback Decision Tree") as data and plan builders.

    Incident -> [Severity] critical: immediately | data inconsistency: within 5 min | non-critical: monitor
             -> [Level] single module: that switch | cross-module: HL_MODE + internalization off
                        | full system: degradation level 3
             -> [Execute] change + observe 5 min + confirm
             -> [Fix & restart] fix + tests + 5% canary -> full

The workflow (workflows/rollback.py) walks the tree; every step it runs is built here from data.
"""

from __future__ import annotations

from datetime import timedelta
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from manual import alerts, approvals, checklist, degradation, switches
from contracts.roles import Role
from manual.steps import (
    WITHDRAW,
    ApplySwitches,
    AwaitConfirmation,
    Checklist,
    HealthCheck,
    Notify,
    Observe,
    stay,
)


class Severity(str, Enum):
    CRITICAL = "critical_path_failure"
    DATA = "data_inconsistency"
    NON_CRITICAL = "non_critical"


# The critical lane: the manual's "critical path failure -> immediate rollback" must hold its <1 s while
# anything else runs (a storm of P0 incidents, hundreds of other rollbacks). Such a rollback is started on a
# task queue of its own (TemporalSettings.critical_task_queue: no backlog ahead of it, worker slots of its
# own) at Temporal's highest task priority (priority keys run 1 first .. 5, default 3; its activities inherit
# it), and flips its switches in a local activity. bench/storm.py measures what each of these buys.
CRITICAL_LANE: frozenset[Severity] = frozenset({Severity.CRITICAL})
CRITICAL_PRIORITY_KEY = 1


def on_critical_lane(severity: Severity) -> bool:
    return Severity(severity) in CRITICAL_LANE


class Scope(str, Enum):
    SINGLE = "single_module"
    CROSS = "cross_module"
    FULL = "full_system"


# A breach during observation escalates one level.
NEXT_SCOPE: dict[Scope, Scope | None] = {Scope.SINGLE: Scope.CROSS, Scope.CROSS: Scope.FULL, Scope.FULL: None}

# "Single Module -> Disable that switch": the modules an on-call can name instead of a switch.
MODULES: dict[str, tuple[str, ...]] = {
    "internalization": ("global_betting_enabled", "betting_traffic_pct"),
    "routing": ("routing_mode",),
    "hedging": ("hedge_enabled",),
    "liquidation": ("liquidation_enabled",),
    "withdrawals": ("withdrawal_enabled",),
    "auto_mode": ("auto_mode_switch",),
}

# "Cross-Module -> HL_MODE + disable internalization"
CROSS_MODULE_SET: dict[str, Any] = {"routing_mode": "HL_MODE", "global_betting_enabled": False}

# The 5% canary of "Fix & Restart": internalization comes back on this share of orders first.
RESTORE_CANARY_SWITCH = "betting_traffic_pct"
# The 5% stage verifies nothing unless orders flow on the restored path (contracts/trading_core.py).
RESTORE_TRAFFIC_METRIC = "internal_orders_per_min"
# Why a 5% stage did not pass (the observation's outcome), as rollbacks and degradations say it.
RESTORE_5PCT_FAILED = {
    "breach": "breached its health checks",
    "no_traffic": "saw no live traffic on the restored path (no order went through it, so nothing was verified)",
}
RETRY_WHEN_FLOWING = "; `fix` again once orders flow"
RESTORE_CANARY_VALUE = 5

# Health checks during the 5-minute observation (a breach escalates) and the 5% restore canary.
OBSERVE_CHECKS: tuple[HealthCheck, ...] = (
    HealthCheck(metric="error_rate", op="<=", threshold=0.01, why="the manual's >1% error-rate failure line"),
    HealthCheck(metric="hl_connected", op="==", threshold=True, why="HL_MODE needs HL up"),
    alerts.not_triggered("asset_mismatch"),
)


# The shortest re-page interval a start may ask for (drills use minutes; the manual 10 minutes).
MIN_REPAGE_INTERVAL = timedelta(seconds=10)


class Durations(BaseModel):
    """The manual's timings by default; shorter per start for drills and demos."""

    model_config = ConfigDict(frozen=True)
    decision_window: timedelta = Field(default=timedelta(minutes=5), description="data inconsistency: roll back within")
    observe: timedelta = Field(default=timedelta(minutes=5), description="observe after the change")
    check_interval: timedelta = Field(default=timedelta(seconds=15), description="health check interval")
    confirm_sla: timedelta = Field(default=timedelta(minutes=10), description="re-page when unconfirmed")
    consecutive_breaches: int = Field(default=3, ge=1, le=50)
    fix_reminder: timedelta = Field(default=timedelta(hours=4), description="re-page while waiting for a fix")
    restore_observe: timedelta = Field(default=timedelta(minutes=5), description="observe the 5% restore")

    @model_validator(mode="after")
    def _sane(self) -> "Durations":
        # Refused when the input is built: inside the workflow a zero or negative time fails every
        # workflow task (the rollback wedges after its change), and a re-page interval near zero
        # pages every escalation level in a loop.
        for name in type(self).model_fields:
            v = getattr(self, name)
            if isinstance(v, timedelta) and v <= timedelta(0):
                raise ValueError(f"{name} must be positive, got {v}")
        for name in ("confirm_sla", "fix_reminder"):
            if getattr(self, name) < MIN_REPAGE_INTERVAL:
                raise ValueError(f"{name} is a re-page interval: at least {MIN_REPAGE_INTERVAL.total_seconds():g}s, "
                                 f"got {getattr(self, name)}")
        return self

    def interval(self, duration: timedelta) -> timedelta:
        return min(self.check_interval, duration)


def target_changes(scope: Scope, target: str | None) -> dict[str, Any]:
    """The change set a rollback level applies."""
    if scope is Scope.SINGLE:
        if not target:
            raise ValueError("a single-module rollback needs --switch NAME (a switch or a module: "
                             + ", ".join(sorted(MODULES)) + ")")
        names = MODULES.get(target) or (switches.get(target).name,)
        return {n: switches.get(n).rollback_value for n in names}
    if scope is Scope.CROSS:
        return dict(CROSS_MODULE_SET)
    return dict(degradation.get(3).switch_set)


def required_role(scope: Scope) -> Role:
    """Who may start (and confirm) a rollback of this level."""
    return Role.SUPER_ADMIN if scope is Scope.FULL else Role.ON_CALL


def checklist_step(changes: dict[str, Any], critical: bool) -> Checklist:
    forcing_hl = changes.get("routing_mode") == "HL_MODE"
    items = tuple(i for i in checklist.BEFORE_ROLLBACK if forcing_hl or i.id != "hl_health")
    return Checklist(
        name="checklist",
        items=items,
        forcing_hl=forcing_hl,
        health_timeout=timedelta(milliseconds=300) if critical else timedelta(seconds=3),
    )


def apply_step(changes: dict[str, Any], name: str, level: Scope) -> ApplySwitches:
    return ApplySwitches(
        name=name, changes=changes, authority="preapproved",
        reason=f"rollback ({level.value}): " + ", ".join(f"{k}={switches.get(k).render(v)}" for k, v in changes.items()),
    )


def observe_step(d: Durations, name: str = "observe") -> Observe:
    return Observe(
        name=name, duration=d.observe, interval=d.interval(d.observe), checks=OBSERVE_CHECKS,
        consecutive=d.consecutive_breaches, on_breach="escalate",
    )


def restore_observe_step(d: Durations) -> Observe:
    """The 5% restore's observation (rollbacks and degradations): a breach rolls the restore back."""
    return Observe(name="observe_5pct", duration=d.restore_observe, interval=d.interval(d.restore_observe),
                   checks=OBSERVE_CHECKS, consecutive=d.consecutive_breaches, on_breach="rollback",
                   traffic=RESTORE_TRAFFIC_METRIC)


def confirm_step(d: Durations, scope: Scope) -> AwaitConfirmation:
    return AwaitConfirmation(
        name="confirm", expects="confirm", min_role=required_role(scope), timeout=d.confirm_sla,
        on_timeout="repage_and_wait", exits=(WITHDRAW,),
        prompt="Observation done: confirm the rollback holds (`rollbackctl confirm ID --as OP`).",
    )


def window_step(d: Durations) -> AwaitConfirmation:
    return AwaitConfirmation(
        name="decision_window", expects="proceed_or_cancel", min_role=Role.ON_CALL, timeout=d.decision_window,
        on_timeout="proceed",
        prompt="Data inconsistency: rolling back when the window ends. `proceed` now or `cancel --reason`.",
    )


def fix_step(d: Durations, restore_role: Role) -> AwaitConfirmation:
    return AwaitConfirmation(
        name="fix", expects="fix", min_role=restore_role, timeout=d.fix_reminder, on_timeout="repage_and_wait",
        exits=(WITHDRAW,),
        prompt="Waiting for `fix ID --reference REF --tests-passed` (or `--no-restore` to close without restoring).",
    )


def restore_role(changed: list[str]) -> Role:
    """Restore re-enables what the rollback turned off: it needs the owner role of each."""
    return approvals.plan_owner_role(changed)


def only_changes(values: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """The part of a change set that changes something: a switch already at its value is left out (it would
    be a no-op in the audit, and would demand its owner's role for nothing)."""
    return {k: v for k, v in values.items() if current.get(k) != v}


# The switches whose restore brings internalization back (the 5% canary's reason to exist): the global
# toggle itself, and, while it stays on, the routing mode and the symbol list that let orders in.
INTERNALIZATION_TOGGLE = "global_betting_enabled"
INTERNALIZATION_PATHS = ("routing_mode", "per_symbol_betting")


def internalization_returns(snapshot: dict[str, Any], restore_to: dict[str, Any]) -> bool:
    """Whether restoring `restore_to` (over `snapshot`, the values before the rollback) re-opens
    internalization: the toggle comes back on, or it stayed on and a path into the book reopens."""
    if INTERNALIZATION_TOGGLE in restore_to:
        return restore_to[INTERNALIZATION_TOGGLE] is True
    return snapshot.get(INTERNALIZATION_TOGGLE) is True and any(k in restore_to for k in INTERNALIZATION_PATHS)


def restore_stages(snapshot: dict[str, Any], restore_to: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The restore's change sets (name, values), each carrying only the switches it changes.

    `restore_to` holds only switches the rollback changed. When internalization comes back with
    traffic above 5%: everything at 5% traffic first, then the traffic back ("5% canary -> full")."""
    pct = RESTORE_CANARY_SWITCH
    if internalization_returns(snapshot, restore_to) and (snapshot.get(pct) or 0) > RESTORE_CANARY_VALUE:
        return [("restore_5pct", {**restore_to, pct: RESTORE_CANARY_VALUE}), ("restore_full", {pct: snapshot.get(pct)})]
    return [("restore_full", dict(restore_to))]


def change_sets_role(change_sets: list[dict[str, Any]]) -> Role:
    """The role an approver of these plan change sets needs: the store's own rule (approvals.plan_owner_role,
    which `SwitchStore` enforces at the write) over every switch they carry, so a decision the workflow
    accepts is never refused when it is written."""
    return approvals.plan_owner_role(sorted({k for cs in change_sets for k in cs}))


def super_admin_approval_step(d: Durations, approvals: int) -> AwaitConfirmation:
    """A start whose level needs a super admin (an on-call asked for full_system): nothing applied yet."""
    return AwaitConfirmation(
        name="super_admin_approval", expects="confirm", min_role=Role.SUPER_ADMIN, timeout=d.confirm_sla,
        approvals=approvals, exits=(WITHDRAW,),
        prompt="Level 3 (maintenance mode) needs a super admin: `rollbackctl confirm ID --as SUPERADMIN`")


def second_approval_step(d: Durations, first: str) -> AwaitConfirmation:
    """Two-person rule: `first` asked for Level 3; a different super admin must approve."""
    return AwaitConfirmation(
        name="second_approval", expects="confirm", min_role=Role.SUPER_ADMIN, timeout=d.confirm_sla,
        approvals=2, exits=(WITHDRAW,),
        prompt=f"{first} asks for Level 3 (maintenance mode): a second super admin must approve "
               "(`rollbackctl confirm ID --as OTHER`).")


def approve_level_3_step(d: Durations, current: Scope, approvals: int) -> AwaitConfirmation:
    """A breach persists at `current`: Level 3 is proposed. A super admin approves it; whoever could run
    `current` may instead stay there (and go on to its confirmation); its starter may withdraw it."""
    return AwaitConfirmation(
        name="approve_level_3", expects="escalate", min_role=Role.SUPER_ADMIN, timeout=d.confirm_sla,
        approvals=approvals, exits=(stay(required_role(current), current.value), WITHDRAW),
        prompt="Breach persists: approve Level 3 maintenance mode (`rollbackctl escalate ID --as SUPERADMIN`), or "
               f"stay at {current.value} (`rollbackctl stay ID --as OP --reason ...`)")


def level_choice_step(d: Durations) -> AwaitConfirmation:
    return AwaitConfirmation(
        name="level_choice", expects="level_choice", min_role=Role.ON_CALL, timeout=d.confirm_sla,
        on_timeout="repage_and_wait", exits=(WITHDRAW,),
        prompt="HL is down: forcing HL_MODE would strand every order. New orders are paused. "
               "Choose degradation level 2 or 3 (`rollbackctl escalate ID --level 2|3`).",
    )


def monitor_steps(d: Durations) -> tuple[Notify, Observe]:
    return (
        Notify(name="notify_monitoring", text="Non-critical incident: no config change; observing.", severity="info"),
        Observe(name="monitor", duration=d.observe, interval=d.interval(d.observe), checks=OBSERVE_CHECKS,
                consecutive=d.consecutive_breaches, on_breach="record", stop_on_escalate=True),
    )
