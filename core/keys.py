"""Private keys on an operator's machine (never in etcd, logs or workflow history).

Where an operator's private key lives, first match:
    ROLLBACKCTL_KEY_FILE            one file (an operator's own machine: one identity)
    ROLLBACKCTL_KEY_DIR/<name>.key  a directory of keys by operator name (the demo's .dev/keys)
    $XDG_CONFIG_HOME/rollbackctl/keys/<name>.key   (default ~/.config/rollbackctl/keys/<name>.key)

Files are PKCS#8 PEM, written 0600 in a 0700 directory; a key file that group or others may read
is refused, as ssh does. The private key object never leaves this process: only signatures do.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core import identity


class KeyFileError(Exception):
    """A missing, unreadable or unsafe key file (exit code 3: the request cannot be signed)."""

    exit_code = 3


def key_path(operator: str | None) -> Path:
    env_file = os.environ.get("ROLLBACKCTL_KEY_FILE")
    if env_file:
        return Path(env_file).expanduser()
    if not operator:
        raise KeyFileError("name the operator (--operator NAME) or set ROLLBACKCTL_KEY_FILE")
    env_dir = os.environ.get("ROLLBACKCTL_KEY_DIR")
    if env_dir:
        return Path(env_dir).expanduser() / f"{operator}.key"
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "rollbackctl" / "keys" / f"{operator}.key"


def generate(path: Path, force: bool = False) -> str:
    """Write a new private key to `path` (0600); return its public key (base64)."""
    if path.exists() and not force:
        raise KeyFileError(f"{path} exists; keep it, or replace it with --force (the old key then stops working "
                        "once its public key is rotated)")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, pem)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return identity.public_key_text(key)


def load(operator: str | None) -> Ed25519PrivateKey:
    return load_file(key_path(operator), operator)


def load_file(path: Path, operator: str | None = None) -> Ed25519PrivateKey:
    try:
        st = path.stat()
    except FileNotFoundError:
        where = ("ROLLBACKCTL_KEY_FILE" if os.environ.get("ROLLBACKCTL_KEY_FILE") else
                 "ROLLBACKCTL_KEY_DIR" if os.environ.get("ROLLBACKCTL_KEY_DIR") else
                 "the default key directory (set ROLLBACKCTL_KEY_DIR to use another)")
        raise KeyFileError(f"no private key for {operator or 'this operator'} at {path} (from {where}). If the key "
                           f"is elsewhere (the dev stack keeps its operators' keys in its directory: `rollbackctl dev "
                           f"up` prints the export), point ROLLBACKCTL_KEY_DIR there; else create one with "
                           f"`rollbackctl keygen --operator {operator or 'NAME'}` and have a super admin register its "
                           "public key") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 it")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path} is not a usable private key ({type(e).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key")
    return key
