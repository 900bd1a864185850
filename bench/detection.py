"""P0 detection: a fault injected at the simulator -> its immediate action applied at the simulator.

    .venv/bin/python bench/detection.py [--runs 20] [--interval 1.0] [--json OUT]

Starts an isolated embedded stack (bench/stack.py: etcd, Temporal dev server, simulator, worker and
the P0 monitor exactly as `rollbackctl dev up` runs them; the monitor polls every --interval s, the
default 1 s being production's), then per run:
1. after a random delay (0..interval: a random phase against the poll schedule), POST /sim/faults
   with the fault (time taken just before the request);
2. wait until GET /sim/actions lists the immediate action; the simulator stamps `at` when it
   performed it;
3. clear the fault, wait for the monitor to report it clear, resolve the incident (as on-call), so
   the next run opens a fresh incident.

Latency = action `at` - injection time - the rule's hold. Rules:
- hl_disconnection: the injected `hl_disconnected_for_s: 61` is the reported hold itself (the core
  measures the outage), so nothing is excluded;
- asset_mismatch: a 2-read hold: (2 - 1) x interval is subtracted (the first read that sees the
  fault counts; the rule fires on the second).
Split: inject -> detected (the monitor's firing read: waiting for the next poll, reading health)
and detected -> action (signal-with-start, the incident's first workflow task, the local activity
POST /v1/actions/...). All processes share this machine's clock.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stats import summary  # noqa: E402
from manual import alerts  # noqa: E402

RULES = {
    "hl_disconnection": ({"hl_connected": False, "hl_disconnected_for_s": 61.0}, "pause_new_orders"),
    "asset_mismatch": ({"asset_mismatch_ratio": 0.004}, "pause_trading"),
}


def _ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


async def _wait(fetch, pred, timeout: float, what: str, every: float = 0.02):
    """Poll `fetch` until `pred`. Not on the clock: the latencies come from the simulator's and the
    incident's own timestamps, so polling less often only spares the processes measured."""
    deadline = time.monotonic() + timeout
    while True:
        v = await fetch()
        if pred(v):
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s (last {str(v)[:300]})")
        await asyncio.sleep(every)


async def one(http: httpx.AsyncClient, client, base: str, rule: str, interval: float, signer=None) -> dict:
    from workflows.incident import IncidentWorkflow
    from contracts.incidents import ResolveRequest, incident_workflow_id

    fault, action = RULES[rule]
    await http.delete(f"{base}/sim/actions")
    # a random phase against the monitor's poll schedule: runs back to back would otherwise all land
    # at the same point of the interval (this delay is not part of what is measured)
    await asyncio.sleep(random.uniform(0, interval))
    t_inject = time.time()
    r = await http.post(f"{base}/sim/faults", json=fault)
    r.raise_for_status()
    acts = await _wait(lambda: _get(http, f"{base}/sim/actions"), lambda a: any(x["action"] == action for x in a),
                       30, f"{rule} action")
    at = _ts(next(x for x in acts if x["action"] == action)["at"])
    hold_excluded = (alerts.get(rule).hold.polls - 1) * interval
    h = client.get_workflow_handle_for(IncidentWorkflow.run, incident_workflow_id(rule))
    st = await _wait(lambda: h.query(IncidentWorkflow.state), lambda s: s.ready, 30, "incident ready", 0.1)
    detected = st.detected_at.timestamp()
    # close it so that the next run opens a new incident
    await http.delete(f"{base}/sim/faults")
    await _wait(lambda: h.query(IncidentWorkflow.state), lambda s: s.condition == "clear", 30, "clear reported", 0.1)
    req = ResolveRequest(actor="oscar", reason="bench")
    if signer is not None:  # signing on (the bench stack): signed, as `rollbackctl resolve` does
        await signer.decide(client, h.id, "resolve", req)
    else:
        await h.execute_update(IncidentWorkflow.resolve, req)
    await h.result()
    return {
        "total_ms": (at - t_inject) * 1000 - hold_excluded * 1000,
        "inject_to_detected_ms": (detected - t_inject) * 1000 - hold_excluded * 1000,
        "detected_to_action_ms": (at - detected) * 1000,
    }


async def _get(http: httpx.AsyncClient, url: str):
    r = await http.get(url)
    r.raise_for_status()
    return r.json()


async def run(st=None, runs: int = 20, interval: float = 1.0) -> dict:
    """Measure on a given bench stack (bench/__main__.py: its monitor's interval, 1 s by default) or on an
    isolated one started here with `interval`."""
    if st is not None:
        interval = st.monitor_interval_s
    if st is None:
        from bench.stack import isolated_stack

        os.environ["ROLLBACKCTL_MONITOR_INTERVAL_S"] = str(interval)
        async with isolated_stack() as stack:
            return await run(stack, runs, interval)
    from core.temporal_client import connect

    client = await connect(st.temporal)
    base = st.core.url.rstrip("/")
    out: dict = {"monitor_interval_s": interval}
    async with httpx.AsyncClient(timeout=10) as http:
        # the monitor must be polling: its first firing read of a warm-up fault
        signer = getattr(st, "signer", None)
        await one(http, client, base, "hl_disconnection", interval, signer)
        for rule in RULES:
            samples = [await one(http, client, base, rule, interval, signer) for _ in range(runs)]
            for k in ("total_ms", "inject_to_detected_ms", "detected_to_action_ms"):
                out[f"{rule}.{k}"] = summary([s[k] for s in samples])
                out[f"{rule}.{k}"]["median"] = out[f"{rule}.{k}"]["p50"]
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--interval", type=float, default=1.0, help="the monitor's poll interval (s)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    a = ap.parse_args()
    res = asyncio.run(run(None, a.runs, a.interval))
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text)
    os._exit(0)
