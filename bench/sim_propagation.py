"""Switch change -> applied by the trading core, measured through the simulator.

    .venv/bin/python bench/sim_propagation.py [--changes 200] [--json OUT]

Starts its own etcd and simulator on free loopback ports (nothing shared with a running dev
stack), initialises a switch store under a fresh prefix, then makes N audited changes one after
the other (SwitchStore.apply: one etcd transaction each) and, for each, waits the way workflows do
(TradingCoreActivities.wait_applied: GET /v1/config/applied every ~20 ms until the revision shows).

Reported, per change (same machine, same wall clock for both processes):
- issue -> applied_at: from just before the client starts the change set to the `applied_at` the
  simulator stamped when its watcher delivered the change (upper bound of commit -> applied: it
  includes the store's reads and the transaction);
- ack -> applied_at: from the client's transaction returning to `applied_at` (can be negative: the
  watch event may land before the client sees its own reply);
- wait_applied: from the transaction returning to the activity seeing the revision (includes the
  ~20 ms polling granularity: what a workflow waits).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contracts.changes import ChangeSetRequest, SwitchChange  # noqa: E402
from activities.switch_store import SwitchStore  # noqa: E402
from contracts.trading_core import WaitAppliedInput  # noqa: E402
from activities.trading_core import TradingCoreActivities  # noqa: E402
from core import procs  # noqa: E402
from core.etcd import Etcd  # noqa: E402
from core.settings import TradingCoreSettings  # noqa: E402


def stats(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {
        "n": len(s),
        "median_ms": round(statistics.median(s), 2),
        "p95_ms": round(s[min(len(s) - 1, int(0.95 * len(s)))], 2),
        "max_ms": round(s[-1], 2),
        "min_ms": round(s[0], 2),
    }


async def run(n: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="rbctl-bench-sim-"))
    cport, pport, sport = procs.free_port(), procs.free_port(), procs.free_port()
    etcd_proc = procs.start_etcd(tmp / "etcd", cport, pport, tmp / "etcd.log")
    token = uuid.uuid4().hex
    prefix = f"/bench-{uuid.uuid4().hex[:8]}/"
    sim_url = f"http://127.0.0.1:{sport}"
    t_spawn = time.monotonic()
    sim_proc = procs.spawn([sys.executable, "-m", "simulator"], tmp / "sim.log", env={
        "ROLLBACKCTL_ETCD_ENDPOINTS": f"127.0.0.1:{cport}", "ROLLBACKCTL_ETCD_PREFIX": prefix,
        "ROLLBACKCTL_TRADING_CORE_URL": sim_url, "ROLLBACKCTL_TRADING_CORE_TOKEN": token,
        "ROLLBACKCTL_LOG_LEVEL": "WARNING", "ROLLBACKCTL_SIM_PARENT_PID": str(os.getpid()),
    })
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            while True:  # start-up: poll the other process until it answers
                if sim_proc.poll() is not None:
                    raise RuntimeError((tmp / "sim.log").read_text())
                try:
                    if (await http.get(f"{sim_url}/sim/status")).json().get("watching"):
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.01)
            startup_s = time.monotonic() - t_spawn
            async with Etcd([f"127.0.0.1:{cport}"]) as etcd:
                store = SwitchStore(etcd, prefix)
                await store.init(super_admin="bench", actor="bench")
                core = TradingCoreActivities.from_settings(
                    TradingCoreSettings(url=sim_url, token=SecretStr(token)), http)
                issue, ack, waited = [], [], []
                for i in range(n):
                    value = 1 + (i % 99)
                    req = ChangeSetRequest(change_id=f"bench-{i}-{uuid.uuid4().hex[:6]}", actor="bench",
                                           reason="propagation benchmark",
                                           changes=[SwitchChange(switch="betting_traffic_pct", value=value)])
                    t_issue = time.time()
                    res = await store.apply(req)
                    t_ack = time.time()
                    cfg = await core.wait_applied(WaitAppliedInput(revision=res.revision, timeout_s=10))
                    sw = cfg.switches["betting_traffic_pct"]
                    assert sw.value == value and sw.revision == res.revision, (sw, res.revision)
                    at = sw.applied_at.timestamp()
                    issue.append((at - t_issue) * 1000)
                    ack.append((at - t_ack) * 1000)
                    waited.append(cfg.waited_s * 1000)
        return {
            "at": datetime.now().isoformat(timespec="seconds"),
            "changes": n,
            "machine": f"{os.cpu_count()} cpus, loopback",
            "sim_startup_s": round(startup_s, 3),
            "issue_to_applied": stats(issue),
            "ack_to_applied": stats(ack),
            "wait_applied_activity": stats(waited),
        }
    finally:
        procs.stop(sim_proc.pid)
        procs.stop(etcd_proc.pid)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--changes", type=int, default=200)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if args.changes < 1:
        p.error("--changes must be >= 1")
    out = asyncio.run(run(args.changes))
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
