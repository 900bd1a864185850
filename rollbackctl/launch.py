"""The `rollbackctl` console script: a command runs in a fork of the warm helper when one is running for
this very code, else here, directly. Standard library only: this module is what every command pays for
before it knows whether a helper will do the work (issue 21, item 2).

The helper (rollbackctl/helper.py, started with `rollbackctl helper start`, opt-in) has the CLI and its
libraries imported and its parser built. The exchange over its Unix socket:
1. this process sends argv, environment, working directory and umask;
2. the helper forks; the child sends its pid;
3. this process answers "go" with its stdin, stdout and stderr (SCM_RIGHTS): only now, so no fd of ours
   sits in a helper's queue, and only once it can forward signals to the child;
4. the child takes them, runs the command and sends back its exit code.
This process forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT to the child and exits with its code; the
child ends itself when this process's end of the socket closes (even after a SIGKILL). No answer in
FIRST_ANSWER_S, or a signal before step 3: the child (if any) runs nothing, and the command runs
directly or not at all, never twice.

It is used only when it is safe to:
- the command is one of HELPER_COMMANDS (commands that end by themselves: no servers, no prompts,
  nothing that writes key files);
- the helper's directory is this user's and closed to everyone else (0700), and the helper checks the
  caller's uid (SO_PEERCRED);
- the socket's name is a fingerprint of the code (every file of rollbackctl's packages: path, size,
  mtime) and of the interpreter, so a helper left running from before an upgrade or an edit is never
  found; the helper also re-checks it before each command and refuses (and exits) when it changed.
Anything else, or `ROLLBACKCTL_HELPER=off`: the command runs directly, as it always did.
`ROLLBACKCTL_HELPER_TRACE=1` says on stderr which way a command went.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import sys

# Top-level commands that may run in the helper: each ends by itself and reads nothing from the terminal.
# Not: init, keygen, operator (they write keys and bootstrap identities: run them in the open), dev, sim,
# monitor, console, ofrep (servers and stacks), passkey, paging (webhook receiver), helper itself.
HELPER_COMMANDS = frozenset({
    "switch", "audit", "rollback", "degrade", "confirm", "proceed", "cancel", "escalate", "fix", "withdraw",
    "stay", "status", "incidents", "ack", "tick", "resolve", "canary", "consumers", "drill", "-h", "--help",
})
# The project's packages (pyproject's packages.find) and module, the code a helper has imported.
PACKAGES = ("rollbackctl", "core", "manual", "contracts", "workflows", "activities", "simulator")
MODULES = ("worker.py",)
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
# How long the helper may take to say it forked (it takes milliseconds); past it the command runs directly.
# Safe: the helper's child runs nothing until this process answers its pid with "go".
FIRST_ANSWER_S = 5.0
_HEADER = struct.Struct("!I")


def helper_dir() -> str:
    """Where this user's helpers listen: ROLLBACKCTL_HELPER_DIR, else $XDG_RUNTIME_DIR/rollbackctl, else
    ~/.cache/rollbackctl/helper."""
    d = os.environ.get("ROLLBACKCTL_HELPER_DIR")
    if d:
        return os.path.abspath(d)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "rollbackctl")
    return os.path.join(os.path.expanduser("~"), ".cache", "rollbackctl", "helper")


def code_root() -> str:
    """The directory that holds rollbackctl's packages (the checkout, or site-packages)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fingerprint(root: str | None = None) -> str:
    """A digest of the interpreter and of every file of the project's packages (path, size, mtime):
    it changes when any of them is edited, upgraded, added or removed."""
    root = root or code_root()
    h = hashlib.sha256()
    h.update(f"{sys.executable}\0{sys.version}\0".encode())
    for prefix in sys.path:  # an installed or removed library changes its site-packages directory
        if prefix.endswith("site-packages"):
            try:
                h.update(f"{prefix}\0{os.stat(prefix).st_mtime_ns}\0".encode())
            except OSError:
                pass
    stack = [os.path.join(root, p) for p in PACKAGES]
    files = [os.path.join(root, m) for m in MODULES]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    if e.name != "__pycache__":
                        stack.append(e.path)
                elif not e.name.endswith((".pyc", ".pyo")):
                    files.append(e.path)
    for f in sorted(files):
        try:
            st = os.stat(f)
        except OSError:
            continue
        h.update(f"{os.path.relpath(f, root)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:20]


def socket_path(directory: str, fp: str) -> str:
    return os.path.join(directory, f"h-{fp}.sock")


def private_dir(directory: str) -> bool:
    """The directory is this user's and nobody else may enter it."""
    try:
        st = os.stat(directory)
    except OSError:
        return False
    return st.st_uid == os.getuid() and (st.st_mode & 0o077) == 0


def send_msg(sock: socket.socket, obj: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode()
    data = _HEADER.pack(len(data)) + data
    if fds:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
        n = sock.sendmsg([data], anc)
        data = data[n:]
    sock.sendall(data)


def recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def recv_msg_with_fds(sock: socket.socket, max_fds: int = 3) -> tuple[dict | None, list[int]]:
    """One message and the fds passed with it (SCM_RIGHTS, which ride on its first bytes); None at the end
    of the stream. The caller owns (and must close) the fds."""
    size = struct.calcsize("i")
    head, anc, _flags, _addr = sock.recvmsg(_HEADER.size, socket.CMSG_SPACE(max_fds * size))
    fds: list[int] = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            n = len(payload) // size
            fds.extend(struct.unpack(f"{n}i", payload[: n * size]))
    rest = recv_exact(sock, _HEADER.size - len(head)) if head else None
    if rest is None:
        return None, fds
    body = recv_exact(sock, _HEADER.unpack(head + rest)[0])
    return (None if body is None else json.loads(body)), fds


def recv_msg(sock: socket.socket) -> dict | None:
    """One message that carries no fds (any passed anyway are closed)."""
    msg, fds = recv_msg_with_fds(sock)
    for fd in fds:
        os.close(fd)
    return msg


def _trace(msg: str) -> None:
    if os.environ.get("ROLLBACKCTL_HELPER_TRACE") == "1":
        print(f"rollbackctl: helper: {msg}", file=sys.stderr, flush=True)


def via_helper(argv: list[str]) -> int | None:
    """Run the command in a fork of the helper: its exit code, or None when no helper took it (the caller
    runs it directly). The child sends its pid and runs the command only after this process answers "go":
    so a command runs once (here or there, never both), and never where a Ctrl-C could not reach it."""
    if os.environ.get("ROLLBACKCTL_HELPER", "").lower() in ("0", "off", "no", "false"):
        return None
    if not argv or argv[0] not in HELPER_COMMANDS:
        return None
    d = helper_dir()
    if not os.path.isdir(d):
        return None
    if not private_dir(d):
        _trace(f"{d} is not this user's alone (owner {os.getuid()}, mode 0700 expected); running directly")
        return None
    path = socket_path(d, fingerprint())
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError as e:
        s.close()
        _trace(f"none for this code ({e.strerror}); running directly")
        return None
    pid: int | None = None
    got: list[int] = []  # the signals received

    def forward(signum, _frame):
        got.append(signum)
        if pid is None:  # nothing runs yet, and nothing will (the helper's child waits for "go")
            raise _Interrupted(signum)
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    before = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        with s:
            s.settimeout(FIRST_ANSWER_S)
            try:  # the terminal's fds go only with "go", to a child that is there to take them (below)
                send_msg(s, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": _umask()})
                _trace(f"asked the helper at {path}")
                first = recv_msg(s)
            except OSError as e:  # including its silence past FIRST_ANSWER_S (a stopped or wedged helper)
                first = None
                _trace(f"did not answer ({e or 'timed out'})")
            if not first or "pid" not in first:
                for sig, handler in before.items():
                    signal.signal(sig, handler)
                _trace(f"refused ({(first or {}).get('refused', 'no answer')}); running directly")
                return None
            s.settimeout(None)
            pid = int(first["pid"])
            # From here a signal is forwarded, so the child may start: it runs nothing before this "go".
            _trace(f"running in pid {pid} forked from the helper at {path}")
            try:
                send_msg(s, {"go": True}, [0, 1, 2])
                last = recv_msg(s)
            except OSError:
                last = None
    except _Interrupted as e:
        return 128 + e.signum
    if last and "exit" in last:
        return int(last["exit"])
    if got:
        return 128 + got[-1]
    print(f"rollbackctl: error: the command's process (pid {pid}, forked from the helper) ended without an exit "
          "code; what it was doing may or may not have happened: check with `rollbackctl status`", file=sys.stderr)
    return 1


class _Interrupted(Exception):
    """A signal before the helper's child had its "go": nothing ran; the caller exits 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _umask() -> int:
    m = os.umask(0o077)
    os.umask(m)
    return m


def main() -> None:
    argv = sys.argv[1:]
    code = via_helper(argv)
    if code is None:
        from rollbackctl.cli import main as direct

        direct(argv)  # exits
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
