"""Fixtures of the fault tests: processes they start themselves, each stopped by a finalizer.

- `temporal` (package): a Temporal dev server with its state in a --db-filename file; `tclient`.
- `workers`: `python -m worker` subprocesses on the test's task queue, etcd prefix and simulator
  (their settings come from the environment only, as in production); all stopped at teardown.
- `proxies`: loopback TCP proxies (hold / freeze / cut) put between a worker and etcd or Temporal.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.infra import TemporalServer, Workers, connect
from tests.support.proxy import Proxy


@pytest.fixture(scope="package")
def temporal():
    srv = TemporalServer(Path(tempfile.mkdtemp(prefix="rbctl-faults-temporal-")))
    srv.start()
    yield srv
    srv.stop()
    shutil.rmtree(srv.dir, ignore_errors=True)


@pytest_asyncio.fixture(scope="package")
async def tclient(temporal):
    return await connect(temporal.address)


@pytest.fixture
def own_temporal(tmp_path):
    """A Temporal dev server of the test's own (on a db file), for tests that SIGKILL and restart it."""
    srv = TemporalServer(tmp_path / "temporal").start()
    yield srv
    srv.stop()


@pytest.fixture
def worker_env(sim_env, etcd_server, temporal, task_queue) -> dict[str, str]:
    return {
        **sim_env,
        "ROLLBACKCTL_ETCD_ENDPOINTS": etcd_server.endpoint,
        "TEMPORAL_ADDRESS": temporal.address,
        "TEMPORAL_NAMESPACE": "default",
        "ROLLBACKCTL_TASK_QUEUE": task_queue,
        "ROLLBACKCTL_LOG_FORMAT": "json",
        "ROLLBACKCTL_LOG_LEVEL": "INFO",
        # These tests send unsigned decisions, as a local drill does (signing is tested on its own).
        "ROLLBACKCTL_SIGNING": "off",
        # The Change Events relay would read etcd on its own, which the crash tests' held etcd proxies take
        # as "this worker is inside the step" (the relay is tested in tests/test_change_events.py).
        "ROLLBACKCTL_PAGERDUTY_CHANGE_EVENTS": "false",
        # Likewise the emergency lane's follow-up reconciler (tested in tests/faults/test_emergency_lane.py).
        "ROLLBACKCTL_EMERGENCY_RECONCILE_S": "0",
    }


@pytest.fixture
def workers(worker_env, tmp_path):
    ws = Workers(tmp_path / "workers", worker_env)
    yield ws
    ws.close()


@pytest.fixture
def proxies():
    made: list[Proxy] = []

    def make(upstream: str) -> Proxy:
        p = Proxy(upstream).start()
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def pytest_terminal_summary(terminalreporter):
    """The count of fuzzed inputs (tests/faults/test_fuzz.py), at the end of the run."""
    fuzz = sys.modules.get("tests.faults.test_fuzz")
    if fuzz is not None and sum(fuzz.COUNT.values()):
        terminalreporter.write_line(fuzz.summary())
