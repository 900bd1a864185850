"""Models of the switch store's requests and records. Pure data: workflows import these too.

A request is one payload (actor, action, target, values, reason); the signed requests behind it
(core/identity.py `Proof`) travel with it and are written into its audit record.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contracts.roles import Role
from core.identity import Proof


class Authority(str, Enum):
    """On what grounds a change set may be applied (see manual/approvals.py)."""

    OWNER = "owner"  # the actor holds each switch's owner role
    PREAPPROVED = "preapproved"  # the manual's emergency moves: rollback values, levels 1-2, P0 actions
    PLAN = "plan"  # a plan approved at its start by `approved_by`


class ActorKind(str, Enum):
    OPERATOR = "operator"
    SERVICE = "service"  # the P0 monitor


class BreakGlass(BaseModel):
    """A super admin forced a two-person change alone: applied, paged to everyone, marked in the audit."""

    by: str
    reason: str = Field(min_length=1, max_length=2000)


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
    # The signed requests behind this change set (recorded in the audit record; their nonces are
    # recorded in etcd in the same transaction, owned by `nonce_owner`, so none is ever used twice).
    proofs: list[Proof] = []
    # default: `source`. A workflow's change set: "<workflow id>/<first run id>" (the worker keeps
    # that only under its own workflow id, else uses "<workflow id>/<run id>").
    nonce_owner: str | None = None
    # Compare-and-swap on revisions: apply only if each named switch is still at this mod_revision
    # (a direct change is signed against the revision its operator read).
    revisions: dict[str, int] | None = None
    break_glass: BreakGlass | None = None

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


class Passkey(BaseModel):
    """A WebAuthn credential (a passkey) an operator registered in the console and a super admin approved.

    Approval is a signed, audited change of the operator record (`rollbackctl passkey approve`); the
    console only ever signs in with a passkey listed here, with this public key (so a console that is
    compromised cannot approve one for itself: it writes only its own `<prefix>console/` keys)."""

    credential_id: str = Field(pattern=r"^[A-Za-z0-9_-]{16,1400}$")  # base64url, no padding
    public_key: str = Field(min_length=16, max_length=2048)  # base64url of the COSE key
    alg: int  # COSE algorithm: -7 ES256, -8 EdDSA
    code: str  # the fingerprint the registrant saw (approval names it)
    registered_at: str
    approved_at: str
    approved_by: str
    label: str = ""
    # The key as signatures are checked against it (core/identity.passkey_text: algorithm, raw key, the
    # console's relying party id and origin): what the workflows and `audit verify` use.
    key: str = ""


class Operator(BaseModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,31}$")
    role: Role
    added_at: str
    added_by: str
    public_key: str | None = None  # base64 Ed25519 (core/identity.py); the private key never leaves its owner
    # Public keys rotated out: a request signed with one is refused as "removed key"; a workflow
    # decision accepted before the rotation still verifies when its change set is written.
    retired_keys: list[str] = []
    passkeys: list[Passkey] = []  # console sign-in (approved by a super admin)

    @property
    def key_id(self) -> str | None:
        from core.identity import key_id

        return key_id(self.public_key) if self.public_key else None


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


class SeenRecord(BaseModel):
    """Someone acknowledged (or resolved) one of a workflow's alerts in PagerDuty: recorded in the audit
    trail as *seen*, never as a signed decision (the store writes it with authority "observed")."""

    event_id: str = Field(min_length=1, max_length=200)
    event: str  # acknowledged | unacknowledged | resolved | reopened
    by: str = ""
    at: str
    dedup_key: str
    source: str  # the workflow that opened the alert
    incident: str = ""
    awaiting: str | None = None  # the decision the workflow was waiting for

