"""Models of a signed direct change (`switch set`, `operator add|rotate-key`, `passkey approve|remove`): pure
pydantic, no I/O."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from contracts.changes import ChangeSetResult
from core.identity import Proof

REQUEST_ACTIONS = ("switch.set", "operator.add", "operator.rotate_key", "operator.approve_passkey",
                   "operator.remove_passkey")
SECOND_APPROVAL_STEP = "second_approval"


def change_request_workflow_id(nonce: str) -> str:
    return f"change-{nonce}"


class ChangeRequestInput(BaseModel):
    proof: Proof  # the operator's signed request (core/identity.py)
    # How long the second approval may take (the manual's: manual/approvals.APPROVAL_TIMEOUT, or the setting).
    approval_timeout: timedelta = Field(gt=timedelta(0), le=timedelta(hours=24))
    # A worker must pick the request up within this long of its submission, or it expires with nothing
    # applied: a CLI that could not confirm the outcome can say exactly until when it may still land.
    pickup_deadline: timedelta = Field(default=timedelta(minutes=2), gt=timedelta(0), le=timedelta(hours=1))


class RequestApply(BaseModel):
    """Input of the `request.apply` activity: the request and the second approvals gathered so far."""

    proof: Proof
    approvals: list[Proof] = []


class RequestOutcome(BaseModel):
    status: Literal["applied", "needs_approval"]
    detail: str = ""
    owner_role: str | None = None  # needs_approval: the role a second approver must hold
    two_person: list[str] = []  # the switches under the two-person rule
    result: ChangeSetResult | None = None  # switch.set
    operator: dict[str, Any] | None = None  # operator.*
    break_glass: str | None = None


class ChangeRequestResult(BaseModel):
    workflow_id: str
    status: Literal["applied", "refused", "expired", "withdrawn"]
    detail: str = ""
    refusal_type: str | None = None  # the ApplicationError type of a refusal (PermissionDenied, Conflict, ...)
    outcome: RequestOutcome | None = None
    approved_by: list[str] = []
