"""The command line's own cost: `rollbackctl rollback start` from process start to its start request at
Temporal, and `switch list` and `--help` as whole processes, beside the floor they stand on.

Issue 21, item 2 (target: each <= 150 ms). Every figure is a whole process started by this benchmark,
interleaved, so all share the same load:
- python_floor:        `python -c pass` (the interpreter and site, nothing of ours)
- temporal_sdk_import: `python -c "import temporalio.client"`: the Temporal client alone
- import_floor:        the libraries `rollback start` cannot do without, imported and nothing run:
                       asyncio, pydantic, pydantic-settings, the etcd client (aetcd, grpc), the Ed25519
                       signer (cryptography) and the Temporal client (temporalio)
- help:                `rollbackctl --help` (the parser: no model and no client is imported)
- switch_list:         `rollbackctl switch list` to its exit (settings, etcd, the matrix printed)
- rollback_start_to_request: spawn -> the WorkflowExecutionStarted event's time at the Temporal server
                       (the server's clock on this machine: the request received, one loopback hop after
                       it was sent) for a signed critical cross-module rollback (`--drill`), terminated after
- *_helper:            the same three commands forked from a warm helper (`rollbackctl helper start`, opt-in;
                       rollbackctl/launch.py): spawn of the console script -> the same end point
The direct figures run with ROLLBACKCTL_HELPER=off, so a helper of the user's cannot serve them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.stats import summary

PY = sys.executable
ROLLBACKCTL = str(Path(sys.executable).parent / "rollbackctl")
FLOOR_IMPORTS = ("import asyncio, pydantic, pydantic_settings, aetcd, "
                 "cryptography.hazmat.primitives.asymmetric.ed25519, temporalio.client")
TARGET_MS = 150


def _wall(args: list[str], env: dict) -> float:
    t = time.perf_counter()
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    ms = (time.perf_counter() - t) * 1000
    assert p.returncode == 0, (args, p.returncode, p.stdout[-500:], p.stderr[-1500:])
    _went_as_asked(p, env)
    return ms


def _went_as_asked(p, env: dict) -> None:
    """A *_helper sample ran in a fork of the helper (its trace says so); a direct one did not."""
    assert ("forked from the helper" in p.stderr) == ("ROLLBACKCTL_HELPER_DIR" in env), p.stderr[-500:]


def _helper(env: dict, cmd: str) -> str:
    p = subprocess.run([ROLLBACKCTL, "helper", cmd], env=env, capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, (cmd, p.returncode, p.stdout[-500:], p.stderr[-1500:])
    return p.stdout


async def _start_to_request(client, env: dict) -> float:
    inc = f"bench-cli-{uuid.uuid4().hex[:10]}"
    wid = f"rollback-{inc}"
    t0 = time.time()
    p = await asyncio.to_thread(
        subprocess.run, [ROLLBACKCTL, "rollback", "start", "--severity", "critical_path_failure", "--scope",
                         "cross_module", "--incident", inc, "--as", "oscar", "--reason", "benchmark", "--drill",
                         "--observe", "1s", "--interval", "1s"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "started rollback" in p.stdout, (p.returncode, p.stdout[-500:], p.stderr[-1500:])
    _went_as_asked(p, env)
    h = client.get_workflow_handle(wid)
    first = None
    async for e in h.fetch_history_events():
        first = e
        break
    await h.terminate("benchmark sample taken")
    return (first.event_time.ToDatetime().timestamp() - t0) * 1000


async def run(st, runs: int = 10) -> dict:
    from core.temporal_client import connect

    client = await connect(st.temporal)
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "ROLLBACKCTL_HELPER_DIR")}
    env = {**base, **st.env, "ROLLBACKCTL_HELPER": "off"}
    hdir = tempfile.mkdtemp(prefix="bench-helper-")  # 0700: this run's helper only
    henv = {**base, **st.env, "ROLLBACKCTL_HELPER_DIR": hdir, "ROLLBACKCTL_HELPER_TRACE": "1"}
    # compiled once (as an installed package is), then measured
    for args in ([PY, "-c", FLOOR_IMPORTS], [ROLLBACKCTL, "--help"], [ROLLBACKCTL, "switch", "list"]):
        _wall(args, env)
    _helper(henv, "start")
    try:
        out: dict[str, list[float]] = {k: [] for k in (
            "python_floor", "temporal_sdk_import", "import_floor", "help", "switch_list", "rollback_start_to_request",
            "help_helper", "switch_list_helper", "rollback_start_to_request_helper")}
        for _ in range(runs):  # interleaved: the same load on each
            out["python_floor"].append(_wall([PY, "-c", "pass"], env))
            out["temporal_sdk_import"].append(_wall([PY, "-c", "import temporalio.client"], env))
            out["import_floor"].append(_wall([PY, "-c", FLOOR_IMPORTS], env))
            out["help"].append(_wall([ROLLBACKCTL, "--help"], env))
            out["help_helper"].append(_wall([ROLLBACKCTL, "--help"], henv))
            out["switch_list"].append(_wall([ROLLBACKCTL, "switch", "list"], env))
            out["switch_list_helper"].append(_wall([ROLLBACKCTL, "switch", "list"], henv))
            out["rollback_start_to_request"].append(await _start_to_request(client, env))
            out["rollback_start_to_request_helper"].append(await _start_to_request(client, henv))
    finally:
        _helper(henv, "stop")
        shutil.rmtree(hdir, ignore_errors=True)
    res: dict = {f"{k}_ms": summary(v) for k, v in out.items()}
    p50 = {k: res[f"{k}_ms"]["p50"] for k in out}
    res["rollback_start_over_import_floor_p50"] = round(p50["rollback_start_to_request"] / p50["import_floor"], 2)
    res["switch_list_over_python_floor_p50"] = round(p50["switch_list"] / p50["python_floor"], 2)
    res["target_ms"] = TARGET_MS
    res["target_rollback_start_met"] = p50["rollback_start_to_request"] <= TARGET_MS
    res["target_switch_list_met"] = p50["switch_list"] <= TARGET_MS
    res["target_rollback_start_met_with_helper"] = p50["rollback_start_to_request_helper"] <= TARGET_MS
    res["target_switch_list_met_with_helper"] = p50["switch_list_helper"] <= TARGET_MS
    res["rollback_start_helper_over_direct_p50"] = round(
        p50["rollback_start_to_request_helper"] / p50["rollback_start_to_request"], 2)
    res["import_floor_over_target"] = round(p50["import_floor"] / TARGET_MS, 2)
    return res
