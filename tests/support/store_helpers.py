"""Helpers shared by the switch-store, watcher, etcd-client and CLI tests (no tests in here).

- `dump`: every key under a prefix with its value and mod_revision (for "nothing was written").
- `req`: a ChangeSetRequest with a fresh change id.
- `other_value`: a valid value of a switch that differs from its default.
- `EtcdProcess`: a separate etcd with its own flags (auth, TLS).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.changes import ActorKind, Authority, ChangeSetRequest, SwitchChange
from manual import switches
from manual.switches import Switch, SwitchType
from core import procs
from core.etcd import Etcd


async def dump(etcd: Etcd, prefix: str) -> list[tuple[str, bytes, int]]:
    kvs, _ = await etcd.get_prefix(prefix)
    return [(kv.key, kv.value, kv.mod_revision) for kv in kvs]


def req(
    actor: str,
    changes: dict[str, Any],
    *,
    authority: Authority = Authority.OWNER,
    actor_kind: ActorKind = ActorKind.OPERATOR,
    change_id: str | None = None,
    reason: str = "test",
    **kw: Any,
) -> ChangeSetRequest:
    return ChangeSetRequest(
        change_id=change_id or f"t-{uuid.uuid4().hex}",
        actor=actor,
        actor_kind=actor_kind,
        changes=[SwitchChange(switch=k, value=v) for k, v in changes.items()],
        reason=reason,
        authority=authority,
        **kw,
    )


def other_value(sw: Switch) -> Any:
    """A valid value that is not the default (the rollback value when it differs)."""
    if sw.rollback_value != sw.default:
        return sw.rollback_value
    if sw.type is SwitchType.BOOL:
        return not sw.default
    if sw.type is SwitchType.ENUM:
        return next(c for c in sw.choices if c != sw.default)
    if sw.type is SwitchType.SYMBOLS:
        return ["SOL"]
    if sw.type is SwitchType.MONEY:
        return sw.default + 1
    lo = sw.minimum if sw.minimum is not None else 0
    v = sw.parse((lo + sw.default) / 2 if sw.type is SwitchType.FLOAT else int(lo + (sw.default - lo) // 2))
    assert v != sw.default, sw.name
    return v


def non_preapproved_value(sw: Switch) -> Any:
    """A valid value that is neither the default nor any pre-approved emergency move."""
    from manual import approvals

    allowed = approvals.PREAPPROVED[sw.name]
    candidates: list[Any]
    if sw.type is SwitchType.BOOL:
        candidates = [True, False]
    elif sw.type is SwitchType.ENUM:
        candidates = list(sw.choices)
    elif sw.type is SwitchType.SYMBOLS:
        candidates = [["SOL"], ["BTC"]]
    elif sw.type is SwitchType.MONEY:
        candidates = [sw.default + 1, 12_345]
    else:
        lo, hi = sw.minimum, sw.maximum
        candidates = [sw.parse(lo + (hi - lo) * f if sw.type is SwitchType.FLOAT else int(lo + (hi - lo) * f))
                      for f in (0.37, 0.61)]
    for c in candidates:
        if c not in allowed and c != sw.default:
            return c
    return None  # every valid value other than the default is pre-approved (a bool)


SWITCH_NAMES = [s.name for s in switches.SWITCHES]


@dataclass
class EtcdProcess:
    """A separate etcd (auth, TLS) on free loopback ports, stopped with stop()."""

    dir: Path
    extra: list[str]
    scheme: str = "http"
    proc: subprocess.Popen | None = None
    client_port: int = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> "EtcdProcess":
        self.client_port, peer = procs.free_port(), procs.free_port()
        args = procs.etcd_args(self.dir / "data", self.client_port, peer, extra=self.extra)
        if self.scheme == "https":
            args = [a.replace(f"http://127.0.0.1:{self.client_port}", f"https://127.0.0.1:{self.client_port}")
                    for a in args]
        self.proc = procs.spawn(args, self.dir / "etcd.log")
        procs.wait_tcp("127.0.0.1", self.client_port, 20, self.proc, "etcd")
        return self

    def etcdctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([procs.binary("etcdctl"), "--endpoints", self.endpoint, *args],
                              capture_output=True, text=True, timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc.pid)
            self.proc.wait(timeout=10)
            self.proc = None


ROLLBACKCTL = str(Path(__import__("sys").executable).parent / "rollbackctl")


@dataclass
class CliResult:
    code: int
    out: str
    err: str
    seconds: float

    def json(self) -> Any:
        import json

        return json.loads(self.out)


def run_cli(*args: str, env: dict[str, str], timeout: float = 30) -> CliResult:
    """`rollbackctl ARGS` as a user runs it, with only the given ROLLBACKCTL_* settings."""
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith(("ROLLBACKCTL_", "TEMPORAL_"))}
    t = time.monotonic()
    p = subprocess.run([ROLLBACKCTL, *args], env={**base, **env}, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return CliResult(p.returncode, p.stdout, p.stderr, time.monotonic() - t)
