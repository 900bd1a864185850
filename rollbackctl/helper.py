"""The warm helper: a resident process with the CLI and its libraries imported and its parser built,
that forks once per command (issue 21, item 2). `rollbackctl helper start|stop|status` (opt-in); the
console script's side, and the rules for when a command may use it, are in rollbackctl/launch.py.

`python -m rollbackctl.helper serve DIR` runs one in the foreground. It:
- computes the fingerprint of the code before it imports anything of it, and refuses to start when the
  code changed while it imported;
- imports what the commands need, but creates no event loop, no gRPC channel and no Temporal runtime,
  and checks that it runs no second thread: a fork copies only the thread that calls it;
- accepts only its own uid (SO_PEERCRED), and before each command re-checks the fingerprint: when the
  code changed it refuses (the caller runs the command directly) and exits;
- reaps its children, and exits after ROLLBACKCTL_HELPER_IDLE seconds without a command (default 8 h),
  or on SIGTERM / SIGINT, removing its socket and pid file.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback

from rollbackctl import launch

# What a command forked from the helper should find imported. Each costs a cold process 30-430 ms.
PRELOAD = (
    "temporalio.client", "temporalio.service", "temporalio.common", "temporalio.converter",
    "pydantic", "pydantic_settings", "aetcd", "grpc", "httpx", "structlog",
    "cryptography.hazmat.primitives.asymmetric.ed25519", "cryptography.hazmat.primitives.serialization",
)
PRELOAD_PACKAGES = ("core", "contracts", "manual")
DEFAULT_IDLE_S = 8 * 3600
GO_WAIT_S = 30.0  # a child whose caller does not answer its pid with "go" in this long runs nothing


def preload() -> list[str]:
    """Import the CLI, its parser and PRELOAD, and every module of PRELOAD_PACKAGES; the modules imported."""
    import pkgutil

    before = set(sys.modules)
    from rollbackctl import cli

    cli.parser()
    for name in PRELOAD:
        importlib.import_module(name)
    for pkg in PRELOAD_PACKAGES:
        mod = importlib.import_module(pkg)
        for info in pkgutil.walk_packages(mod.__path__, prefix=pkg + "."):
            importlib.import_module(info.name)
    return sorted(set(sys.modules) - before)


def idle_s() -> float:
    """ROLLBACKCTL_HELPER_IDLE: seconds without a command after which a helper exits."""
    return float(os.environ.get("ROLLBACKCTL_HELPER_IDLE", DEFAULT_IDLE_S))


def pid_path(sock: str) -> str:
    return sock[: -len(".sock")] + ".pid"


def alive(sock: str) -> bool:
    """A helper answers at `sock`."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(sock)
        return True
    except OSError:
        return False
    finally:
        s.close()


class _Stop(Exception):
    pass


def _run_child(conn: socket.socket, listener: socket.socket, req: dict) -> None:
    """In the forked child: become the caller's command, report its exit code, exit. Never returns."""
    code = 1
    try:
        listener.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        try:
            launch.send_msg(conn, {"pid": os.getpid()})
            conn.settimeout(GO_WAIT_S)
            go, fds = launch.recv_msg_with_fds(conn)
        except OSError:
            go, fds = None, []
        if not go or not go.get("go") or len(fds) != 3:  # the caller went away or gave up: run nothing, say nothing
            os._exit(1)
        conn.settimeout(None)
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(req["cwd"])
        os.umask(int(req["umask"]))
        os.environ.clear()
        os.environ.update(req["env"])
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", line_buffering=os.isatty(1))
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                                      line_buffering=True)
        sys.argv = ["rollbackctl", *req["argv"]]
        threading.Thread(target=_end_with_caller, args=(conn,), daemon=True, name="caller-watch").start()
        from rollbackctl import cli

        code = cli.run(list(req["argv"]))
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        try:
            launch.send_msg(conn, {"exit": code})
        except OSError:
            pass
        os._exit(code)


