"""Who may set what (manual: "Permission Levels"; issue: "the manual pre-approves").

- An operator whose role is at least a switch's owner role may set any valid value.
- The manual's own emergency moves are pre-approved: each switch's rollback value, the switch sets
  of degradation levels 1-2 and the P0 table's immediate actions. An `on_call` operator may trigger
  them through a workflow; the P0 monitor takes them under its service identity.
- Level 3 (`global_api_enabled`) needs a super admin in both directions, whoever asks.
- A plan that moves switches elsewhere (a canary stage, a restore) is approved at its start by an
  operator holding the owner role of every switch it touches.
- Two-person rule (with signing on): Level 3 (`global_api_enabled`, either way), re-enabling any
  super-admin switch, and so `global_betting_enabled=true`, need signed approvals from two different
  operators holding the owner role; a single super admin may force it with a break-glass reason
  (applied, paged to everyone, marked in the audit).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from manual import degradation, switches
from contracts.roles import Role

# How long a change under the two-person rule (a direct change request, a canary's start) waits for its
# second approval before it expires with nothing applied: long enough to wake a second owner at night,
# short enough that an approval cannot be given to a situation that has since changed.
# ROLLBACKCTL_APPROVAL_TIMEOUT_S overrides it. Never scaled by a canary's --time-scale: a person answers
# in real time.
APPROVAL_TIMEOUT = timedelta(minutes=15)

# Never pre-approved, whatever the value: Level 3 is a super admin's call.
SUPER_ADMIN_ONLY = frozenset({"global_api_enabled"})


def _preapproved() -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {s.name: [s.rollback_value] for s in switches.SWITCHES}
    for lvl in degradation.LEVELS.values():
        if lvl.preapproved:
            for name, value in lvl.switch_set.items():
                if value not in out[name]:
                    out[name].append(value)
    try:  # the P0 table's switch moves, once that data exists
        from manual import alerts

        for name, value in alerts.preapproved_switch_values():
            if value not in out[name]:
                out[name].append(value)
    except ImportError:
        pass
    for name in SUPER_ADMIN_ONLY:
        out[name] = []
    return out


PREAPPROVED: dict[str, list[Any]] = _preapproved()


def is_preapproved(name: str, value: Any) -> bool:
    return value in PREAPPROVED.get(name, [])


def needs_two_people(name: str, value: Any) -> bool:
    """Whether setting `name` to `value` falls under the two-person rule."""
    sw = switches.get(name)
    if name in SUPER_ADMIN_ONLY:
        return True
    return sw.permission is Role.SUPER_ADMIN and value != sw.rollback_value


def two_person_changes(values: dict[str, Any]) -> list[str]:
    """The switches of a change set that fall under the two-person rule."""
    return [n for n, v in values.items() if needs_two_people(n, v)]


def required_role(name: str) -> Role:
    return switches.get(name).permission


def plan_owner_role(names: list[str]) -> Role:
    """The role an approver needs for a plan touching `names` (the highest owner among them)."""
    role = Role.VIEWER
    for n in names:
        r = required_role(n)
        if r.rank > role.rank:
            role = r
    return role
