"""`rollbackctl helper start|stop|status`: the opt-in warm helper that commands fork from (rollbackctl/launch.py,
rollbackctl/helper.py)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rollbackctl.cli.common import CliError, print_json

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "helper", help="a warm helper process that commands fork from: `rollback start` in ~0.1 s, not ~0.7 s",
        description="Opt-in. The helper keeps the CLI's libraries imported; each command forks from it and runs "
                    "with your terminal, environment and working directory. It is used only for the code it was "
                    "started with (a fingerprint of every file of rollbackctl and of the interpreter), only by "
                    "your uid, and only for commands that end by themselves (switch, rollback, status, ...). "
                    "ROLLBACKCTL_HELPER=off bypasses it; ROLLBACKCTL_HELPER_TRACE=1 says which way a command went.")
    hs = p.add_subparsers(dest="helper_cmd", metavar="SUBCOMMAND", required=True)
    s = hs.add_parser("start", help="start one for this code (nothing to do when one runs)")
    s.set_defaults(func=cmd_start)
    s = hs.add_parser("stop", help="stop every helper of this user, for this code or older")
    s.set_defaults(func=cmd_stop)
    s = hs.add_parser("status", help="the helpers of this user: pid, socket, whether they serve this code")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_status)


def _helpers(d: str) -> list[dict]:
    """Every helper's pid file in `d`: its pid, socket, whether it lives and whether it serves this code."""
    from rollbackctl import launch
    from rollbackctl.helper import alive

    current = launch.socket_path(d, launch.fingerprint())
    out = []
    for pid_file in sorted(Path(d).glob("h-*.pid")) if os.path.isdir(d) else []:
        sock = str(pid_file.with_suffix(".sock"))
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = None
        out.append({"pid": pid, "socket": sock, "current": sock == current,
                    "running": pid is not None and _is_helper(pid) and alive(sock)})
    return out


def _is_helper(pid: int) -> bool:
    """pid is a live helper process of this user (not a pid reused by something else)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return os.stat(f"/proc/{pid}").st_uid == os.getuid() and b"rollbackctl.helper" in cmd
    except OSError:
        return False


def cmd_start(args) -> int:
    from rollbackctl import launch
    from rollbackctl.helper import alive, pid_path

    d = launch.helper_dir()
    os.makedirs(d, mode=0o700, exist_ok=True)
    if not launch.private_dir(d):
        raise CliError(f"{d} must be yours alone (mode 0700) to hold the helper's socket; fix it or set "
                       "ROLLBACKCTL_HELPER_DIR")
    sock = launch.socket_path(d, launch.fingerprint())
    if alive(sock):
        pid = Path(pid_path(sock)).read_text().strip()
        print(f"a helper already serves this code: pid {pid}, socket {sock}")
        return 0
    log = os.path.join(d, "helper.log")
    t0 = time.monotonic()
    with open(log, "ab") as out:
        # -P and cwd /: the helper imports what the console script would, not a package that happens to sit in
        # the directory it was started from (and keeps no directory busy)
        proc = subprocess.Popen([sys.executable, "-P", "-m", "rollbackctl.helper", "serve", d], cwd="/",
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, close_fds=True)
    while not alive(sock):  # its own exit, or the deadline: never an endless wait
        if proc.poll() is not None:
            raise CliError(f"the helper did not start (exit {proc.returncode}): {_last_line(log)} (log: {log})")
        if time.monotonic() - t0 > START_TIMEOUT_S:
            proc.terminate()
            raise CliError(f"the helper was not ready after {START_TIMEOUT_S:.0f} s; stopped it (log: {log})")
        time.sleep(0.05)
    print(f"helper started: pid {proc.pid}, ready in {time.monotonic() - t0:.1f} s, socket {sock}")
    print(f"commands such as `rollbackctl rollback start` and `switch list` now fork from it; it serves only this "
          f"code and exits after editing or upgrading it, or {_idle_h():g} h idle. Stop: `rollbackctl helper stop`. "
          f"Log: {log}")
    return 0


def cmd_stop(args) -> int:
    from rollbackctl import launch
    from rollbackctl.helper import pid_path

    d = launch.helper_dir()
    stopped, cleaned = [], 0
    for h in _helpers(d):
        if h["pid"] is not None and _is_helper(h["pid"]):
            os.kill(h["pid"], signal.SIGTERM)
            stopped.append(h)
        else:  # a dead helper's leftovers
            for p in (h["socket"], pid_path(h["socket"])):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
            cleaned += 1
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for h in stopped:
        while _is_helper(h["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _is_helper(h["pid"]):
            raise CliError(f"helper pid {h['pid']} did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM")
    for h in stopped:
        print(f"stopped helper pid {h['pid']} ({'this code' if h['current'] else 'older code'})")
    if cleaned:
        print(f"removed {cleaned} dead helper's socket and pid file" if cleaned == 1
              else f"removed {cleaned} dead helpers' sockets and pid files")
    if not stopped and not cleaned:
        print(f"no helper runs (in {d})")
    return 0


def cmd_status(args) -> int:
    from rollbackctl import launch

    d = launch.helper_dir()
    hs = _helpers(d)
    if args.json:
        print_json({"directory": d, "helpers": hs})
        return 0
    if not hs:
        print(f"no helper (in {d}); commands run directly. Start one: `rollbackctl helper start`")
    for h in hs:
        state = "running" if h["running"] else "dead (leftover files; `rollbackctl helper stop` removes them)"
        code = "serves this code" if h["current"] else "older code: never used; `rollbackctl helper stop` ends it"
        print(f"pid {h['pid']}: {state}; {code}; socket {h['socket']}")
    return 0


def _idle_h() -> float:
    from rollbackctl.helper import idle_s

    return idle_s() / 3600


def _last_line(path: str) -> str:
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no log"
