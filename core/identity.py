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
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
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
    """A signed request: what was signed, with which key, and the signature (base64).

    Two kinds of key sign: an operator's Ed25519 key (the CLI; `key_id` "ed25519:...") and a passkey
    approved for the console (WebAuthn; `key_id` "passkey:..."). A passkey signs the WebAuthn way: the
    authenticator signs its `authenticator_data` and the SHA-256 of the browser's `client_data` (JSON
    whose `challenge` is `challenge(request)`), so both travel with the signature and are checked here.
    """

    model_config = ConfigDict(frozen=True)

    request: SignedRequest
    key_id: str
    signature: str
    authenticator_data: str | None = None  # passkey: base64url, as the authenticator returned it
    client_data: str | None = None  # passkey: base64url of clientDataJSON


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
    if public_key.startswith(PASSKEY):
        passkey_fields(public_key)  # well-formed
        return "passkey:" + hashlib.sha256(public_key.encode()).hexdigest()[:16]
    raw = _unb64(public_key, "public key", 32)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


# -- passkeys (WebAuthn) --------------------------------------------------------------------------------------
# Built once, here: ECDSA() imports cryptography's OpenSSL backend inside its constructor, which a workflow
# validator (in Temporal's sandbox) must not do.
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
PASSKEY = "passkey:"  # a passkey's key text: "passkey:" + base64url(canonical JSON of passkey_text's fields)
ES256, EDDSA = -7, -8  # COSE algorithms


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64u(text: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError, TypeError):
        raise ValueError(f"{what} is not base64url") from None


def passkey_text(*, credential_id: str, alg: int, raw_key: bytes, rp_id: str, origin: str) -> str:
    """The key text of a passkey: everything a check needs, in one string kept beside Ed25519 keys.
    `raw_key`: ES256, the 64 bytes x||y of the P-256 point; EdDSA, the 32-byte Ed25519 key."""
    if alg not in (ES256, EDDSA) or len(raw_key) != (64 if alg == ES256 else 32):
        raise ValueError(f"passkey: algorithm {alg} with a {len(raw_key)}-byte key is not ES256 or EdDSA")
    return PASSKEY + _b64u(canonical_json({"credential_id": credential_id, "alg": alg, "key": _b64u(raw_key),
                                           "rp_id": rp_id, "origin": origin}))


def passkey_fields(text: str) -> dict[str, Any]:
    try:
        f = json.loads(_unb64u(text[len(PASSKEY):], "passkey"))
    except ValueError:
        raise ValueError("passkey: malformed key text") from None
    if not isinstance(f, dict) or not all(k in f for k in ("credential_id", "alg", "key", "rp_id", "origin")):
        raise ValueError("passkey: malformed key text")
    return f


def challenge(req: SignedRequest) -> str:
    """What a passkey signs for `req`: the WebAuthn challenge, base64url of SHA-256 of the canonical request."""
    return _b64u(hashlib.sha256(canonical(req)).digest())


def passkey_refusal(proof: Proof, text: str) -> str | None:
    """Why `proof` is not a genuine passkey assertion over its request with the passkey `text`, or None.
    Per WebAuthn Level 3 §7.2 (verifying an authentication assertion), minus what needs state: the sign
    counter (the console checks it; here a nonce used once stands for freshness)."""
    try:
        pk = passkey_fields(text)
        ad = _unb64u(proof.authenticator_data or "", "authenticator data")
        raw_cd = _unb64u(proof.client_data or "", "client data")
        cd = json.loads(raw_cd)
        sig = _unb64u(proof.signature, "signature")
    except ValueError as e:
        return str(e)
    if not isinstance(cd, dict) or cd.get("type") != "webauthn.get":
        return "the client data is not an assertion (webauthn.get)"
    if cd.get("challenge") != challenge(proof.request):
        return "the passkey signed another request (its challenge is not this request's)"
    if cd.get("origin") != pk["origin"]:
        return f"signed on {cd.get('origin')!r}, not the console the passkey belongs to ({pk['origin']})"
    if len(ad) < 37 or ad[:32] != hashlib.sha256(str(pk["rp_id"]).encode()).digest():
        return "the authenticator data is for another site (relying party id)"
    if not ad[32] & 0x01:
        return "the user was not present (the UP flag is off)"
    msg = ad + hashlib.sha256(raw_cd).digest()
    try:
        raw = _unb64u(pk["key"], "passkey key")
        if pk["alg"] == ES256:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw).verify(sig, msg, _ECDSA_SHA256)
        elif pk["alg"] == EDDSA:
            Ed25519PublicKey.from_public_bytes(raw).verify(sig, msg)
        else:
            return f"passkey algorithm {pk['alg']} is not ES256 or EdDSA"
    except (InvalidSignature, ValueError):
        return "the passkey's signature does not match the request"
    return None


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
    if public_key.startswith(PASSKEY):
        return passkey_refusal(proof, public_key) is None
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
    # The same for ES256 passkeys (their first use in a validator would load the EC bindings there).
    ec_key = ec.derive_private_key(1, ec.SECP256R1()).public_key()
    point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), ec_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))
    for sig in (b"\x30\x06\x02\x01\x01\x02\x01\x01", b"not der"):
        try:
            point.verify(sig, b"prime", _ECDSA_SHA256)
        except (InvalidSignature, ValueError):
            pass


_prime_invalid_signature()


def check_key(proof: Proof, actor: str, public_key: str | None, retired: Iterable[str] = (),
              passkeys: Iterable[str] = ()) -> None:
    """Signed by `actor`, with one of their current keys (the Ed25519 key, an approved passkey), and
    genuinely: or raise Refused."""
    if proof.request.actor != actor:
        raise Refused(Refusal.WRONG_ACTOR, f"the request is signed by {proof.request.actor}, not {actor}")
    passkeys = list(passkeys)
    if proof.key_id.startswith(PASSKEY):
        match = next((k for k in passkeys if key_id(k) == proof.key_id), None)
        if match is None:
            if proof.key_id in set(retired):
                raise Refused(Refusal.REMOVED_KEY, f"passkey {proof.key_id} of {actor} was removed")
            raise Refused(Refusal.UNKNOWN_KEY, f"passkey {proof.key_id} is not one {actor} has approved")
        why = passkey_refusal(proof, match)
        if why is not None:
            raise Refused(Refusal.BAD_SIGNATURE, f"{actor}'s passkey assertion is refused: {why}")
        return
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
          passkeys: Iterable[str] = (), **binding: Any) -> None:
    """Everything at once (key, signature, binding): raise Refused on the first failure."""
    if proof is None:
        raise Refused(Refusal.UNSIGNED, "the request carries no signature")
    check_key(proof, actor, public_key, retired, passkeys)
    check_binding(proof, **binding)
