"""Workflow inputs, outputs, human decisions and progress views (pure pydantic, no I/O)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from activities.changes import ChangeSetResult
from manual.rollback import Durations, Scope, Severity, target_changes


class Decision(BaseModel):
    """Every human input to a workflow: one payload with the actor in it (signable later)."""

    actor: str = Field(min_length=1, max_length=64)
    reason: str = ""
    reference: str | None = None  # fix: the deployed fix (commit, release, ticket)
    tests_passed: bool = False  # fix: the fix's tests passed
    restore: bool = True  # fix: restore through the 5% canary (false: close without restore)
    level: int | None = None  # escalate / level choice: degradation level 2 or 3
    signature: str | None = None
    nonce: str | None = None


class DecisionAck(BaseModel):
    accepted: bool
    step: str
    message: str


class StepRecord(BaseModel):
    index: int
    name: str
    kind: str
    started_at: datetime
    ended_at: datetime | None = None
    outcome: str | None = None
    detail: str = ""


class Awaiting(BaseModel):
    step: str
    expects: str
    min_role: str
    since: datetime
    deadline: datetime | None
    prompt: str
    repages: int = 0


class ChecklistResult(BaseModel):
    id: str
    title: str
    status: Literal["ok", "failed", "skipped", "not_applicable"]
    detail: str = ""
    at: datetime


class CheckResult(BaseModel):
    at: datetime
    ok: bool
    breaches: list[str] = []
    error: str | None = None


class DecisionRecord(BaseModel):
    at: datetime
    kind: str
    actor: str
    accepted: bool
    detail: str = ""


class Progress(BaseModel):
    workflow_id: str
    kind: str
    status: str = "running"
    current_step: str | None = None
    history: list[StepRecord] = []
    awaiting: Awaiting | None = None
    checklist: list[ChecklistResult] = []
    snapshot_revision: int | None = None
    snapshot: dict[str, Any] = {}
    applied: list[ChangeSetResult] = []
    checks: list[CheckResult] = []  # the most recent ones
    decisions: list[DecisionRecord] = []
    level: str | None = None
    escalations: list[str] = []
    page_level: int = 1
    result: str | None = None
    detail: str = ""


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


class RunResult(BaseModel):
    workflow_id: str
    status: str  # restored | closed_without_restore | monitored | cancelled | restore_blocked | restore_failed | failed
    detail: str = ""
    level: str | None = None
    applied: list[ChangeSetResult] = []
    escalations: list[str] = []
