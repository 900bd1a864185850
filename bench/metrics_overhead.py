"""What /metrics costs on the critical path: the critical rollback (start -> HL_MODE applied) and switch
propagation (audited change -> applied at the simulator) with every metrics endpoint off and on, in one
run on one stack. Target (issue 17): the p50s <= 5% apart.

The worker, the simulator and the monitor are restarted between blocks with ROLLBACKCTL_DEV_METRICS
off / on ("on": the domain endpoints, the collectors polling every second, the SDK's Prometheus
exporter, the collectors at their default 10 s, and a scraper reading every endpoint every 5 s as the
dev stack's Prometheus config does). Blocks alternate
off, on, off, on, ... so drift in the machine's load falls on both.
"""

from __future__ import annotations

import asyncio
import os
import time

import httpx

from bench import critical_rollback, propagation
from bench.stack import BenchStack
from bench.stats import summary
from core.aio import wait_set
from core.temporal_client import connect
from rollbackctl import devstack

RESTARTED = ["sim", "worker", "monitor"]
WARMUP = 3  # samples dropped after each restart (imports, first connections, caches)
COLLECT_S = 10.0  # the workflow collectors' default interval
SCRAPE_S = 5.0  # the scrape interval of the Prometheus config `dev up` writes


def _lines(path, text: str) -> int:
    try:
        return path.read_text(errors="replace").count(text)
    except OSError:
        return 0


async def _restart(st: BenchStack, on: bool) -> list[str]:
    os.environ["ROLLBACKCTL_DEV_METRICS"] = "true" if on else "false"
    os.environ["ROLLBACKCTL_METRICS_COLLECT_S"] = str(COLLECT_S)
    stack = devstack.Stack()
    before = {c: _lines(stack.log(c), m) for c, m in (("worker", "worker started"), ("monitor", "P0 monitor polling every"))}
    devstack.down(out=lambda *_: None, only=RESTARTED)
    devstack.up(only=RESTARTED, out=lambda *_: None)
    deadline = time.monotonic() + 60
    while any(_lines(stack.log(c), m) <= before[c] for c, m in (("worker", "worker started"),
                                                              ("monitor", "P0 monitor polling every"))):
        if time.monotonic() > deadline:
            raise RuntimeError("worker or monitor did not come back")
        await asyncio.sleep(0.1)
    return [f"http://{t}/metrics" for c in RESTARTED for t in stack.metrics_targets(c)] if on else []


async def _scrape(urls: list[str], stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(timeout=2) as http:
        while not stop.is_set():
            for u in urls:
                try:
                    (await http.get(u)).raise_for_status()
                except httpx.HTTPError:
                    pass
            await wait_set(stop, SCRAPE_S)


async def run(st: BenchStack, rounds: int = 3, runs: int = 20, changes: int = 60) -> dict:
    samples = {m: {"rollback": [], "propagation": []} for m in ("off", "on")}
    saved = {k: os.environ.get(k) for k in ("ROLLBACKCTL_DEV_METRICS", "ROLLBACKCTL_METRICS_COLLECT_S")}
    try:
        for _ in range(rounds):
            for mode in ("off", "on"):
                urls = await _restart(st, mode == "on")
                stop = asyncio.Event()
                scraper = asyncio.create_task(_scrape(urls, stop))
                client = await connect(st.temporal)
                async with httpx.AsyncClient() as http:  # a freshly started worker's first runs are not kept
                    await critical_rollback.inproc_samples(st, client, http, WARMUP)
                    samples[mode]["rollback"] += await critical_rollback.inproc_samples(st, client, http, runs)
                await propagation.audited_samples(st, WARMUP)
                samples[mode]["propagation"] += await propagation.audited_samples(st, changes)
                stop.set()
                await scraper
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        await _restart(st, True)
    out: dict = {}
    for what in ("rollback", "propagation"):
        off, on = summary(samples["off"][what]), summary(samples["on"][what])
        out[f"{what}_off_ms"], out[f"{what}_on_ms"] = off, on
        out[f"{what}_p50_on_vs_off"] = round(on["p50"] / off["p50"], 3)
    out["target"] = "p50 on / off <= 1.05"
    out["met"] = all(out[f"{w}_p50_on_vs_off"] <= 1.05 for w in ("rollback", "propagation"))
    return out
