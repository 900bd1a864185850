"""Switch propagation: an audited change set (what `switch set` does) -> applied at the simulator,
against the baseline of a bare etcd put -> watch event on the same server."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timezone

import httpx

from contracts.changes import ChangeSetRequest, SwitchChange
from bench.stack import BenchStack
from bench.stats import summary


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


async def bare_put_to_watch_ms(etcd, n: int, prefix: str = "/bench-baseline/") -> list[float]:
    """ms from a bare etcd put to its watch event, `n` times: the baseline the propagation figures are
    compared to (same server, same client library)."""
    out: list[float] = []
    key = f"{prefix}{uuid.uuid4().hex}"
    events: asyncio.Queue = asyncio.Queue()
    _, rev = await etcd.get_prefix(prefix)

    async def watch() -> None:
        async for batch in etcd.watch_prefix(prefix, rev + 1):
            for ev in batch:
                await events.put((time.perf_counter(), ev.kv.value))

    task = asyncio.create_task(watch())
    for i in range(n):
        t0 = time.perf_counter()
        await etcd.put(key, str(i).encode())
        while True:
            t1, v = await events.get()
            if v == str(i).encode():
                break
        out.append((t1 - t0) * 1000)
    task.cancel()
    return out


async def run(st: BenchStack, changes: int = 200) -> dict:
    store_ms = await audited_samples(st, changes)

    base_ms = await bare_put_to_watch_ms(st.etcd, changes)  # same server, same client library
    s, b = summary(store_ms), summary(base_ms)
    return {"audited_change_to_applied_ms": s, "bare_etcd_put_to_watch_ms": b,
            "ratio_p50": round(s["p50"] / b["p50"], 1), "ratio_p99": round(s["p99"] / b["p99"], 1)}
