"""Critical cross-module rollback: `rollback start` -> routing_mode=HL_MODE applied at the simulator.

Runs against a running embedded stack (`rollbackctl dev up`: etcd, Temporal, simulator, worker).
Each run: internalization on (NORMAL_MODE), wait until the simulator applied it, then start a
critical cross-module rollback (eager start, as the CLI does) and time until the simulator reports
HL_MODE applied (its own `applied_at` stamp, and when our poll saw it). Workflows are terminated
after the measurement.

    .venv/bin/python -m bench.critical_rollback --runs 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx

from activities.changes import ChangeSetRequest, SwitchChange
from activities.switch_store import SwitchStore
from manual.rollback import Durations, Scope, Severity
from rollbackctl.etcd import Etcd
from rollbackctl.settings import EtcdSettings, TemporalSettings, TradingCoreSettings
from rollbackctl.temporal_client import connect
from workflows.models import RollbackInput
from workflows.rollback import RollbackWorkflow


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def wait_switch(http: httpx.AsyncClient, url: str, name: str, value, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sw = (await http.get(f"{url}/sim/switches")).json()["switches"][name]
        if sw["value"] == value:
            return sw
        await asyncio.sleep(0.002)
    raise TimeoutError(f"{name} never became {value!r}")


async def main(runs: int, operator: str, admin: str) -> dict:
    es, ts, core = EtcdSettings(), TemporalSettings(), TradingCoreSettings()
    client = await connect(ts)
    samples_applied, samples_seen = [], []
    async with Etcd.from_settings(es) as etcd, httpx.AsyncClient() as http:
        store = SwitchStore(etcd, es.prefix)
        for i in range(runs):
            await store.apply(ChangeSetRequest(
                change_id=f"bench-setup-{uuid.uuid4()}", actor=admin, reason="bench setup",
                changes=[SwitchChange(switch="global_betting_enabled", value=True),
                         SwitchChange(switch="routing_mode", value="NORMAL_MODE")]))
            await wait_switch(http, core.url, "routing_mode", "NORMAL_MODE")
            inc = f"bench-{uuid.uuid4().hex[:10]}"
            t0_wall = datetime.now(timezone.utc)
            t0 = time.monotonic()
            h = await client.start_workflow(
                RollbackWorkflow.run,
                RollbackInput(incident_id=inc, summary="bench", severity=Severity.CRITICAL, scope=Scope.CROSS,
                              requested_by=operator, reason="benchmark", drill=True,
                              durations=Durations(observe=timedelta(seconds=1), check_interval=timedelta(seconds=1))),
                id=f"rollback-{inc}", task_queue=ts.task_queue, request_eager_start=True)
            sw = await wait_switch(http, core.url, "routing_mode", "HL_MODE")
            samples_seen.append((time.monotonic() - t0) * 1000)
            applied_at = datetime.fromisoformat(sw["applied_at"].replace("Z", "+00:00"))
            samples_applied.append((applied_at - t0_wall).total_seconds() * 1000)
            await h.terminate("benchmark sample taken")
    out = {}
    for name, xs in (("start_to_applied_ms", samples_applied), ("start_to_seen_ms", samples_seen)):
        out[name] = {"n": len(xs), "p50": round(pct(xs, 50), 1), "p90": round(pct(xs, 90), 1),
                     "p99": round(pct(xs, 99), 1), "max": round(max(xs), 1), "mean": round(statistics.mean(xs), 1)}
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--as", dest="operator", default="oscar")
    ap.add_argument("--admin", default="alice")
    a = ap.parse_args()
    res = asyncio.run(main(a.runs, a.operator, a.admin))
    print(json.dumps(res, indent=2))
    import os
    os._exit(0)
