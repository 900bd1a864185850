"""Helpers shared by the switch-store, watcher, etcd-client and CLI tests (no tests in here).

- `dump`: every key under a prefix with its value and mod_revision (for "nothing was written").
- `check_store`: the store's invariants after any fault (below); `audit_raw` / `verify_chain`: the audit
  records as stored, and their hash chain.
- `req`: a ChangeSetRequest with a fresh change id.
- `other_value`: a valid value of a switch that differs from its default.
- `EtcdProcess`: a separate etcd with its own flags (auth, TLS).
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from activities.switch_store import record_hash
from contracts.changes import ActorKind, Authority, ChangeSetRequest, SwitchChange
from manual import switches
from manual.switches import Switch, SwitchType
from core import procs
from core.etcd import Etcd


async def dump(etcd: Etcd, prefix: str) -> list[tuple[str, bytes, int]]:
    kvs, _ = await etcd.get_prefix(prefix)
    return [(kv.key, kv.value, kv.mod_revision) for kv in kvs]


async def audit_raw(etcd, prefix) -> list[tuple[str, dict, int]]:
    kvs, _ = await etcd.get_prefix(f"{prefix}audit/")
    return [(kv.key, json.loads(kv.value), kv.mod_revision) for kv in kvs]


def verify_chain(raw: list[tuple[str, dict, int]]) -> None:
    prev = None
    for i, (key, rec, _rev) in enumerate(raw, start=1):
        assert key.endswith(f"audit/{i:012d}") and rec["id"] == f"{i:012d}"
        assert rec["prev_hash"] == prev, f"record {rec['id']} does not link to its predecessor"
        assert record_hash(rec) == rec["hash"], f"record {rec['id']} was altered"
        prev = rec["hash"]


async def check_store(etcd: Etcd, prefix: str) -> dict[str, Any]:
    """The switch store's invariants after any fault, whatever was or was not applied (read straight
    from etcd); returns {"records": [...], "values": {...}} for further checks:
    - the audit records form one unbroken hash chain, numbered 1..n, and the head points at the last;
    - each change id appears in at most one audit record, and has a marker exactly when it does
      (the marker names that record): no half-applied change set;
    - every switch's value is the `new` value of the last audit record that touched it, and carries
      that record's change id: no write outside a change set, no lost write."""
    kvs, _ = await etcd.get_prefix(prefix)
    by = {kv.key[len(prefix):]: kv for kv in kvs}
    records = [json.loads(kv.value) for k, kv in sorted(by.items()) if k.startswith("audit/")]
    prev = None
    for i, rec in enumerate(records, start=1):
        assert rec["id"] == f"{i:012d}", f"audit record {i} is numbered {rec['id']}"
        assert rec["prev_hash"] == prev, f"audit record {rec['id']} does not link to its predecessor"
        assert record_hash(rec) == rec["hash"], f"audit record {rec['id']} was altered"
        prev = rec["hash"]
    head = json.loads(by["meta/audit_head"].value) if "meta/audit_head" in by else None
    if records:
        assert head == {"seq": len(records), "hash": prev}, f"head {head} is not the last record"

    ids = Counter(r["change_id"] for r in records if r.get("change_id"))
    twice = {c: n for c, n in ids.items() if n > 1}
    assert not twice, f"change ids applied more than once: {twice}"
    markers = {k[len("changes/"):]: json.loads(kv.value)["audit_id"] for k, kv in by.items() if k.startswith("changes/")}
    # `init` writes defaults under an "init-<time>" id without a marker (it is idempotent by itself)
    with_id = {r["change_id"]: r["id"] for r in records if r.get("change_id") and r.get("action") != "init"}
    assert markers == with_id, "change-id markers and audit records disagree"

    last: dict[str, dict] = {}
    for r in records:
        for c in r["changes"]:
            last[c["switch"]] = {"value": c["new"], "change_id": r["change_id"]}
    values = {}
    for k, kv in by.items():
        if not k.startswith("switches/"):
            continue
        name, rec = k[len("switches/"):], json.loads(kv.value)
        values[name] = rec["value"]
        want = last.get(name)
        assert want is not None, f"{name} was written without an audit record"
        assert (rec["value"], rec["change_id"]) == (want["value"], want["change_id"]), (
            f"{name} holds {rec['value']!r} from {rec['change_id']}, the audit says {want['value']!r} "
            f"from {want['change_id']}")
    return {"records": records, "values": values}


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
