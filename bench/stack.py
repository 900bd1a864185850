"""An isolated embedded stack for benchmarks: its own ports, data dir and key prefix.

Everything a benchmark measures runs for real: etcd, the Temporal dev server, the simulator and
the worker, as `rollbackctl dev up` starts them, on free loopback ports (a running dev stack is not
touched).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from activities.switch_store import SwitchStore
from manual.roles import Role
from rollbackctl import devstack, procs
from rollbackctl.etcd import Etcd
from rollbackctl.settings import EtcdSettings, TemporalSettings, TradingCoreSettings

OPERATORS = {"rita": Role.RISK_MANAGER, "oscar": Role.ON_CALL, "sam": Role.SUPER_ADMIN}


@dataclass
class BenchStack:
    dir: Path
    etcd: Etcd
    store: SwitchStore
    temporal: TemporalSettings
    core: TradingCoreSettings
    env: dict[str, str]

    def pid(self, component: str) -> int | None:
        return devstack.Stack().running(component)

    def peak_rss_mb(self, component: str) -> float | None:
        pid = self.pid(component)
        if not pid:
            return None
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None


def _wait_log(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{path.name}: {text!r} not seen within {timeout}s:\n{path.read_text(errors='replace')[-2000:]}")


@asynccontextmanager
async def isolated_stack(out=print):
    d = Path(tempfile.mkdtemp(prefix="rbctl-bench-"))
    env = {
        "ROLLBACKCTL_DEV_DIR": str(d),
        "ROLLBACKCTL_ETCD_ENDPOINTS": f"127.0.0.1:{procs.free_port()}",
        "ROLLBACKCTL_ETCD_PREFIX": "/bench/",
        "ROLLBACKCTL_DEV_ETCD_PEER_PORT": str(procs.free_port()),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{procs.free_port()}",
        "ROLLBACKCTL_DEV_TEMPORAL_UI_PORT": str(procs.free_port()),
        "ROLLBACKCTL_TRADING_CORE_URL": f"http://127.0.0.1:{procs.free_port()}",
        "ROLLBACKCTL_TASK_QUEUE": "bench",
        "ROLLBACKCTL_LOG_FORMAT": "json",
        "ROLLBACKCTL_LOG_LEVEL": "INFO",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        st = devstack.up(out=lambda line: out("  " + line.strip()))
        core = TradingCoreSettings()
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient() as http:
            while True:
                try:
                    if (await http.get(f"{core.url}/sim/status", timeout=0.5)).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("simulator did not answer")
                time.sleep(0.05)
        es = EtcdSettings()
        async with Etcd.from_settings(es) as etcd:
            store = SwitchStore(etcd, es.prefix)
            await store.init(super_admin="alice", actor="alice")
            for name, role in OPERATORS.items():
                if await store.operator(name) is None:
                    await store.add_operator(name, role, actor="alice")
            _wait_log(st.log("worker"), "worker started", 30)
            yield BenchStack(d, etcd, store, TemporalSettings(), core, {**st.env(), **env})
    finally:
        devstack.down(out=lambda line: None)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(d, ignore_errors=True)
