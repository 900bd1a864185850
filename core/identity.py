"""Operator identity: what a request signs and how a signature is checked. Pure: no I/O, no clock.

Workflow validators import this (they are synchronous and may not do I/O): everything a check needs
(the operator's public key, the keys they retired, the nonces already used, the step awaited) is
passed in. Key files on an operator's machine are core/keys.py; nothing here touches disk.

What is signed (`SignedRequest`), as its canonical encoding (sorted-key compact JSON, ASCII, with
a domain tag so a signature made here means nothing anywhere else):

    action       what is asked: "switch.set", "operator.add", "operator.rotate_key", "rollback.start",
                 "degrade.start", or a decision kind ("confirm", "fix", "escalate", ...)
    actor        the operator who signs
    target       what it acts on: "switch:<name>", "operator:<name>", or a workflow id
    values       the request's content (new value, reason, expected value, decision fields, ...)
    workflow_id  for a workflow start or decision: the workflow it is for
    step         for a decision: the step the workflow waits at
    revision     for a direct change: the etcd mod_revision of the key when the request was signed
    nonce        random, once: a replayed request is refused

Binding to a workflow, a step and a revision (never to wall-clock time) refuses a request made for
another workflow, another moment of the same workflow, or a value that changed since it was read,
and keeps time-skipping tests valid.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from enum import Enum
from typing import Any, Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field

DOMAIN = "rollbackctl/signed-request/v1"
NONCE_PATTERN = r"^[A-Za-z0-9_-]{16,64}$"


class SignedRequest(BaseModel):
    """The content of a request, exactly as signed."""

    model_config = ConfigDict(frozen=True)

    action: str = Field(min_length=1, max_length=64)
    actor: str = Field(min_length=1, max_length=64)
    target: str = Field(min_length=1, max_length=200)
    values: dict[str, Any] = {}
    workflow_id: str | None = None
    step: str | None = None
    revision: int | None = None
    nonce: str = Field(pattern=NONCE_PATTERN)


class Proof(BaseModel):
    """A signed request: what was signed, with which key, and the signature (base64)."""

    model_config = ConfigDict(frozen=True)

    request: SignedRequest
    key_id: str
    signature: str


class Refusal(str, Enum):
    """Why a signed request is refused; each refusal message names its kind."""

    UNSIGNED = "unsigned"
    WRONG_ACTOR = "wrong actor"
    NO_KEY = "no key registered"
    UNKNOWN_KEY = "unknown key"
    REMOVED_KEY = "removed key"
    BAD_SIGNATURE = "bad signature"
    WRONG_WORKFLOW = "other workflow"
    WRONG_STEP = "other step"
    WRONG_ACTION = "other action"
    WRONG_TARGET = "other target"
    WRONG_VALUES = "other values"
    STALE = "stale revision"
    REUSED_NONCE = "reused nonce"


class Refused(Exception):
    """A refused signed request; `str()` is the one line shown to the operator."""

    def __init__(self, kind: Refusal, detail: str):
        super().__init__(f"refused ({kind.value}): {detail}")
        self.kind = kind
        self.detail = detail


# -- encoding ----------------------------------------------------------------------------------------
def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def canonical(req: SignedRequest) -> bytes:
    """The bytes that are signed: the request's fields and the domain tag, sorted-key compact JSON."""
    return canonical_json({"domain": DOMAIN, **req.model_dump(mode="json")})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str, what: str, size: int) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not base64") from None
    if len(raw) != size:
        raise ValueError(f"{what} must be {size} bytes (got {len(raw)})")
    return raw


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A public key as stored and printed: base64 of the 32 raw Ed25519 bytes."""
    return Ed25519PublicKey.from_public_bytes(_unb64(text, "public key", 32))


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return _b64(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def key_id(public_key: str) -> str:
    """A short, stable name for a public key (recorded in audit records and shown by `operator list`)."""
    raw = _unb64(public_key, "public key", 32)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


# -- signing and checking ---------------------------------------------------------------------------------
def sign(private_key: Ed25519PrivateKey, req: SignedRequest) -> Proof:
    return Proof(request=req, key_id=key_id(public_key_text(private_key)),
                 signature=_b64(private_key.sign(canonical(req))))


def new_nonce() -> str:
    return secrets.token_urlsafe(18)  # 24 characters of [A-Za-z0-9_-]


def sign_start(private_key: Ed25519PrivateKey, inp: Any, action: str, wid: str) -> Proof:
    """The requester's signed start of workflow `wid` with input `inp` (a RollbackInput, DegradeInput or
    CanaryInput: `requested_by` and `signed_values()`)."""
    return sign(private_key, SignedRequest(actor=inp.requested_by, action=action, target=wid,
                                           values=inp.signed_values(), workflow_id=wid, nonce=new_nonce()))


def signature_valid(proof: Proof, public_key: str) -> bool:
    try:
        sig = _unb64(proof.signature, "signature", 64)
        parse_public_key(public_key).verify(sig, canonical(proof.request))
        return True
    except (InvalidSignature, ValueError):
        return False


def _prime_invalid_signature() -> None:
    """Raise and catch InvalidSignature once, here, at import.

    cryptography's Rust core imports `cryptography.exceptions` lazily, the first time it raises
    InvalidSignature. Inside Temporal's workflow sandbox (a validator verifying a forged signature)
    that import goes through the sandbox's builtins and aborts the whole worker process (a pyo3
    panic: "failed to import exception ... InvalidSignature"). Once imported, pyo3 keeps the type for
    the life of the process; this module is imported by workers outside the sandbox first.
    """
    key = Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key()
    try:
        key.verify(bytes(64), b"prime")
    except InvalidSignature:
        pass


_prime_invalid_signature()


def check_key(proof: Proof, actor: str, public_key: str | None, retired: Iterable[str] = ()) -> None:
    """Signed by `actor`, with their current key, and genuinely: or raise Refused."""
    if proof.request.actor != actor:
        raise Refused(Refusal.WRONG_ACTOR, f"the request is signed by {proof.request.actor}, not {actor}")
    if public_key is None:
        raise Refused(Refusal.NO_KEY, f"{actor} has no public key registered (see `rollbackctl operator rotate-key`)")
    if proof.key_id != key_id(public_key):
        if proof.key_id in set(retired):
            raise Refused(Refusal.REMOVED_KEY, f"key {proof.key_id} of {actor} was rotated or removed")
        raise Refused(Refusal.UNKNOWN_KEY, f"key {proof.key_id} is not {actor}'s key ({key_id(public_key)})")
    if not signature_valid(proof, public_key):
        raise Refused(Refusal.BAD_SIGNATURE, f"the signature does not match the request and {actor}'s key")


def check_binding(proof: Proof, *, action: str | None = None, target: str | None = None,
                  workflow_id: str | None = None, step: str | None = None,
                  values: dict[str, Any] | None = None, used_nonces: Iterable[str] = ()) -> None:
    """The (genuine) request is for this action, target, workflow, step and content, and new: or raise."""
    r = proof.request
    if workflow_id is not None and r.workflow_id != workflow_id:
        raise Refused(Refusal.WRONG_WORKFLOW, f"signed for workflow {r.workflow_id}, not {workflow_id}")
    if action is not None and r.action != action:
        raise Refused(Refusal.WRONG_ACTION, f"signed for {r.action!r}, not {action!r}")
    if target is not None and r.target != target:
        raise Refused(Refusal.WRONG_TARGET, f"signed for {r.target}, not {target}")
    if step is not None and r.step != step:
        raise Refused(Refusal.WRONG_STEP, f"signed at step {r.step!r}; the workflow is now at step {step!r} "
                                          "(run the command again)")
    if values is not None and canonical_json(r.values) != canonical_json(values):
        raise Refused(Refusal.WRONG_VALUES, "the request's content is not what was signed")
    if r.nonce in set(used_nonces):
        raise Refused(Refusal.REUSED_NONCE, f"nonce {r.nonce} was used before: a replayed request")


def check(proof: Proof | None, *, actor: str, public_key: str | None, retired: Iterable[str] = (),
          **binding: Any) -> None:
    """Everything at once (key, signature, binding): raise Refused on the first failure."""
    if proof is None:
        raise Refused(Refusal.UNSIGNED, "the request carries no signature")
    check_key(proof, actor, public_key, retired)
    check_binding(proof, **binding)
