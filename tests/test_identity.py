"""Signed requests (core/identity.py, pure) and key files (core/keys.py)."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core import identity, keys
from core.identity import Refusal, Refused, SignedRequest


def req(**kw) -> SignedRequest:
    base = dict(action="confirm", actor="alice", target="rollback-inc-1", values={"reason": "holds"},
                workflow_id="rollback-inc-1", step="confirm", nonce="n" * 24)
    return SignedRequest(**{**base, **kw})


@pytest.fixture
def alice() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def refusal(proof, pub, **kw) -> Refusal:
    with pytest.raises(Refused) as e:
        identity.check(proof, actor=kw.pop("actor", "alice"), public_key=pub, **kw)
    assert str(e.value).startswith(f"refused ({e.value.kind.value}): ")
    return e.value.kind


def test_canonical_encoding_is_sorted_compact_and_tagged():
    a = identity.canonical(req(values={"b": 1, "a": [1.5, "x"]}))
    b = identity.canonical(req(values={"a": [1.5, "x"], "b": 1}))
    assert a == b and b" " not in a and a.startswith(b'{"action":"confirm","actor":"alice","domain":"rollbackctl/')


def test_a_genuine_request_passes_and_each_refusal_says_which(alice):
    pub = identity.public_key_text(alice)
    p = identity.sign(alice, req())
    identity.check(p, actor="alice", public_key=pub, workflow_id="rollback-inc-1", action="confirm", step="confirm",
                   values={"reason": "holds"}, used_nonces=["other" * 5])
    forged = p.model_copy(update={"request": req(values={"reason": "holds", "restore": False})})
    assert refusal(forged, pub) is Refusal.BAD_SIGNATURE
    assert refusal(None, pub) is Refusal.UNSIGNED
    assert refusal(p, pub, actor="sam") is Refusal.WRONG_ACTOR
    assert refusal(p, None) is Refusal.NO_KEY
    mallory = Ed25519PrivateKey.generate()
    assert refusal(identity.sign(mallory, req()), pub) is Refusal.UNKNOWN_KEY
    old = identity.key_id(pub)
    new = identity.public_key_text(Ed25519PrivateKey.generate())
    assert refusal(p, new, retired=[old]) is Refusal.REMOVED_KEY
    assert refusal(p, pub, workflow_id="rollback-inc-2") is Refusal.WRONG_WORKFLOW
    assert refusal(p, pub, step="fix") is Refusal.WRONG_STEP
    assert refusal(p, pub, action="fix") is Refusal.WRONG_ACTION
    assert refusal(p, pub, values={"reason": "other"}) is Refusal.WRONG_VALUES
    assert refusal(p, pub, used_nonces=["n" * 24]) is Refusal.REUSED_NONCE
    garbage = p.model_copy(update={"signature": "not base64!"})
    assert refusal(garbage, pub) is Refusal.BAD_SIGNATURE


def test_malformed_keys_are_value_errors():
    for bad in ("", "abc", "A" * 44 + "=="):
        with pytest.raises(ValueError):
            identity.parse_public_key(bad)


def test_keygen_writes_0600_and_refuses_to_overwrite(tmp_path, monkeypatch):
    monkeypatch.setenv("ROLLBACKCTL_KEY_DIR", str(tmp_path / "keys"))
    monkeypatch.delenv("ROLLBACKCTL_KEY_FILE", raising=False)
    path = keys.key_path("rita")
    pub = keys.generate(path)
    assert path == tmp_path / "keys" / "rita.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert identity.public_key_text(keys.load("rita")) == pub
    with pytest.raises(keys.KeyFileError, match="exists"):
        keys.generate(path)
    os.chmod(path, 0o644)
    with pytest.raises(keys.KeyFileError, match="readable by others"):
        keys.load("rita")
    with pytest.raises(keys.KeyFileError, match="keygen --operator oscar") as e:
        keys.load("oscar")
    # it says where it looked and why, and how to point elsewhere (the dev stack's keys, a new on-call's trap)
    assert "(from ROLLBACKCTL_KEY_DIR)" in str(e.value) and "point ROLLBACKCTL_KEY_DIR there" in str(e.value)
    monkeypatch.setenv("ROLLBACKCTL_KEY_FILE", str(tmp_path / "mine.key"))
    assert keys.key_path("anyone") == tmp_path / "mine.key"
