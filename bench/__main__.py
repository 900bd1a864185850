"""`make bench`: every benchmark against an isolated embedded stack it starts itself.

    .venv/bin/python -m bench [--only NAME ...] [--quick]

Writes bench/results/<date>.json and bench/results/<date>.md (the machine described, each benchmark's
wall time). A `--quick` run (fewer samples: a smoke test) writes <date>-quick.*, a run of some
benchmarks only <date>-only-NAME[+NAME].*, so neither overwrites a full run's figures.

The benchmarks in BENCHES share one stack (etcd, Temporal dev server, simulator, worker, P0 monitor:
bench/stack.py), one after the other; before each, `reset` terminates what an earlier one left running,
resets the simulator and puts every switch back to its default, so their order does not matter. The
10-day canary runs afterwards on its own time-skipping server (bench/canary.py).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

# name -> (module, kwargs for a full run, kwargs for --quick); run in this order on the shared stack
BENCHES: dict[str, tuple[str, dict, dict]] = {
    "propagation": ("bench.propagation", {"changes": 200}, {"changes": 30}),
    "fleet": ("bench.fleet", {"consumers": 50, "changes": 40, "pollers": 50}, {"consumers": 50, "changes": 8, "pollers": 50}),
    "critical_rollback": ("bench.critical_rollback", {"runs": 50, "cli_runs": 10}, {"runs": 10, "cli_runs": 3}),
    "cli": ("bench.cli", {"runs": 10}, {"runs": 3}),
    "detection": ("bench.detection", {"runs": 20}, {"runs": 5}),
    "concurrency": ("bench.concurrency", {"rollbacks": 200}, {"rollbacks": 30}),
    "incidents": ("bench.incidents", {"incidents": 200}, {"incidents": 30}),
    "emergency_lane": ("bench.emergency_lane", {"n": 200, "cli_runs": 10}, {"n": 30, "cli_runs": 3}),
    "oncall_path": ("bench.oncall_path", {"observe_s": 30}, {"observe_s": 10}),
    "monitor_scale": ("bench.monitor_scale", {"symbols": 1000, "runs": 20}, {"symbols": 1000, "runs": 5}),
    "remote_temporal": ("bench.remote_temporal", {"runs": 20}, {"runs": 5}),
    "takeover": ("bench.takeover", {"kills": 10}, {"kills": 3}),
    "storm": ("bench.storm", {"rollbacks": 200, "incidents": 200, "quiet": 10},
              {"rollbacks": 30, "incidents": 30, "quiet": 3}),
    "metrics_overhead": ("bench.metrics_overhead", {"rounds": 3, "runs": 20, "changes": 60},
                         {"rounds": 1, "runs": 5, "changes": 15}),
}
# name -> (module, kwargs): benchmarks with servers of their own, run after the shared stack is down
OWN_STACK: dict[str, tuple[str, dict]] = {
    "canary_10_days": ("bench.canary", {}),
}


def _version(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
        return out[0] if out else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine() -> dict:
    from core import procs

    mem = next((ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")), "0")
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    try:
        import temporalio

        sdk = temporalio.__version__
    except Exception:  # pragma: no cover
        sdk = "?"
    return {"cpus": os.cpu_count(), "cpu": cpu, "mem_gib": round(int(mem) / 1024 / 1024, 1),
            "python": platform.python_version(), "platform": platform.platform(), "temporalio": sdk,
            "temporal_cli": _version([procs.binary("temporal"), "--version"]),
            "etcd": _version([procs.binary("etcd"), "--version"]),
            "load_avg_at_start": os.getloadavg()[0]}


# -- markdown ---------------------------------------------------------------------------------------
def fmt(v, key: str = "") -> str:
    """Numbers as a reader wants them: ints with separators; seconds (`_s`) and MB (`_mb`) to 0.1;
    other floats to 3 significant digits (whole numbers from 1,000 up); dicts and lists compact."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if key.endswith(("_s", "_mb")) and abs(v) >= 0.95:
            return f"{v:,.1f}"
        return f"{v:,.0f}" if abs(v) >= 999.5 else f"{v:.3g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {fmt(x, key)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x) for x in v) or "-"
    return str(v).replace("|", "/")


