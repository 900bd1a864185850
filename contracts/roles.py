"""Operator roles (the manual's "Permission Levels"): the vocabulary every record and request uses."""

from __future__ import annotations

from enum import Enum


class Role(str, Enum):
    """Ordered: each role may do what the roles below it may."""

    VIEWER = "viewer"
    ON_CALL = "on_call"
    RISK_MANAGER = "risk_manager"
    SUPER_ADMIN = "super_admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def at_least(self, other: "Role") -> bool:
        return self.rank >= other.rank

    @property
    def title(self) -> str:
        return _TITLE[self]


_RANK = {Role.VIEWER: 0, Role.ON_CALL: 1, Role.RISK_MANAGER: 2, Role.SUPER_ADMIN: 3}
_TITLE = {
    Role.VIEWER: "Viewer",
    Role.ON_CALL: "On-call",
    Role.RISK_MANAGER: "Risk Manager",
    Role.SUPER_ADMIN: "Super Admin",
}
