"""Switch propagation: an audited change set (what `switch set` does) -> applied at the simulator,
against the baseline of a bare etcd put -> watch event on the same server.

Paired and interleaved (each round takes one sample of each, so all see the same load), issue 21 item 3:
- bare_etcd_put_to_watch: a put -> its watch event, in this process (the baseline)
- switch_put_to_consumer: a switch's record put as one etcd write -> applied by a consumer in this process
  following the matrix with core/watcher.py (propagation proper: the watch, the record parsed, the
  callback); its ratio to the baseline is what the consumer side adds
- audited_change_to_consumer: an audited change set (SwitchStore.apply: the reads, the checks, one
  transaction with its audit record) -> applied by that consumer: the whole `switch set` path
- audited_change_to_applied: the same change -> applied at the simulator (its own process; its
  applied_at, read back over HTTP after the change)"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timezone

import httpx

from contracts.changes import ChangeSetRequest, SwitchChange
from bench.stack import BenchStack
from bench.stats import summary
from core.aio import within


async def _applied_at(http: httpx.AsyncClient, url: str, name: str, revision: int, timeout: float = 5.0) -> datetime:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sw = (await http.get(f"{url}/sim/switches")).json()["switches"][name]
        if sw["revision"] >= revision:
            return datetime.fromisoformat(sw["applied_at"].replace("Z", "+00:00"))
        await asyncio.sleep(0.002)
    raise TimeoutError(f"revision {revision} of {name} never applied")


async def audited_samples(st: BenchStack, changes: int) -> list[float]:
    """ms from an audited change set to the simulator having applied it, `changes` times."""
    store_ms: list[float] = []
    async with httpx.AsyncClient() as http:
        for i in range(changes):
            value = 1000 + i  # max_order_size_internal: a Risk Manager switch, any valid amount
            t0 = datetime.now(timezone.utc)
            res = await store.apply(ChangeSetRequest(
                change_id=f"bench-prop-{uuid.uuid4()}", actor="rita", reason="benchmark",
                changes=[SwitchChange(switch="max_order_size_internal", value=value)])) if (store := st.store) else None
            applied = await _applied_at(http, st.core.url, "max_order_size_internal", res.revision)
            store_ms.append((applied - t0).total_seconds() * 1000)
    return store_ms


@asynccontextmanager
async def bare_watch(etcd, prefix: str = "/bench-baseline/"):
    """Yields `sample()`: ms from a bare etcd put of one key to its watch event, one sample per call (the
    baseline the propagation figures are compared to: same server, same client library)."""
    key = f"{prefix}{uuid.uuid4().hex}"
    events: asyncio.Queue = asyncio.Queue()
    _, rev = await etcd.get_prefix(prefix)

    async def watch() -> None:
        async for batch in etcd.watch_prefix(prefix, rev + 1):
            for ev in batch:
                await events.put((time.perf_counter(), ev.kv.mod_revision))

    async def sample() -> float:
        t0 = time.perf_counter()
        put = await etcd.put(key, uuid.uuid4().bytes)
        while True:
            t1, r = await events.get()
            if r == put:
                return (t1 - t0) * 1000

    task = asyncio.create_task(watch())
    try:
        yield sample
    finally:
        task.cancel()


async def bare_put_to_watch_ms(etcd, n: int, prefix: str = "/bench-baseline/") -> list[float]:
    """`n` bare put -> watch samples in a row (bare_watch)."""
    async with bare_watch(etcd, prefix) as sample:
        return [await sample() for _ in range(n)]


async def run(st: BenchStack, changes: int = 200) -> dict:
    from core.watcher import SwitchWatcher

    name = "max_order_size_internal"  # a Risk Manager switch, any valid amount
    seen: dict[int, float] = {}
    arrived = asyncio.Event()

    def on_change(upd) -> None:
        if upd.name == name:
            seen[upd.revision] = time.perf_counter()
            arrived.set()

    async def at_consumer(rev: int) -> float:
        while rev not in seen:
            arrived.clear()
            await within(5, arrived.wait())
        return seen.pop(rev)

    out: dict[str, list[float]] = {k: [] for k in ("bare", "put", "audited", "sim")}
    watcher = SwitchWatcher(st.etcd, st.store.prefix, on_change=on_change, observe=False)
    await watcher.start()
    key = st.store.switch_key(name)
    try:
        async with httpx.AsyncClient() as http, bare_watch(st.etcd, f"/bench-baseline/{uuid.uuid4().hex}/") as bare:
            for i in range(changes):
                out["bare"].append(await bare())

                rec = dict(watcher.records[name])  # (this stack's own: a write outside the audit trail)
                rec.update(value=500_000 + i, change_id=f"bench-put-{i}")
                t0 = time.perf_counter()
                rev = await st.etcd.put(key, json.dumps(rec).encode())
                out["put"].append((await at_consumer(rev) - t0) * 1000)

                t0, w0 = time.perf_counter(), datetime.now(timezone.utc)
                res = await st.store.apply(ChangeSetRequest(
                    change_id=f"bench-prop-{uuid.uuid4()}", actor="rita", reason="benchmark",
                    changes=[SwitchChange(switch=name, value=1000 + i)]))
                out["audited"].append((await at_consumer(res.revision) - t0) * 1000)
                applied = await _applied_at(http, st.core.url, name, res.revision)
                out["sim"].append((applied - w0).total_seconds() * 1000)
    finally:
        await watcher.stop()
    b, p, a, s = (summary(out[k]) for k in ("bare", "put", "audited", "sim"))
    return {"audited_change_to_applied_ms": s, "audited_change_to_consumer_ms": a, "switch_put_to_consumer_ms": p,
            "bare_etcd_put_to_watch_ms": b,
            "ratio_p50": round(s["p50"] / b["p50"], 1), "ratio_p99": round(s["p99"] / b["p99"], 1),
            "consumer_ratio_p50": round(p["p50"] / b["p50"], 2), "consumer_ratio_p99": round(p["p99"] / b["p99"], 2),
            "audited_consumer_ratio_p50": round(a["p50"] / b["p50"], 1),
            "audited_consumer_ratio_p99": round(a["p99"] / b["p99"], 1),
            "target_consumer_p99_within_3x": p["p99"] <= 3 * b["p99"],
            "target_audited_p99_within_3x": s["p99"] <= 3 * b["p99"]}
