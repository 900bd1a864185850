"""Real processes and network faults for the fault tests (no tests in here; fixtures in conftest.py).

- `TemporalServer`: `temporal server start-dev` on free loopback ports with its state in a
  `--db-filename` file, so that it can be stopped and started again with its workflows.
- `WorkerProc` / `Workers`: `python -m worker` subprocesses configured only by environment
  variables (as `rollbackctl dev up` runs them), JSON logs to a file, SIGKILL on demand.
- `Proxy`: a loopback TCP forwarder in its own thread (blocking calls in a test never stall it)
  that can `hold` (bytes from the client stop at the proxy and are counted: "the worker has
  started talking to etcd"), `freeze` (nothing flows either way, connections stay open: the
  worker's results never reach Temporal) and `cut` (every connection reset).
- `EtcdCluster`: three etcd members on loopback, each one stoppable.
- `wait_until`: poll a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from core import procs
from tests.support.waits import wait_until

REPO = Path(__file__).resolve().parents[2]


def clean_env(**settings: str) -> dict[str, str]:
    """os.environ without any ROLLBACKCTL_* / TEMPORAL_* of the caller, plus `settings`. A worker serves
    no emergency lane unless the test asks (the default port is the dev stack's: a test must not take it)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ROLLBACKCTL_", "TEMPORAL_"))}
    return {**base, "ROLLBACKCTL_EMERGENCY_LISTEN": "", **settings}


ROLLBACKCTL = str(Path(sys.executable).parent / "rollbackctl")


@dataclass
class Cli:
    code: int
    out: str
    err: str


async def cli(env: dict[str, str], *args: str) -> Cli:
    p = await asyncio.create_subprocess_exec(ROLLBACKCTL, *args, env=clean_env(**env), stdin=asyncio.subprocess.DEVNULL,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 60)
    return Cli(p.returncode, out.decode(), err.decode())


# -- Temporal ------------------------------------------------------------------------------------------
@dataclass
class TemporalServer:
    dir: Path
    port: int = 0
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def db(self) -> Path:
        return self.dir / "temporal.db"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> "TemporalServer":
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or procs.free_port()
        # Headless (no UI port to collide with), state in the db file: a restart keeps every workflow.
        args = procs.temporal_dev_args("127.0.0.1", self.port, None, self.db)
        self.proc = procs.spawn(args, self.dir / "temporal.log", env=clean_env())
        self.starts += 1
        try:
            procs.wait_temporal(self.address, "default", timeout, self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc.pid)
            self.proc.wait(timeout=15)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: no shutdown at all (what a crashed host looks like)."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
            self.proc = None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return (self.dir / "temporal.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""


async def connect(address: str):
    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter

    return await Client.connect(address, namespace="default", data_converter=pydantic_data_converter)


async def pollers(client, task_queue: str) -> set[str]:
    """Identities polling the task queue for workflow tasks."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    resp = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
        namespace=client.namespace, task_queue=TaskQueue(name=task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW))
    return {p.identity for p in resp.pollers}


# -- worker subprocesses ---------------------------------------------------------------------------------
@dataclass
class WorkerProc:
    name: str
    proc: subprocess.Popen
    log: Path
    started: float
    killed_at: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def identity(self) -> str:
        """The SDK's default worker identity: <pid>@<hostname>."""
        return f"{self.proc.pid}@{socket.gethostname()}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def sigkill(self) -> float:
        """SIGKILL the worker (no shutdown, no flush); returns the wall-clock time of the kill."""
        self.killed_at = time.time()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        return self.killed_at

    def stop(self) -> None:
        if self.alive():
            procs.stop(self.proc.pid)
            self.proc.wait(timeout=15)

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def json_lines(self) -> list[dict]:
        out = []
        for line in self.text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"_raw": line})
        return out


