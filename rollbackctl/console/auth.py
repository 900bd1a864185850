"""Passkey sign-in for the console: WebAuthn ceremonies (the `webauthn` library), sessions, CSRF.

- **Register** (`/register`): an operator names themselves; the browser creates a passkey
  (navigator.credentials.create); the console verifies it and stores it as *pending* under
  `<prefix>console/pending/<credential id>` with a short code derived from its public key, which the
  registrant is shown. It signs in nowhere until a super admin runs `rollbackctl passkey approve NAME
  CODE` (signed, audited): that copies the public key into the operator record, which only the worker
  may write. So the console's own etcd user writes `<prefix>console/` and nothing else.
- **Sign in** (`/login`): a discoverable-credential assertion (no user name typed); the credential must
  be listed in an operator record; its signature is checked against the public key there and its sign
  counter must grow (a cloned authenticator is refused) when the authenticator keeps one.
- **Sessions** live in this process (a restart signs everyone out): a random id in an HttpOnly,
  SameSite=Strict cookie (Secure on https). Each request re-reads the operator's record: a removed
  passkey, a removed operator or a changed role takes effect on the next request.
- **CSRF**: every POST must come from the console's own origin (the Origin header, which browsers send
  on every POST), and a signed-in POST must carry the session's token (form field `csrf` or header
  `X-CSRF-Token`). The ceremonies' JSON posts are not form-encodable, so a cross-site form cannot send them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import bytes_to_base64url
from webauthn.helpers.cose import COSEAlgorithmIdentifier
from webauthn.helpers.exceptions import InvalidAuthenticationResponse, InvalidRegistrationResponse
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

SESSION_COOKIE = "rbc_session"
CEREMONY_COOKIE = "rbc_ceremony"
CEREMONY_S = 120  # a registration or sign-in must finish within this (the browser's own timeout is 60 s)
ALGS = [COSEAlgorithmIdentifier.ECDSA_SHA_256, COSEAlgorithmIdentifier.EDDSA]  # ES256 and EdDSA passkeys
MAX_PENDING_PER_OPERATOR = 5
# Ceremonies are begun without a session, so anyone who reaches the console can begin one: they are held in
# memory for CEREMONY_S, at most this many at once, and this many per client address, so a flood can neither
# exhaust the process nor, from one address, lock every operator out.
MAX_CEREMONIES = 2000
MAX_CEREMONIES_PER_CLIENT = 20


class AuthError(Exception):
    """A refused ceremony or request: `str()` is the one line shown; `status` the HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def passkey_code(public_key: bytes) -> str:
    """The short code a registrant is shown and the approving super admin must name: 8 base32 characters of
    the SHA-256 of the passkey's public key (40 bits: a look-alike passkey is not found by chance)."""
    c = base64.b32encode(hashlib.sha256(public_key).digest()[:5]).decode()
    return f"{c[:4]}-{c[4:]}"


@dataclass
class Session:
    id: str
    operator: str
    credential_id: str
    csrf: str
    created: float
    seen: float


@dataclass
class Ceremony:
    kind: str  # "register" | "login"
    challenge: bytes
    expires: float
    operator: str | None = None
    label: str = ""
    client: str = ""  # the address that began it (its share of MAX_CEREMONIES_PER_CLIENT)


