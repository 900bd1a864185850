"""Rollback and degradation inputs (pure pydantic; they name the manual's scopes and severities).

Decisions, progress and results are contracts/progress.py."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

from manual.rollback import Durations, Scope, Severity, target_changes
from core.identity import Proof

class RollbackInput(BaseModel):
    incident_id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    summary: str = Field(min_length=1, max_length=500)
    severity: Severity
    scope: Scope
    switch: str | None = None  # single module: a switch name or a module name
    requested_by: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=2000)
    durations: Durations = Durations()
    drill: bool = False
    break_glass: str | None = None  # a super admin forces a two-person step (Level 3) alone: the reason
    proof: Proof | None = None  # the requester's signed start (None: signing off, or a parent workflow started it)

    def signed_values(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_defaults=True, exclude={"proof"})

    @model_validator(mode="after")
    def _known_target(self) -> "RollbackInput":
        # Refused at the start: inside the workflow an unknown switch or module fails every workflow
        # task and the rollback wedges before its change.
        try:
            target_changes(self.scope, self.switch)
        except KeyError as e:  # manual.switches.UnknownSwitch
            raise ValueError(str(e)) from None
        return self


class DegradeInput(BaseModel):
    level: int = Field(ge=1, le=3)
    incident_id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    requested_by: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=2000)
    durations: Durations = Durations()
    drill: bool = False
    break_glass: str | None = None  # a super admin forces Level 3 alone: the reason (audited, paged to everyone)
    proof: Proof | None = None  # the requester's signed start

    def signed_values(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_defaults=True, exclude={"proof"})
