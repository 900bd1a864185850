"""`make bench`: every benchmark against an isolated embedded stack it starts itself.

Writes bench/results/<date>.json and bench/results/<date>.md (with the machine described).
    .venv/bin/python -m bench [--only NAME ...] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

# name -> (module, kwargs for a full run, kwargs for --quick)
BENCHES: dict[str, tuple[str, dict, dict]] = {
    "propagation": ("bench.propagation", {"changes": 200}, {"changes": 30}),
    "critical_rollback": ("bench.critical_rollback", {"runs": 50, "cli_runs": 10}, {"runs": 10, "cli_runs": 3}),
    "concurrency": ("bench.concurrency", {"rollbacks": 200}, {"rollbacks": 30}),
}


def machine() -> dict:
    mem = next((ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")), "?")
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"cpus": os.cpu_count(), "cpu": cpu, "mem_gib": round(int(mem) / 1024 / 1024, 1),
            "python": platform.python_version(), "platform": platform.platform()}


def markdown(res: dict) -> str:
    lines = [f"# rollbackctl benchmarks, {res['date']}", "",
             f"Machine: {res['machine']['cpus']} cores ({res['machine']['cpu']}), {res['machine']['mem_gib']} GiB, "
             f"Python {res['machine']['python']}. Everything on loopback; times in ms unless named.", "",
             "| benchmark | metric | n | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|---|"]
    for bench, out in res["results"].items():
        for metric, v in out.items():
            if isinstance(v, dict) and "p50" in v:
                lines.append(f"| {bench} | {metric} | {v['n']} | {v['p50']} | {v['p90']} | {v['p99']} | {v['max']} |")
        extras = {k: v for k, v in out.items() if not (isinstance(v, dict) and "p50" in v)}
        for k, v in extras.items():
            lines.append(f"| {bench} | {k} | | {v} | | | |")
    return "\n".join(lines) + "\n"


async def main(only: list[str] | None, quick: bool) -> dict:
    from bench.stack import isolated_stack

    res = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": machine(), "quick": quick,
           "results": {}, "wall_s": {}}
    print("starting an isolated stack (etcd, Temporal dev server, simulator, worker)...")
    async with isolated_stack() as st:
        for name, (mod, full, small) in BENCHES.items():
            if only and name not in only:
                continue
            try:
                m = importlib.import_module(mod)
            except ImportError as e:
                print(f"- {name}: skipped ({e})")
                continue
            print(f"- {name} ...", flush=True)
            t0 = time.monotonic()
            res["results"][name] = await m.run(st, **(small if quick else full))
            res["wall_s"][name] = round(time.monotonic() - t0, 1)
            print(json.dumps(res["results"][name], indent=2), flush=True)
    for name, mod in (("canary_10_days", "bench.canary"),):
        if only and name not in only:
            continue
        try:
            m = importlib.import_module(mod)
        except ImportError as e:
            print(f"- {name}: skipped ({e})")
            continue
        print(f"- {name} ...", flush=True)
        res["results"][name] = await m.run()
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    a = ap.parse_args()
    out = asyncio.run(main(a.only, a.quick))
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / (out["date"] + ("-quick" if a.quick else ""))
    stem.with_suffix(".json").write_text(json.dumps(out, indent=2))
    stem.with_suffix(".md").write_text(markdown(out))
    print(f"\nwrote {stem}.json and {stem}.md")
    os._exit(0)