def _is_dist(v) -> bool:
    return isinstance(v, dict) and "p50" in v


def _about(name: str) -> str:
    mod = (BENCHES.get(name) or OWN_STACK.get(name) or ("",))[0]
    try:
        doc = importlib.import_module(mod).__doc__ or ""
    except ImportError:
        return ""
    first = " ".join(doc.strip().split("\n\n")[0].split())
    return first


def markdown(res: dict) -> str:
    m = res["machine"]
    kind = "quick run (fewer samples: a smoke test, not figures)" if res["quick"] else "full run"
    only = f", only {', '.join(res['only'])}" if res.get("only") else ""
    lines = [
        f"# rollbackctl benchmarks, {res['date']}", "",
        f"{kind}{only}; total wall time {fmt(res['total_wall_s'], '_s')} s"
        + (f" (the shared stack's start-up {fmt(res['wall_s']['stack_start'], '_s')} s)" if "stack_start" in res["wall_s"]
           else "") + ".", "",
        f"Machine: {m['cpus']} cores ({m['cpu']}), {fmt(m['mem_gib'])} GiB RAM, {m['platform']}; "
        f"Python {m['python']}, temporalio {m['temporalio']}, {m['temporal_cli']}, {m['etcd']}. "
        f"Load average at start {fmt(m['load_avg_at_start'])}. Everything on loopback, every process on this "
        "machine: the benchmark's own client competes with the servers for the same cores.", "",
        "Times in ms unless the name says otherwise (`_s`: seconds).", "",
    ]
    if res.get("failed"):
        lines += [f"FAILED: {', '.join(res['failed'])}", ""]
    for bench, out in res["results"].items():
        wall = res["wall_s"].get(bench)
        lines += [f"## {bench}" + (f" ({fmt(wall, '_s')} s)" if wall is not None else ""), ""]
        about = _about(bench)
        if about:
            lines += [about, ""]
        cpu = res.get("cpu_s", {}).get(bench)
        if cpu:
            lines += ["CPU seconds used meanwhile (user + system): " + fmt(cpu, "_s") + ".", ""]
        if isinstance(out, dict) and "error" in out and len(out) == 1:
            lines += [f"FAILED: {out['error']}", ""]
            continue
        dists = {k: v for k, v in out.items() if _is_dist(v)}
        if dists:
            lines += ["| metric | n | p50 | p90 | p99 | max | mean |", "|---|---:|---:|---:|---:|---:|---:|"]
            for k, v in dists.items():
                lines.append(f"| {k} | {fmt(v['n'])} | " + " | ".join(fmt(v.get(c), k) for c in
                                                                     ("p50", "p90", "p99", "max", "mean")) + " |")
            lines.append("")
        scalars = {k: v for k, v in out.items() if not _is_dist(v)}
        if scalars:
            lines += ["| metric | value |", "|---|---|"]
            lines += [f"| {k} | {fmt(v, k)} |" for k, v in scalars.items()]
            lines.append("")
    return "\n".join(lines)


# -- running ---------------------------------------------------------------------------------------------
async def _one(name: str, mod: str, call, res: dict, st=None) -> None:
    try:
        m = importlib.import_module(mod)
    except ImportError as e:
        print(f"- {name}: skipped ({e})")
        return
    print(f"- {name} ...", flush=True)
    cpu0 = st.cpu_seconds() if st is not None else {}
    pids0 = {c: st.pid(c) for c in cpu0 if c != "bench_client"} if st is not None else {}
    t0 = time.monotonic()
    try:
        res["results"][name] = await call(m)
    except Exception as e:  # one failing benchmark does not lose the others' figures
        res["results"][name] = {"error": f"{type(e).__name__}: {e}"[:500]}
        res["failed"].append(name)
    res["wall_s"][name] = round(time.monotonic() - t0, 1)
    if st is not None:
        cpu1 = st.cpu_seconds()
        # a component the benchmark restarted (takeover kills workers) is a new process: its count started over
        res["cpu_s"][name] = {k: round(cpu1[k] - cpu0[k], 1) if pids0.get(k) == st.pid(k) or k == "bench_client"
                              else "restarted" for k in cpu1 if k in cpu0}
    print(json.dumps(res["results"][name], indent=2), flush=True)
    print(f"  ({name}: {res['wall_s'][name]} s" + (f"; CPU s: {fmt(res['cpu_s'][name])}" if name in res["cpu_s"]
                                                   else "") + ")", flush=True)


