"""Latency of one change set through SwitchStore.apply, against a real etcd this script starts.

    .venv/bin/python -m bench.store_latency [--n 300]

What one `apply` costs, measured from the caller: validation, the idempotency check (change-id
marker), the actor's role, the switches' current values and mod revisions, the audit head, then ONE
etcd transaction (values + audit record + head + marker). That is five round trips to etcd, so
the baseline beside it is a bare etcd put on the same client and server.

Cases (each `n` samples after a warm-up, sequential, one client):
- put_baseline:    etcd put of a small value
- apply_1_switch:  what `rollbackctl switch set` does (max_order_size_internal, a new value each time)
- apply_level_1:   Degradation Level 1's three switches in one change set (on_call, pre-approved)
- apply_replayed:  the same change id again (an activity retry): read-only, nothing written

`run(st, n=...)` takes a bench.stack.BenchStack too, for `make bench` to include it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contracts.changes import Authority, ChangeSetRequest, SwitchChange  # noqa: E402
from activities.switch_store import SwitchStore  # noqa: E402
from manual import degradation, switches  # noqa: E402
from contracts.roles import Role  # noqa: E402
from core import procs  # noqa: E402
from core.etcd import Etcd  # noqa: E402


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def summary(xs: list[float]) -> dict[str, float]:
    return {"n": len(xs), "p50": round(_pct(xs, 50), 2), "p90": round(_pct(xs, 90), 2),
            "p99": round(_pct(xs, 99), 2), "max": round(max(xs), 2), "mean": round(sum(xs) / len(xs), 2)}


def _req(actor: str, changes: dict, authority: Authority = Authority.OWNER, change_id: str | None = None):
    return ChangeSetRequest(change_id=change_id or f"bench-{uuid.uuid4().hex}", actor=actor, reason="benchmark",
                            changes=[SwitchChange(switch=k, value=v) for k, v in changes.items()],
                            authority=authority)


async def measure(etcd: Etcd, prefix: str, n: int = 300, warmup: int = 20) -> dict:
    store = SwitchStore(etcd, prefix)
    await store.init(super_admin="alice", actor="alice")
    for name, role in (("rita", Role.RISK_MANAGER), ("oscar", Role.ON_CALL)):
        if await store.operator(name) is None:
            await store.add_operator(name, role, actor="alice")

    async def timed(fn, count: int) -> list[float]:
        for i in range(warmup):
            await fn(-1 - i)
        out = []
        for i in range(count):
            t = time.perf_counter()
            await fn(i)
            out.append((time.perf_counter() - t) * 1000)
        return out

    async def put(i: int) -> None:
        await etcd.put(f"{prefix}bench/put", str(i).encode())

    async def one(i: int) -> None:
        await store.apply(_req("rita", {"max_order_size_internal": 2000 + (i % 5000)}))

    lvl1 = degradation.LEVELS[1].switch_set
    normal = {k: switches.get(k).default for k in lvl1}

    async def level1(i: int) -> None:
        if i % 2:
            await store.apply(_req("alice", normal))  # back, so every Level 1 set is a real change
        else:
            await store.apply(_req("oscar", lvl1, Authority.PREAPPROVED))

    done = await store.apply(_req("rita", {"max_order_size_internal": 1234}, change_id="bench-replay"))

    async def replay(i: int) -> None:
        r = await store.apply(_req("rita", {"max_order_size_internal": 1234}, change_id="bench-replay"))
        assert r.replayed and r.audit_id == done.audit_id

    return {
        "put_baseline": summary(await timed(put, n)),
        "apply_1_switch": summary(await timed(one, n)),
        "apply_level_1": summary(await timed(level1, n)),
        "apply_replayed": summary(await timed(replay, n)),
    }


async def run(st, n: int = 300) -> dict:
    """For bench/__main__.py: the same measurement on the benchmark stack's etcd."""
    return await measure(st.etcd, f"/bench-store-{uuid.uuid4().hex[:8]}/", n=n)


async def main(n: int) -> dict:
    d = Path(tempfile.mkdtemp(prefix="rbctl-bench-store-"))
    p = procs.start_etcd(d / "data", procs.free_port(), procs.free_port(), d / "etcd.log")
    endpoint = p.args[p.args.index("--advertise-client-urls") + 1].removeprefix("http://")
    try:
        async with Etcd([endpoint]) as etcd:
            return await measure(etcd, "/perps/", n=n)
    finally:
        procs.stop(p.pid)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="samples per case (>= 200 for a p99)")
    a = ap.parse_args()
    res = asyncio.run(main(a.n))
    print(f"{'case':<16} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for case, s in res.items():
        print(f"{case:<16} {s['n']:>5} {s['p50']:>8} {s['p90']:>8} {s['p99']:>8} {s['max']:>8}")
    print(json.dumps(res))
