"""The emergency lane: the manual's pre-approved emergency moves, applicable while Temporal is down.

Which moves: a switch to its rollback value (manual: every switch's "Rollback Value"), and the switch
sets of degradation Levels 1 and 2 (with Level 2's trading-core pauses), exactly the moves an
on-call may take without anyone's approval. Nothing under the two-person rule or owned by a super
admin in both directions (Level 3, `global_api_enabled`) is: those wait for Temporal.

The lane applies a move signed like any other request (the operator's current key, a fresh nonce,
the etcd revision read, the role), in one etcd transaction with its audit record; when Temporal is
back, the worker opens a follow-up workflow per move (`emergency-<nonce>`) that pages and waits for
an acknowledgement. docs/runbook.md, "Temporal is down".
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from contracts.changes import ChangeRecord
from contracts.roles import Role
from manual import approvals, degradation, switches
from manual.alerts import CoreMove

LEVEL_ACTION = "emergency.degrade"  # a signed request: target "level:<n>", values {"reason"}
SWITCH_ACTION = "switch.set"  # the same request `switch set` signs (one nonce: it lands in one lane only)
LEVELS = tuple(n for n, lvl in degradation.LEVELS.items() if lvl.preapproved)


class NotEmergency(ValueError):
    """Not one of the manual's pre-approved emergency moves (one line)."""


class Move(BaseModel):
    model_config = ConfigDict(frozen=True)

    what: str  # "routing_mode=HL_MODE", "degradation level 2"
    changes: dict[str, Any]
    role: Role  # the least role that may take it
    core_actions: tuple[CoreMove, ...] = ()


def move(action: str, target: str, values: dict[str, Any]) -> Move:
    """The move a signed request asks for, or NotEmergency saying why the lane will not take it."""
    if action == SWITCH_ACTION:
        name = target.removeprefix("switch:")
        try:
            sw = switches.get(name)
        except switches.UnknownSwitch as e:
            raise NotEmergency(str(e)) from None
        try:
            value = sw.parse(values.get("value"))
        except switches.SwitchValueError as e:
            raise NotEmergency(str(e)) from None
        if name in approvals.SUPER_ADMIN_ONLY or value != sw.rollback_value:
            raise NotEmergency(f"{name}={sw.render(value)} is not an emergency move: the lane takes a switch to its "
                               f"rollback value only ({name}={sw.render(sw.rollback_value)}"
                               + (", and never this super admin's switch" if name in approvals.SUPER_ADMIN_ONLY else "")
                               + ")")
        return Move(what=f"{name}={sw.render(value)}", changes={name: value}, role=Role.ON_CALL)
    if action == LEVEL_ACTION:
        try:
            n = int(target.removeprefix("level:"))
        except ValueError:
            raise NotEmergency(f"{target!r} is not level:<n>") from None
        if n not in LEVELS:
            raise NotEmergency(f"degradation level {n} is not an emergency move (the lane takes levels "
                               f"{', '.join(map(str, LEVELS))}; level 3 is a super admin's call through Temporal)")
        lvl = degradation.get(n)
        return Move(what=f"degradation level {n} ({lvl.name})", changes=dict(lvl.switch_set), role=lvl.permission,
                    core_actions=lvl.core_actions)
    raise NotEmergency(f"{action!r} is not an emergency move (the lane takes {SWITCH_ACTION} to a rollback value "
                       f"and {LEVEL_ACTION})")


def render_change(c: ChangeRecord) -> tuple[str, str]:
    """A recorded change's old and new values as the matrix writes them (as stored, for an unknown switch)."""
    try:
        sw = switches.get(c.switch)
    except switches.UnknownSwitch:
        return str(c.old), str(c.new)
    return sw.render(c.old), sw.render(c.new)


def render_changes(changes: list[ChangeRecord]) -> str:
    """"switch: old -> new, ..." of the changes that changed something."""
    return ", ".join("{}: {} -> {}".format(c.switch, *render_change(c)) for c in changes if c.old != c.new)


def is_emergency(name: str, value: Any) -> bool:
    try:
        move(SWITCH_ACTION, f"switch:{name}", {"value": value})
        return True
    except NotEmergency:
        return False