def _py_spy(pid: int | None, out: Path):
    """Start `py-spy record` on `pid` (a flame graph SVG at `out`); None when py-spy is not installed."""
    import shutil
    import sys

    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if exe is None or pid is None:
        print("  --py-spy: py-spy not found (pip install -e '.[dev]') or the process is not running", flush=True)
        return None
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", "50", "--format", "flamegraph",
                             "--nonblocking", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def main(only: list[str] | None, quick: bool, py_spy: str | None = None, stem: str = "") -> dict:
    from bench.stack import isolated_stack, reset

    unknown = set(only or ()) - set(BENCHES) - set(OWN_STACK)
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(sorted(unknown))}; known: "
                         f"{', '.join([*BENCHES, *OWN_STACK])}")
    t_all = time.monotonic()
    res = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": machine(), "quick": quick,
           "only": only or [], "results": {}, "wall_s": {}, "cpu_s": {}, "failed": []}
    shared = [n for n in BENCHES if not only or n in only]
    if shared:
        print("starting an isolated stack (etcd, Temporal dev server, simulator, worker, P0 monitor)...")
        t0 = time.monotonic()
        async with isolated_stack() as st:
            res["wall_s"]["stack_start"] = round(time.monotonic() - t0, 1)
            spy = _py_spy(st.pid(py_spy), RESULTS / f"profile-{stem}-{py_spy}.svg") if py_spy else None
            for name in shared:
                mod, full, small = BENCHES[name]
                kw = small if quick else full
                done = await reset(st)  # not on the benchmark's clock
                if done["terminated"] or done["switches_reset"]:
                    print(f"  reset: {done['terminated']} workflows terminated, switches back to defaults: "
                          f"{', '.join(done['switches_reset']) or '-'}", flush=True)
                await _one(name, mod, lambda m, kw=kw: m.run(st, **kw), res, st)
            if spy is not None:
                import signal

                spy.send_signal(signal.SIGINT)
                spy.wait(60)
                print(f"  py-spy: {RESULTS / f'profile-{stem}-{py_spy}.svg'}", flush=True)
    for name, (mod, kw) in OWN_STACK.items():
        if only and name not in only:
            continue
        await _one(name, mod, lambda m, kw=kw: m.run(**kw), res)
    res["total_wall_s"] = round(time.monotonic() - t_all, 1)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--only", nargs="*", help=f"some benchmarks only: {', '.join([*BENCHES, *OWN_STACK])}")
    ap.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    ap.add_argument("--py-spy", metavar="COMPONENT", choices=["etcd", "temporal", "sim", "worker", "monitor"],
                    help="profile that process (Python ones: sim, worker, monitor) across the shared benchmarks "
                         "with py-spy (the dev extra): bench/results/profile-<stem>-COMPONENT.svg")
    a = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    stem = (datetime.now(timezone.utc).strftime("%Y-%m-%d") + ("-quick" if a.quick else "")
            + (f"-only-{'+'.join(a.only)}" if a.only else ""))
    out = asyncio.run(main(a.only, a.quick, a.py_spy, stem))
    path = RESULTS / stem
    path.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(out))
    print(f"\nwrote {path}.json and {path}.md ({out['total_wall_s']} s in all)")
    os._exit(1 if out["failed"] else 0)
