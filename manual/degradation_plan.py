"""The steps a degradation runs, built from its level (manual/degradation.py) and durations.

checklist -> [second approval] -> the level's switch set -> its trading-core actions -> observe ->
confirm -> fix (the restore decision; manual/rollback.fix_step) -> undo the core actions -> restore.
DegradationWorkflow interprets these in that order; what it decides between them (the two-person
rule, nothing to restore, a fix without restore) stays in the workflow.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from manual import checklist, rollback, switches
from manual.degradation import DegradationLevel
from manual.steps import WITHDRAW, ApplySwitches, AwaitConfirmation, Checklist, CoreActions, Observe

CHECKLIST_HEALTH_TIMEOUT = timedelta(milliseconds=300)  # a degradation does not wait on a slow core


def checklist_step() -> Checklist:
    return Checklist(name="checklist", items=checklist.BEFORE_DEGRADATION, health_timeout=CHECKLIST_HEALTH_TIMEOUT)


def second_approval_step(lvl: DegradationLevel, d: rollback.Durations, requested_by: str) -> AwaitConfirmation:
    """The two-person rule's wait (signing on, Level 3): nothing applied until a second owner approves."""
    return AwaitConfirmation(
        name="second_approval", expects="confirm", min_role=lvl.permission, timeout=d.confirm_sla,
        on_timeout="fail", approvals=2, exits=(WITHDRAW,),
        prompt=f"Degradation level {lvl.level} ({lvl.name}) requested by {requested_by}: a second "
               f"{lvl.permission.value} must approve (`rollbackctl confirm ID --as OTHER`).")


def apply_step(lvl: DegradationLevel, reason: str) -> ApplySwitches:
    return ApplySwitches(name=f"apply_level_{lvl.level}", changes=dict(lvl.switch_set),
                         authority="preapproved" if lvl.preapproved else "owner",
                         reason=f"degradation level {lvl.level} ({lvl.name}): {reason}")


def actions_step(lvl: DegradationLevel) -> CoreActions | None:
    """The level's trading-core controls (Level 2's "Read-Only + Limited"); None: the level has none."""
    if not lvl.core_actions:
        return None
    return CoreActions(name=f"level_{lvl.level}_actions", actions=tuple((a.action, a.body) for a in lvl.core_actions))


def observe_step(d: rollback.Durations) -> Observe:
    """The manual's 5-minute observation; breaches are recorded (the level is already the safe state)."""
    return Observe(name="observe", duration=d.observe, interval=d.interval(d.observe), checks=rollback.OBSERVE_CHECKS,
                   consecutive=d.consecutive_breaches, on_breach="record")


def confirm_step(lvl: DegradationLevel, d: rollback.Durations) -> AwaitConfirmation:
    return AwaitConfirmation(
        name="confirm", expects="confirm", min_role=lvl.permission, timeout=d.confirm_sla, exits=(WITHDRAW,),
        prompt=f"Confirm degradation level {lvl.level} holds (`rollbackctl confirm ID --as OP`).")


def undo_step(lvl: DegradationLevel) -> CoreActions | None:
    """The actions that undo the level's trading-core controls; None: nothing to undo."""
    undo = tuple((a.undo, {}) for a in lvl.core_actions if a.undo)
    return CoreActions(name=f"undo_level_{lvl.level}_actions", actions=undo) if undo else None


def undone_by(lvl: DegradationLevel) -> dict[str, str]:
    """Each undo action -> the control it lifts (what stays in force when that undo fails)."""
    return {a.undo: a.action for a in lvl.core_actions if a.undo}


def restore_step(lvl: DegradationLevel, restore_to: dict[str, Any], reference: str | None) -> ApplySwitches:
    return ApplySwitches(name="restore", changes=restore_to, authority="plan",
                         reason=f"restore from degradation level {lvl.level} after fix {reference}: "
                                + ", ".join(f"{k}={switches.get(k).render(v)}" for k, v in restore_to.items()))


def every_step(lvl: DegradationLevel, d: rollback.Durations, requested_by: str) -> list:
    """Every step a degradation of `lvl` may build, whichever branch it takes (for checks of a whole plan)."""
    restore_to = {k: switches.get(k).default for k in lvl.switch_set}
    steps = [checklist_step(), second_approval_step(lvl, d, requested_by), apply_step(lvl, "check"),
             actions_step(lvl), observe_step(d), confirm_step(lvl, d),
             rollback.fix_step(d, rollback.change_sets_role([restore_to])),
             rollback.fix_step(d, rollback.restore_role(list(lvl.switch_set))),
             undo_step(lvl), restore_step(lvl, restore_to, "check")]
    return [s for s in steps if s is not None]