def _end_with_caller(conn: socket.socket) -> None:
    """In the child: the caller sends nothing after "go", so the end of its socket is the caller's end (killed,
    even with SIGKILL). The command ends with it, as it would have run in the caller's own process."""
    try:
        conn.recv(1)
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)  # SIG_DFL in the child: it ends here


def serve(directory: str, idle_s: float = DEFAULT_IDLE_S) -> int:
    """Run the helper until SIGTERM, SIGINT, idleness or a change of the code. Exit code 0, or 2 with one line
    on stderr when it cannot start."""
    fp = launch.fingerprint()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if not launch.private_dir(directory):
        print(f"rollbackctl helper: {directory} must be this user's alone (mode 0700); not starting", file=sys.stderr)
        return 2
    sock = launch.socket_path(directory, fp)
    if alive(sock):
        print(f"rollbackctl helper: one already serves this code at {sock}", file=sys.stderr)
        return 0
    t0 = time.monotonic()
    loaded = preload()
    if threading.active_count() > 1:
        names = ", ".join(t.name for t in threading.enumerate() if t is not threading.main_thread())
        print(f"rollbackctl helper: importing started threads ({names}); a fork would not copy them; not starting",
              file=sys.stderr)
        return 2
    if launch.fingerprint() != fp:
        print("rollbackctl helper: the code changed while it was imported; not starting", file=sys.stderr)
        return 2
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock)  # a dead helper's
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock)
    os.chmod(sock, 0o600)
    listener.listen(64)
    pidfile = pid_path(sock)
    with open(pidfile, "w") as f:
        f.write(f"{os.getpid()}\n")
    print(f"rollbackctl helper: pid {os.getpid()} serving {sock}; {len(loaded)} modules imported in "
          f"{time.monotonic() - t0:.2f} s", file=sys.stderr, flush=True)

    def stop(signum, _frame):
        raise _Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, stop)
    last = time.monotonic()
    reason = "idle"
    try:
        while True:
            _reap()
            left = idle_s - (time.monotonic() - last)
            if left <= 0:
                break
            ready, _, _ = select.select([listener], [], [], min(left, 1.0))
            if not ready:
                continue
            conn, _ = listener.accept()
            last = time.monotonic()
            if not _serve_one(conn, listener, fp):
                reason = "the code changed"
                break
    except _Stop as e:
        reason = str(e)
    finally:
        listener.close()
        for p in (sock, pidfile):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        _reap()
    print(f"rollbackctl helper: pid {os.getpid()} stopped ({reason})", file=sys.stderr, flush=True)
    return 0


def _serve_one(conn: socket.socket, listener: socket.socket, fp: str) -> bool:
    """Take one command: fork it off, or refuse it. False when the helper must stop (its code changed)."""
    stray: list[int] = []
    try:
        _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                             struct.calcsize("3i")))
        if uid != os.getuid():
            return True  # not ours: closed without a word
        req, stray = launch.recv_msg_with_fds(conn)  # fds come later, with "go"; any here are closed
        if req is None:
            return True
        if launch.fingerprint() != fp:
            launch.send_msg(conn, {"refused": "the code changed since the helper started; it stops"})
            return False
        child = os.fork()
        if child == 0:
            _run_child(conn, listener, req)  # never returns
        return True
    except (OSError, ValueError, KeyError, ConnectionError) as e:
        print(f"rollbackctl helper: a request failed: {e}", file=sys.stderr, flush=True)
        return True
    finally:
        for fd in stray:
            with contextlib.suppress(OSError):
                os.close(fd)
        conn.close()


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m rollbackctl.helper")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run a helper in the foreground")
    s.add_argument("directory", nargs="?", default=None)
    args = p.parse_args(argv)
    sys.exit(serve(args.directory or launch.helper_dir(), idle_s()))


if __name__ == "__main__":
    main()