class Workers:
    """Starts `python -m worker` subprocesses; every one of them is stopped by `close()` (a finalizer)."""

    def __init__(self, dir: Path, env: dict[str, str]):
        self.dir = dir
        self.env = env
        self.started: list[WorkerProc] = []

    def start(self, name: str, **settings: str) -> WorkerProc:
        return self.run(name, [sys.executable, "-m", "worker"], **settings)

    def monitor(self, name: str = "monitor", **settings: str) -> WorkerProc:
        """`rollbackctl monitor` (the P0 monitor), as `rollbackctl dev up` starts it."""
        return self.run(name, [sys.executable, "-c", "from rollbackctl.cli import main; main(['monitor'])"],
                        **settings)

    def run(self, name: str, args: list[str], **settings: str) -> WorkerProc:
        self.dir.mkdir(parents=True, exist_ok=True)
        log = self.dir / f"{name}.log"
        env = clean_env(**{**self.env, **settings})
        f = open(log, "ab")
        try:
            p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True, env=env, cwd=REPO)
        finally:
            f.close()
        w = WorkerProc(name, p, log, time.time())
        self.started.append(w)
        return w

    async def wait_polling(self, client, task_queue: str, w: WorkerProc, timeout: float = 60.0) -> float:
        """Until the worker polls the task queue; returns seconds since it was started."""
        async def polling() -> bool:
            if not w.alive():
                raise AssertionError(f"worker {w.name} exited with {w.proc.returncode}:\n{w.text()[-3000:]}")
            return w.identity in await pollers(client, task_queue)
        await wait_until(polling, timeout, f"worker {w.name} polling {task_queue}", every=0.1)
        return time.time() - w.started

    def close(self) -> None:
        for w in self.started:
            try:
                w.stop()
            except Exception:  # keep stopping the others
                pass


# -- etcd ------------------------------------------------------------------------------------------------
@dataclass
class EtcdNode:
    """One etcd of a test's own, on free loopback ports, with its data dir kept across restarts."""

    dir: Path
    client_port: int = 0
    peer_port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> "EtcdNode":
        self.client_port = self.client_port or procs.free_port()
        self.peer_port = self.peer_port or procs.free_port()
        self.proc = procs.start_etcd(self.dir / "data", self.client_port, self.peer_port, self.dir / "etcd.log")
        return self

    def kill(self) -> float:
        """SIGKILL (no shutdown); returns the wall-clock time."""
        t = time.time()
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
            self.proc = None
        return t

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc.pid)
            self.proc.wait(timeout=15)
            self.proc = None


# -- etcd cluster -------------------------------------------------------------------------------------------
@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"


@dataclass
class EtcdCluster:
    """Three etcd members on loopback (one Raft cluster); `stop(i)` / `start(i)` one of them."""

    dir: Path
    members: list[EtcdMember] = field(default_factory=list)
    token: str = ""

    def __post_init__(self) -> None:
        if not self.members:
            self.members = [EtcdMember(f"m{i}", procs.free_port(), procs.free_port(), self.dir / f"m{i}",
                                       self.dir / f"m{i}.log") for i in range(3)]
        self.token = self.token or f"rbctl-{os.getpid()}-{time.monotonic_ns()}"

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def _args(self, m: EtcdMember, state: str) -> list[str]:
        cluster = ",".join(f"{x.name}=http://127.0.0.1:{x.peer_port}" for x in self.members)
        args = procs.etcd_args(m.data_dir, m.client_port, m.peer_port, name=m.name, extra=[
            "--initial-cluster-token", self.token, "--initial-cluster-state", state,
            # quicker leader election than the defaults (100 ms / 1000 ms) on a busy 2-core machine
            "--heartbeat-interval", "100", "--election-timeout", "1000"])
        i = args.index("--initial-cluster")
        args[i + 1] = cluster
        return args

    def start_all(self, timeout: float = 30.0) -> "EtcdCluster":
        for m in self.members:
            self.dir.mkdir(parents=True, exist_ok=True)
            m.proc = procs.spawn(self._args(m, "new"), m.log, env=clean_env())
        for m in self.members:
            procs.wait_tcp("127.0.0.1", m.client_port, timeout, m.proc, f"etcd {m.name}")
        return self

    def stop(self, i: int, hard: bool = True) -> None:
        m = self.members[i]
        if m.proc is not None:
            if hard:
                os.killpg(m.proc.pid, signal.SIGKILL)
            else:
                procs.stop(m.proc.pid)
            m.proc.wait(timeout=15)
            m.proc = None

    def start(self, i: int, timeout: float = 30.0) -> None:
        m = self.members[i]
        m.proc = procs.spawn(self._args(m, "existing"), m.log, env=clean_env())
        procs.wait_tcp("127.0.0.1", m.client_port, timeout, m.proc, f"etcd {m.name}")

    def etcdctl(self, *args: str, endpoints: list[str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([procs.binary("etcdctl"), "--endpoints", ",".join(endpoints or self.endpoints), *args],
                              capture_output=True, text=True, timeout=30, env=clean_env(ETCDCTL_API="3"))

    def close(self) -> None:
        for i in range(len(self.members)):
            try:
                self.stop(i)
            except Exception:
                pass
