"""Models of the switch store's requests and records. Pure data: workflows import these too.

A request is one payload (actor, action, target, values, reason) so that a signature can be added
to it later without a rewrite.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from manual.roles import Role


class Authority(str, Enum):
    """On what grounds a change set may be applied (see manual/approvals.py)."""

    OWNER = "owner"  # the actor holds each switch's owner role
    PREAPPROVED = "preapproved"  # the manual's emergency moves: rollback values, levels 1-2, P0 actions
    PLAN = "plan"  # a plan approved at its start by `approved_by`


class ActorKind(str, Enum):
    OPERATOR = "operator"
    SERVICE = "service"  # the P0 monitor


class SwitchChange(BaseModel):
    model_config = ConfigDict(frozen=True)
    switch: str
    value: Any


class ChangeSetRequest(BaseModel):
    change_id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:@/+-]+$")
    actor: str = Field(min_length=1, max_length=64)
    actor_kind: ActorKind = ActorKind.OPERATOR
    action: str = "switch.set"
    changes: list[SwitchChange] = Field(min_length=1)
    reason: str = Field(min_length=1, max_length=2000)
    source: str = "cli"
    authority: Authority = Authority.OWNER
    approved_by: str | None = None
    # Compare-and-swap on values: apply only if each named switch still holds this value.
    expected: dict[str, Any] | None = None
    drill: bool = False

    @field_validator("reason")
    @classmethod
    def _reason_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("a reason is required")
        return v.strip()


class ChangeRecord(BaseModel):
    switch: str
    old: Any
    new: Any


class ChangeSetResult(BaseModel):
    change_id: str
    audit_id: str
    revision: int
    changes: list[ChangeRecord]
    replayed: bool = False  # the change id had already been applied: nothing was written


class AuditRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    at: str
    actor: str
    role: str
    reason: str
    source: str
    changes: list[ChangeRecord]
    action: str = "switch.set"
    change_id: str | None = None
    authority: str | None = None
    approved_by: str | None = None
    drill: bool = False
    prev_hash: str | None = None
    hash: str | None = None
    revision: int | None = None  # the record key's own mod_revision (not stored in the value)


class Operator(BaseModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,31}$")
    role: Role
    added_at: str
    added_by: str
    public_key: str | None = None


class SwitchState(BaseModel):
    name: str
    value: Any
    updated_at: str | None = None
    updated_by: str | None = None
    change_id: str | None = None
    revision: int = 0  # mod_revision of the switch key (0: not initialised)


class Snapshot(BaseModel):
    """Every switch's value and revision at one store revision."""

    revision: int
    switches: dict[str, SwitchState]

    def values(self) -> dict[str, Any]:
        return {n: s.value for n, s in self.switches.items()}