@dataclass
class Sessions:
    """Sessions and ceremonies in progress (this process's memory; `clock` is injectable for tests)."""

    max_age_s: float
    idle_s: float
    clock: Any = time.monotonic
    sessions: dict[str, Session] = field(default_factory=dict)
    ceremonies: dict[str, Ceremony] = field(default_factory=dict)

    def new(self, operator: str, credential_id: str) -> Session:
        now = self.clock()
        for k in [k for k, v in self.sessions.items() if now - v.created > self.max_age_s or now - v.seen > self.idle_s]:
            del self.sessions[k]  # expired ones nobody asks for again would otherwise stay in memory
        s = Session(secrets.token_urlsafe(32), operator, credential_id, secrets.token_urlsafe(24), now, now)
        self.sessions[s.id] = s
        return s

    def get(self, sid: str | None) -> Session | None:
        s = self.sessions.get(sid or "")
        if s is None:
            return None
        now = self.clock()
        if now - s.created > self.max_age_s or now - s.seen > self.idle_s:
            self.sessions.pop(s.id, None)
            return None
        s.seen = now
        return s

    def drop(self, sid: str | None) -> None:
        self.sessions.pop(sid or "", None)

    def begin(self, c: Ceremony) -> str:
        now = self.clock()
        for k in [k for k, v in self.ceremonies.items() if v.expires < now]:
            del self.ceremonies[k]
        mine = [v for v in self.ceremonies.values() if v.client == c.client]
        if len(mine) >= MAX_CEREMONIES_PER_CLIENT:
            self._refuse(mine, f"{len(mine)} sign-ins and registrations from {c.client or 'this address'} are in progress")
        if len(self.ceremonies) >= MAX_CEREMONIES:
            self._refuse(list(self.ceremonies.values()), f"{len(self.ceremonies)} sign-ins and registrations are in progress")
        token = secrets.token_urlsafe(24)
        self.ceremonies[token] = c
        return token

    def _refuse(self, held: list[Ceremony], why: str) -> None:
        wait = max(1, math.ceil(min(v.expires for v in held) - self.clock()))  # when the oldest one lapses
        raise AuthError(429, f"{why}: try again in {wait} s")

    def take(self, token: str | None, kind: str) -> Ceremony:
        c = self.ceremonies.pop(token or "", None)
        if c is None or c.kind != kind or c.expires < self.clock():
            raise AuthError(400, f"no {kind} in progress in this browser (or it took longer than {CEREMONY_S} s): "
                                 "start again")
        return c


def csrf_ok(session: Session, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(session.csrf.encode(), given.encode())


# -- ceremonies ----------------------------------------------------------------------------------------
def registration_options(rp_id: str, rp_name: str, operator: str, exclude: list[str]) -> tuple[bytes, str]:
    opts = generate_registration_options(
        rp_id=rp_id, rp_name=rp_name, user_name=operator, user_display_name=operator,
        user_id=hashlib.sha256(f"rollbackctl-operator:{operator}".encode()).digest()[:16],
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED, user_verification=UserVerificationRequirement.PREFERRED),
        exclude_credentials=[PublicKeyCredentialDescriptor(id=_unb64url(c)) for c in exclude],
        supported_pub_key_algs=ALGS,
    )
    return opts.challenge, options_to_json(opts)


def verify_registration(credential: dict, challenge: bytes, rp_id: str, origin: str) -> dict[str, Any]:
    """The pending record of a verified registration (raises AuthError naming what is wrong)."""
    try:
        v = verify_registration_response(credential=credential, expected_challenge=challenge, expected_rp_id=rp_id,
                                         expected_origin=origin, supported_pub_key_algs=ALGS)
    except (InvalidRegistrationResponse, ValueError, KeyError, TypeError) as e:
        raise AuthError(400, f"the passkey could not be verified: {e}") from None
    pub = bytes(v.credential_public_key)
    return {"credential_id": bytes_to_base64url(bytes(v.credential_id)), "public_key": bytes_to_base64url(pub),
            "alg": _alg(pub), "sign_count": v.sign_count, "code": passkey_code(pub),
            "aaguid": str(v.aaguid), "backed_up": bool(getattr(v, "credential_backed_up", False))}


def authentication_options(rp_id: str) -> tuple[bytes, str]:
    opts = generate_authentication_options(rp_id=rp_id, user_verification=UserVerificationRequirement.PREFERRED)
    return opts.challenge, options_to_json(opts)


def verify_login(credential: dict, challenge: bytes, rp_id: str, origin: str, public_key: str,
                 sign_count: int) -> int:
    """The new sign count of a verified assertion (raises AuthError naming what is wrong)."""
    try:
        v = verify_authentication_response(credential=credential, expected_challenge=challenge, expected_rp_id=rp_id,
                                           expected_origin=origin, credential_public_key=_unb64url(public_key),
                                           credential_current_sign_count=sign_count)
    except (InvalidAuthenticationResponse, ValueError, KeyError, TypeError) as e:
        raise AuthError(403, f"the passkey's signature was refused: {e}") from None
    return v.new_sign_count


def credential_id_of(credential: Any) -> str:
    if not isinstance(credential, dict) or not isinstance(credential.get("id"), str) or not credential["id"]:
        raise AuthError(400, "credential: expected the browser's PublicKeyCredential as JSON with an 'id'")
    return credential["id"]


def _alg(cose_key: bytes) -> int:
    from webauthn.helpers import decode_credential_public_key

    return int(decode_credential_public_key(cose_key).alg)


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
