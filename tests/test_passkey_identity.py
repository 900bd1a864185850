"""A passkey's assertion as core/identity.py checks it (pure), built here the way an authenticator and a
browser build one, per W3C WebAuthn Level 3:
- §6.1 authenticator data: rpIdHash (SHA-256 of the RP id, 32 bytes) | flags (bit 0 UP, bit 2 UV) |
  signCount (4 bytes, big-endian);
- §5.8.1 client data: {"type": "webauthn.get", "challenge": base64url, "origin": ...};
- §6.3.3 step 11: the signature is over authenticatorData || SHA-256(clientDataJSON); ES256 signatures
  are ASN.1 DER (§6.5.5).
The browser tests (tests/test_console_decisions.py) check the same code against Chromium's own."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from core import identity

ORIGIN, RP = "https://console.example", "console.example"


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def request(**kw) -> identity.SignedRequest:
    base = dict(action="confirm", actor="rita", target="rollback-inc-1", workflow_id="rollback-inc-1", step="confirm",
                values={"reason": "holds"}, nonce=identity.new_nonce())
    return identity.SignedRequest(**{**base, **kw})


def es256():
    k = ec.generate_private_key(ec.SECP256R1())
    raw = k.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]
    return k, identity.passkey_text(credential_id=f"cred-{raw[:6].hex()}", alg=identity.ES256, raw_key=raw, rp_id=RP,
                                    origin=ORIGIN)


def assertion(key, req, *, origin=ORIGIN, rp=RP, typ="webauthn.get", flags=0x05, count=7, chall=None, eddsa=False):
    ad = hashlib.sha256(rp.encode()).digest() + bytes([flags]) + count.to_bytes(4, "big")
    cd = json.dumps({"type": typ, "challenge": chall or identity.challenge(req), "origin": origin,
                     "crossOrigin": False}).encode()
    msg = ad + hashlib.sha256(cd).digest()
    sig = key.sign(msg) if eddsa else key.sign(msg, ec.ECDSA(hashes.SHA256()))
    return ad, cd, sig


def proof(req, text, ad, cd, sig) -> identity.Proof:
    return identity.Proof(request=req, key_id=identity.key_id(text), signature=b64u(sig),
                          authenticator_data=b64u(ad), client_data=b64u(cd))


def test_a_genuine_es256_and_eddsa_assertion_verifies():
    key, text = es256()
    req = request()
    assert identity.passkey_refusal(proof(req, text, *assertion(key, req)), text) is None
    identity.check_key(proof(req, text, *assertion(key, req)), "rita", None, passkeys=[text])
    ek = Ed25519PrivateKey.generate()
    etext = identity.passkey_text(credential_id="cred-rita-0000002", alg=identity.EDDSA,
                                  raw_key=ek.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw), rp_id=RP,
                                  origin=ORIGIN)
    assert identity.passkey_refusal(proof(req, etext, *assertion(ek, req, eddsa=True)), etext) is None
    assert identity.key_id(text).startswith("passkey:") and identity.key_id(text) != identity.key_id(etext)


@pytest.mark.parametrize("how,says", [
    (dict(origin="https://evil.example"), "signed on 'https://evil.example'"),
    (dict(rp="evil.example"), "another site"),
    (dict(typ="webauthn.create"), "not an assertion"),
    (dict(flags=0x04), "not present"),
    (dict(chall=b64u(b"x" * 32)), "signed another request"),
])
def test_what_a_passkey_signed_must_be_this_request_on_this_console(how, says):
    key, text = es256()
    req = request()
    assert says in identity.passkey_refusal(proof(req, text, *assertion(key, req, **how)), text)


def test_a_changed_request_or_a_foreign_key_is_refused():
    key, text = es256()
    req = request()
    ad, cd, sig = assertion(key, req)
    other = req.model_copy(update={"values": {"reason": "something else"}})
    assert "signed another request" in identity.passkey_refusal(proof(other, text, ad, cd, sig), text)
    _, mallory = es256()
    assert "does not match" in identity.passkey_refusal(proof(req, mallory, ad, cd, sig), mallory)
    with pytest.raises(identity.Refused, match="is not one rita has approved"):
        identity.check_key(proof(req, mallory, ad, cd, sig), "rita", None, passkeys=[text])
    with pytest.raises(identity.Refused, match=r"refused \(removed key\)"):
        identity.check_key(proof(req, text, ad, cd, sig), "rita", None, retired=[identity.key_id(text)], passkeys=[])
    with pytest.raises(identity.Refused, match=r"refused \(wrong actor\)"):
        identity.check_key(proof(req, text, ad, cd, sig), "sam", None, passkeys=[text])


def test_the_decision_carries_the_assertion_to_the_workflow():
    from contracts.progress import Decision

    key, text = es256()
    d = Decision(actor="rita", reason="holds").model_copy(update={
        "action": "confirm", "workflow_id": "rollback-inc-1", "step": "confirm", "nonce": identity.new_nonce(),
        "key_id": identity.key_id(text)})
    ad, cd, sig = assertion(key, d.signed_request())
    d = d.model_copy(update={"signature": b64u(sig), "authenticator_data": b64u(ad), "client_data": b64u(cd)})
    identity.check(d.proof(), actor="rita", public_key=None, passkeys=[text], workflow_id="rollback-inc-1",
                   action="confirm", step="confirm")
    assert d.signed_values() == {"reason": "holds"}  # the assertion is not part of what is signed
