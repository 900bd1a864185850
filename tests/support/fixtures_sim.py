"""Simulator fixtures (registered from conftest.py with `pytest_plugins`).

- `sim_server` (session): the simulator as a real subprocess (`python -m simulator`) on a free
  loopback port, following the session's test etcd (`etcd_server`), with its own bearer token.
  Start-up measured here: ~0.6 s to the first answer (Python imports, then etcd), so one process
  serves the session.
- `sim` (per test): a SimClient on that process after `POST /sim/reset` to the test's `prefix`
  (faults, actions, pages, market state forgotten; the switch watcher re-pointed; a few ms), so
  each test sees its own switches, e.g. those of the `store` fixture.
- `core_settings`, `paging_settings`: TradingCoreSettings / PagingSettings pointing at it (paging at
  the simulator's PagerDuty and Slack sinks, one routing key and webhook path per escalation level).
- `sim_env`: the environment variables a worker or CLI subprocess needs to use it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr

from contracts.changes import ChangeSetRequest, SwitchChange
from manual import escalation
from core import procs
from core.settings import PagingSettings, TradingCoreSettings
from simulator.client import SimClient

SIM_TOKEN = f"sim-token-{uuid.uuid4().hex}"
# PagerDuty integration keys are exactly 32 characters (its Events API answers 400 otherwise).
LEVEL_KEYS = [uuid.uuid4().hex for lv in escalation.LEVELS]
LEVEL_HOOKS = [f"T000/B00{lv.level}/{uuid.uuid4().hex[:12]}" for lv in escalation.LEVELS]
# A game-day PagerDuty service (one key per level) and Slack channel (ROLLBACKCTL_*_DRILL_*).
DRILL_KEYS = [uuid.uuid4().hex for lv in escalation.LEVELS]
DRILL_HOOK = f"T000/BD00/{uuid.uuid4().hex[:12]}"


@dataclass
class SimServer:
    proc: subprocess.Popen
    port: int
    log: Path
    startup_s: float
    token: str = SIM_TOKEN

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def start_sim(etcd_endpoint: str, prefix: str = "/sim-idle/", timeout: float = 20.0) -> SimServer:
    port = procs.free_port()
    log = Path(tempfile.mkdtemp(prefix="rbctl-sim-")) / "sim.log"
    env = {
        "ROLLBACKCTL_ETCD_ENDPOINTS": etcd_endpoint,
        "ROLLBACKCTL_ETCD_PREFIX": prefix,
        "ROLLBACKCTL_TRADING_CORE_URL": f"http://127.0.0.1:{port}",
        "ROLLBACKCTL_TRADING_CORE_TOKEN": SIM_TOKEN,
        "ROLLBACKCTL_LOG_LEVEL": "WARNING",
        "ROLLBACKCTL_LOG_FORMAT": "json",
        "ROLLBACKCTL_SIM_PARENT_PID": str(os.getpid()),
        "ROLLBACKCTL_SIM_PAGERDUTY_KEYS": ",".join(LEVEL_KEYS + DRILL_KEYS),  # the account's integration keys
    }
    t0 = time.monotonic()
    proc = procs.spawn([sys.executable, "-m", "simulator"], log, env=env)
    srv = SimServer(proc, port, log, 0.0)
    deadline = t0 + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"simulator exited with {proc.returncode}:\n{srv.log_tail()}")
        try:
            r = httpx.get(f"{srv.url}/sim/status", timeout=0.5)
            if r.status_code == 200 and r.json().get("watching"):
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            procs.stop(proc.pid)
            raise RuntimeError(f"simulator did not answer within {timeout:g}s:\n{srv.log_tail()}")
        time.sleep(0.02)  # start-up poll of another process (not a synchronisation stand-in)
    srv.startup_s = time.monotonic() - t0
    return srv


@pytest.fixture(scope="session")
def sim_server(etcd_server):
    srv = start_sim(etcd_server.endpoint)
    yield srv
    procs.stop(srv.proc.pid)
    srv.proc.wait(timeout=10)


@pytest_asyncio.fixture
async def sim(sim_server, prefix) -> SimClient:
    client = SimClient(sim_server.url, token=sim_server.token)
    await client.reset(prefix=prefix, seed=7)
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def http():
    """A plain httpx client (the simulator's /sim/ routes need no token)."""
    async with httpx.AsyncClient() as c:
        yield c


@pytest.fixture
def core_settings(sim_server) -> TradingCoreSettings:
    return TradingCoreSettings(url=sim_server.url, token=SecretStr(sim_server.token), timeout_s=2.0)


@pytest.fixture
def paging_settings(sim_server) -> PagingSettings:
    return PagingSettings(
        pagerduty_url=SecretStr(f"{sim_server.url}/sim/pagerduty/v2/enqueue"),
        pagerduty_routing_keys=SecretStr(",".join(LEVEL_KEYS)),
        slack_webhook_urls=SecretStr(",".join(f"{sim_server.url}/sim/slack/{h}" for h in LEVEL_HOOKS)),
        paging_timeout_s=2.0,
    )


@pytest.fixture
def drill_paging_settings(paging_settings, sim_server) -> PagingSettings:
    """paging_settings with a drill routing key per level and a drill Slack webhook."""
    return paging_settings.model_copy(update=dict(
        pagerduty_drill_routing_keys=SecretStr(",".join(DRILL_KEYS)),
        slack_drill_webhook_urls=SecretStr(f"{sim_server.url}/sim/slack/{DRILL_HOOK}")))


@pytest.fixture
def sim_env(sim_server, prefix) -> dict[str, str]:
    """Environment for a subprocess (worker, CLI) using the simulator and its sinks."""
    return {
        "ROLLBACKCTL_TRADING_CORE_URL": sim_server.url,
        "ROLLBACKCTL_TRADING_CORE_TOKEN": sim_server.token,
        "ROLLBACKCTL_PAGERDUTY_URL": f"{sim_server.url}/sim/pagerduty/v2/enqueue",
        "ROLLBACKCTL_PAGERDUTY_ROUTING_KEYS": ",".join(LEVEL_KEYS),
        "ROLLBACKCTL_SLACK_WEBHOOK_URLS": ",".join(f"{sim_server.url}/sim/slack/{h}" for h in LEVEL_HOOKS),
        "ROLLBACKCTL_ETCD_PREFIX": prefix,
    }


# -- helpers ----------------------------------------------------------------------------------------
async def apply(store, actor: str = "alice", **changes):
    """One change set through the audited store (alice is the test Super Admin)."""
    return await store.apply(ChangeSetRequest(
        change_id=f"t-{uuid.uuid4().hex[:12]}", actor=actor, reason="test",
        changes=[SwitchChange(switch=k, value=v) for k, v in changes.items()]))


async def apply_and_wait(sim: SimClient, store, **changes):
    """Apply, then wait until the simulator reports the revision applied."""
    res = await apply(store, **changes)
    await sim.wait_applied(res.revision)
    return res


async def order(sim: SimClient, symbol: str, notional: float, side: str = "buy") -> dict:
    """Place a simulated order; returns the routing decision."""
    r = await sim.v1("POST", "/v1/orders", {"symbol": symbol, "notional_usd": notional, "side": side})
    assert r.status_code == 200, r.text
    return r.json()
