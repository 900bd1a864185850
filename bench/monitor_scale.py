"""The P0 monitor at 1,000 symbols, polled every 500 ms (issue 21, item 6).

The simulator reports per-symbol order deviation and volatility for 1,000 symbols (set through its
fault API, so every health read carries 2,000 per-symbol values over HTTP, as a large exchange's core
would). A monitor (activities/monitor.py, the production class) polls it every 500 ms in this process
and delivers to a recorder instead of Temporal, so what is measured is the monitor itself:
- detection: a symbol's deviation set to 7% (random symbol, random phase against the polls) -> the
  monitor's firing transition delivered, minus the rule's hold (2 reads: one interval);
- CPU per poll: process CPU time (user + system) of each poll (read, parse, validate, detect).
The stack's own monitor keeps polling too (1 s): it sees the same faults and opens its incidents.
"""

from __future__ import annotations

import asyncio
import random
import time

import httpx

from activities.monitor import Monitor
from activities.trading_core import TradingCoreActivities
from bench.stack import BenchStack
from bench.stats import summary
from contracts.incidents import MonitorInput
from contracts.trading_core import ReadHealthInput
from core.settings import TradingCoreSettings
from manual import alerts


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, bool, float]] = []

    async def deliver(self, ks, report) -> None:
        self.events.append((ks.rule, ks.symbol, report.firing, time.monotonic()))

    async def open_keys(self):
        return []


async def run(st: BenchStack, symbols: int = 1000, runs: int = 20, interval_s: float = 0.5) -> dict:
    names = [f"S{i:03d}" for i in range(1, symbols + 1)]
    hold_s = (alerts.get("order_deviation").hold.polls - 1) * interval_s
    core_settings = TradingCoreSettings(url=st.core.url, token=st.core.token)
    detect: list[float] = []
    cpu_ms: list[float] = []
    wall_ms: list[float] = []
    async with httpx.AsyncClient(timeout=10) as http:
        auth = {"Authorization": f"Bearer {st.core.token.get_secret_value()}"}

        async def fault(body: dict) -> None:
            r = await http.post(f"{st.core.url}/sim/faults", json=body, headers=auth)
            r.raise_for_status()

        await fault({"order_price_deviation": {s: 0.001 for s in names}, "volatility_pct": {s: 1.0 for s in names}})
        core = TradingCoreActivities.from_settings(core_settings, http)

        async def read(timeout_s: float) -> dict:
            return (await core.read_health(ReadHealthInput(timeout_s=timeout_s))).model_dump(mode="json")

        rec = Recorder()
        mon = Monitor(MonitorInput(interval_s=interval_s, namespace="bench-scale"), read, rec)
        plain = mon.poll

        async def timed_poll():
            c0, w0 = time.process_time(), time.perf_counter()
            try:
                return await plain()
            finally:
                cpu_ms.append((time.process_time() - c0) * 1000)
                wall_ms.append((time.perf_counter() - w0) * 1000)

        mon.poll = timed_poll
        task = asyncio.create_task(mon.run())
        try:
            polls = len(cpu_ms)
            while len(cpu_ms) < polls + 4:  # warmed up: the first reads seen
                await asyncio.sleep(0.05)
            for _ in range(runs):
                sym = random.choice(names)
                await asyncio.sleep(random.uniform(0, interval_s))
                seen = len(rec.events)
                t0 = time.monotonic()
                await fault({"order_price_deviation": {sym: 0.07}})
                deadline = t0 + 15
                while not any(e[:3] == ("order_deviation", sym, True) for e in rec.events[seen:]):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the 7% deviation of {sym} was not detected within 15 s")
                    await asyncio.sleep(0.005)
                at = next(e[3] for e in rec.events[seen:] if e[:3] == ("order_deviation", sym, True))
                detect.append((at - t0 - hold_s) * 1000)
                await fault({"order_price_deviation": {sym: 0.001}})
                while not any(e[:3] == ("order_deviation", sym, False) for e in rec.events[seen:]):
                    if time.monotonic() > deadline + 15:
                        raise RuntimeError(f"{sym}'s clear was not delivered")
                    await asyncio.sleep(0.005)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await http.delete(f"{st.core.url}/sim/faults", headers=auth)
    return {"symbols": symbols, "interval_ms": interval_s * 1000, "runs": runs,
            "fault_to_detected_minus_hold_ms": summary(detect), "cpu_per_poll_ms": summary(cpu_ms),
            "wall_per_poll_ms": summary(wall_ms), "polls": len(cpu_ms)}
