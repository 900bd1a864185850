"""The emergency lane's models (manual/emergency.py says which moves; activities/emergency.py applies
them): pure pydantic, no I/O."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from contracts.changes import ChangeRecord
from core.identity import Proof

EMERGENCY_PREFIX = "emergency-"
EMERGENCY_PATH = "/v1/emergency"


def emergency_id(nonce: str) -> str:
    """The change id of an emergency move, and the id of the workflow that follows it up."""
    return f"{EMERGENCY_PREFIX}{nonce}"


class EmergencyRequest(BaseModel):
    proof: Proof


class EmergencyOutcome(BaseModel):
    change_id: str
    audit_id: str
    revision: int
    changes: list[ChangeRecord]
    core_actions: list[str] = []  # "pause_hl_opens: done", "pause_large_withdrawals: FAILED (...)"
    replayed: bool = False
    detail: str = ""


class EmergencyRecord(BaseModel):
    """What the follow-up workflow reads back from the audit (the lane wrote it while Temporal was down)."""

    change_id: str
    audit_id: str
    at: datetime
    actor: str
    action: str
    reason: str
    changes: list[ChangeRecord]
    key_id: str | None = None
    core_actions: list[str] = []


class EmergencyFollowUpInput(BaseModel):
    change_id: str
    detected_at: datetime | None = None  # when the worker found it (Temporal was back)


class EmergencyFollowUpResult(BaseModel):
    workflow_id: str
    status: str  # "acknowledged"
    detail: str
    acknowledged_by: str | None = None
    record: Any = None
