"""The fleet: an audited change -> applied at 50 consumers, by watch and by OFREP polling, against a bare
etcd put -> watch event in the same run (issue 20).

- **watch**: 50 consumer instances in this process, each with its own etcd connection and receipt
  (core/watcher.py, as a trading core links it). Per change: each instance's time from the audited
  change set's start to its callback (p50 / p99 over every instance and change), and the time until
  the fleet is *confirmed*: `wait_fleet` (what workflows and `switch set --wait-applied` run) returns
  with every live consumer's receipt at the revision (the 50, plus the stack's sim-1..3 and ofrep-1).
- **OFREP polling**: 50 clients polling the stack's OFREP endpoint's bulk evaluation with
  `If-None-Match`, each every 500 ms (the endpoint's advertised minPollingIntervalMs), phases spread
  evenly: change -> each client sees the new ETag. A polling protocol: expect about half the interval.
- **baseline**: a bare etcd put -> watch event, same server, same client library.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import httpx

from activities.fleet import wait_fleet
from bench.propagation import bare_put_to_watch_ms
from bench.stack import BenchStack
from bench.stats import summary
from contracts.changes import ChangeSetRequest, SwitchChange
from contracts.fleet import FleetWaitInput
from core.aio import wait_set
from core.etcd import Etcd
from core.settings import EtcdSettings
from core.watcher import SwitchWatcher
from manual import switches

SWITCH = "max_order_size_internal"  # a Risk Manager switch, any valid amount; <5 s class
POLL_MS = 500


async def run(st: BenchStack, consumers: int = 50, changes: int = 40, pollers: int = 50) -> dict:
    es = EtcdSettings()
    target = {"value": None, "t0": 0.0}
    seen: dict[str, float] = {}
    done = asyncio.Event()

    def on_change_for(cid: str):
        def cb(upd) -> None:
            if upd.name == SWITCH and upd.value == target["value"] and cid not in seen:
                seen[cid] = time.perf_counter()
                if len(seen) == consumers:
                    done.set()
        return cb

    conns = [Etcd.from_settings(es) for _ in range(consumers)]
    watchers = [SwitchWatcher(c, st.store.prefix, observe=False, consumer_id=f"bench-{i:02d}",
                              on_change=on_change_for(f"bench-{i:02d}")) for i, c in enumerate(conns)]
    for w in watchers:
        await w.start()
    ofrep_url = f"http://127.0.0.1:{st.env['ROLLBACKCTL_DEV_OFREP_PORT']}/ofrep/v1/evaluate/flags"
    token = os.environ.get("ROLLBACKCTL_OFREP_TOKEN") or "dev-ofrep-token"
    polled: dict[int, float] = {}
    polls = {"n": 0, "304": 0}
    stop = asyncio.Event()

    async def poller(i: int, http: httpx.AsyncClient) -> None:
        etag = None
        await asyncio.sleep(POLL_MS / 1000 * i / pollers)  # phases spread over the interval
        nxt = time.perf_counter()
        while not stop.is_set():
            headers = {"Authorization": f"Bearer {token}", **({"If-None-Match": etag} if etag else {})}
            r = await http.post(ofrep_url, json={"context": {"targetingKey": f"client-{i}"}}, headers=headers)
            polls["n"] += 1
            if r.status_code == 304:
                polls["304"] += 1
            elif r.status_code == 200:
                etag = r.headers.get("ETag")
                v = next((f["value"] for f in r.json()["flags"] if f["key"] == SWITCH), None)
                if v == target["value"] and i not in polled:
                    polled[i] = time.perf_counter()
            nxt += POLL_MS / 1000
            await asyncio.sleep(max(0.0, nxt - time.perf_counter()))

    per_consumer: list[float] = []
    confirmed: list[float] = []
    ofrep_ms: list[float] = []
    fleet_sizes: list[int] = []
    limits = httpx.Limits(max_connections=pollers + 10, max_keepalive_connections=pollers + 10)
    async with httpx.AsyncClient(limits=limits, timeout=10) as http:
        tasks = [asyncio.create_task(poller(i, http)) for i in range(pollers)]
        try:
            for i in range(changes):
                seen.clear()
                polled.clear()
                done.clear()
                value = 2000 + i + (uuid.uuid4().int % 1000) * 1000
                target["value"] = value
                t0 = time.perf_counter()
                res = await st.store.apply(ChangeSetRequest(
                    change_id=f"bench-fleet-{uuid.uuid4()}", actor="rita", reason="benchmark",
                    changes=[SwitchChange(switch=SWITCH, value=value)]))
                fleet = await wait_fleet(st.etcd, st.store.prefix, FleetWaitInput(
                    revision=res.revision, class_s=switches.get(SWITCH).latency.seconds, timeout_s=10))
                confirmed.append((time.perf_counter() - t0) * 1000)
                fleet_sizes.append(len(fleet.consumers))
                if fleet.stragglers:
                    raise RuntimeError(f"a straggler in the benchmark's fleet: {fleet.summary()}")
                if not await wait_set(done, 10):
                    raise RuntimeError("every watch consumer did not apply the change within 10s")
                per_consumer.extend((t - t0) * 1000 for t in seen.values())
                deadline = time.perf_counter() + 5
                while len(polled) < pollers and time.perf_counter() < deadline:
                    await asyncio.sleep(0.01)
                if len(polled) < pollers:
                    raise RuntimeError(f"only {len(polled)} of {pollers} OFREP clients saw revision {res.revision}")
                ofrep_ms.extend((t - t0) * 1000 for t in polled.values())
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for w in watchers:
                await w.stop()
            for c in conns:
                await c.close()
    base = summary(await bare_put_to_watch_ms(st.etcd, changes * 5, "/bench-fleet-baseline/"))
    w, c, o = summary(per_consumer), summary(confirmed), summary(ofrep_ms)
    return {
        "consumers": consumers, "changes": changes, "ofrep_clients": pollers, "ofrep_poll_ms": POLL_MS,
        "fleet_counted": max(fleet_sizes), "watch_applied_ms": w, "fleet_confirmed_ms": c, "ofrep_seen_ms": o,
        "bare_etcd_put_to_watch_ms": base, "ofrep_polls": polls["n"], "ofrep_304_share": round(polls["304"] / max(1, polls["n"]), 3),
        "watch_ratio_p50": round(w["p50"] / base["p50"], 1), "watch_ratio_p99": round(w["p99"] / base["p99"], 1),
        "confirmed_ratio_p50": round(c["p50"] / base["p50"], 1), "confirmed_ratio_p99": round(c["p99"] / base["p99"], 1),
        "ofrep_ratio_p50": round(o["p50"] / base["p50"], 1), "ofrep_ratio_p99": round(o["p99"] / base["p99"], 1),
    }

