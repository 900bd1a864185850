"""The warm helper (`rollbackctl helper`, rollbackctl/launch.py and rollbackctl/helper.py, issue 21 item 2):
a command forked from it must say, change and exit exactly as the same command run directly; it must
take the caller's terminal, environment and signals; and it must never serve other code, another user,
or a command it was not made for.

Real processes throughout: the venv's console script, a helper started by `rollbackctl helper start`,
the test etcd. The fd passing and peer check follow unix(7) (SCM_RIGHTS, SO_PEERCRED)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from rollbackctl import launch
from tests.support.store_helpers import ROLLBACKCTL, run_cli

FORKED = re.compile(r"running in pid (\d+) forked from the helper")


@pytest.fixture
def hdir(tmp_path) -> str:
    d = tmp_path / "helper"
    d.mkdir(mode=0o700)
    return str(d)


@pytest.fixture
def env(store, etcd_server, prefix, hdir) -> dict[str, str]:
    return {"ROLLBACKCTL_ETCD_ENDPOINTS": etcd_server.endpoint, "ROLLBACKCTL_ETCD_PREFIX": prefix,
            "TEMPORAL_ADDRESS": "127.0.0.1:1", "ROLLBACKCTL_SIGNING": "off", "ROLLBACKCTL_HELPER_DIR": hdir,
            "ROLLBACKCTL_HELPER_TRACE": "1", "ROLLBACKCTL_HELPER_IDLE": "600"}


@pytest.fixture
def helper(env):
    """A helper started as a user starts it, with an environment that points nowhere: what a command does
    through it can only come from the caller's environment."""
    own = {**env, "ROLLBACKCTL_ETCD_ENDPOINTS": "127.0.0.1:1", "ROLLBACKCTL_ETCD_PREFIX": "/nowhere/"}
    r = run_cli("helper", "start", env=own)
    assert r.code == 0 and "helper started: pid" in r.out, (r.out, r.err)
    pid = int(re.search(r"pid (\d+)", r.out).group(1))
    yield pid
    run_cli("helper", "stop", env=env)


def _direct(env: dict) -> dict:
    return {**env, "ROLLBACKCTL_HELPER": "off"}


def _without_trace(err: str) -> str:
    return "".join(ln for ln in err.splitlines(keepends=True) if not ln.startswith("rollbackctl: helper: "))


async def test_a_command_through_the_helper_says_changes_and_exits_as_it_does_directly(env, helper, store):
    via = run_cli("switch", "list", "--json", env=env)
    assert FORKED.search(via.err), via.err  # it did go through the helper ...
    direct = run_cli("switch", "list", "--json", env=_direct(env))
    assert "helper" not in direct.err
    assert via.code == direct.code == 0 and via.json() == direct.json()  # ... from the caller's etcd, not the helper's

    # a change: applied and audited, as directly
    r = run_cli("switch", "set", "hedge_max_leverage", "1.5", "--as", "rita", "--reason", "through the helper",
                env=env)
    assert r.code == 0 and FORKED.search(r.err) and "hedge_max_leverage: 3x -> 1.5x" in r.out, (r.out, r.err)
    assert (await store.get("hedge_max_leverage")).value == 1.5
    last = run_cli("audit", "--json", "--limit", "1", env=_direct(env)).json()[0]
    assert (last["actor"], last["reason"], last["changes"]) == (
        "rita", "through the helper", [{"switch": "hedge_max_leverage", "old": 3.0, "new": 1.5}])

    # refusals: the same exit code and the same one line
    for args in (["switch", "set", "hedge_max_leverage", "abc", "--as", "rita", "--reason", "x"],  # bad value: 2
                 ["switch", "set", "hedge_enabled", "false", "--as", "mallory", "--reason", "x"],  # unknown: 3
                 ["switch", "set", "hedge_max_leverage", "2", "--expect", "2.5", "--as", "rita", "--reason", "x"],  # 4
                 ["switch", "bogus"]):  # argparse: 2
        v, d = run_cli(*args, env=env), run_cli(*args, env=_direct(env))
        assert FORKED.search(v.err) and v.code == d.code != 0, (args, v.code, d.code, v.err)
        assert _without_trace(v.err) == d.err and v.out == d.out, args


def test_the_command_writes_to_the_callers_own_stdout(env, helper, tmp_path):
    """The child writes to the very file the caller's stdout is (passed with SCM_RIGHTS), not to a pipe of the
    helper's that would then be copied."""
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        p = subprocess.run([ROLLBACKCTL, "--help"], stdout=f, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                           env={**{k: v for k, v in os.environ.items() if not k.startswith("ROLLBACKCTL_")}, **env},
                           timeout=30)
    assert p.returncode == 0 and FORKED.search(p.stderr)
    assert out.read_text().startswith("usage: rollbackctl")


def _blackhole() -> socket.socket:
    """A TCP listener that never answers: an etcd call to it waits until its deadline."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s


def test_ctrl_c_reaches_the_forked_command(env, helper):
    hole = _blackhole()
    try:
        e = {**os.environ, **env, "ROLLBACKCTL_ETCD_ENDPOINTS": f"127.0.0.1:{hole.getsockname()[1]}"}
        p = subprocess.Popen([ROLLBACKCTL, "switch", "list"], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True)
        hole.settimeout(30)
        conn, _ = hole.accept()  # the command is now inside its etcd call, in the helper's child
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
        conn.close()
    finally:
        hole.close()
    child = int(FORKED.search(err).group(1))
    assert p.returncode == 130, (p.returncode, err)
    assert _gone(child), f"the forked command {child} still runs after Ctrl-C"


def _gone(pid: int, within_s: float = 10.0) -> bool:
    """pid has exited (reaped, or a zombie its parent has yet to reap), within a deadline."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def test_a_helper_of_other_code_is_never_used(env, helper, hdir):
    """The socket is named by the code's fingerprint; a helper whose code changed under it refuses and exits.
    An upgrade is simulated as pip does it: the site-packages directory changes (its mtime)."""
    site = next(p for p in sys.path if p.endswith("site-packages"))
    before = os.stat(site)
    old_sock = launch.socket_path(hdir, launch.fingerprint())
    assert os.path.exists(old_sock)
    try:
        os.utime(site, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
        # the console script's own fingerprint no longer names the helper: the command runs directly
        r = run_cli("switch", "list", "--json", env=env)
        assert r.code == 0 and "none for this code" in r.err and not FORKED.search(r.err), r.err
        # and a caller that still reaches the old socket is refused; the helper stops
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(old_sock)
        with s:
            launch.send_msg(s, {"argv": ["switch", "list"], "cwd": "/", "env": {}, "umask": 0o22}, [0, 1, 2])
            answer = launch.recv_msg(s)
        assert answer == {"refused": "the code changed since the helper started; it stops"}
        assert _gone(helper)
        assert not os.path.exists(old_sock)
    finally:
        os.utime(site, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_the_fingerprint_follows_every_file_of_the_code(tmp_path):
    root = tmp_path / "code"
    (root / "core").mkdir(parents=True)
    (root / "core" / "__pycache__").mkdir()
    (root / "core" / "a.py").write_text("x = 1\n")
    fp = launch.fingerprint(str(root))
    assert launch.fingerprint(str(root)) == fp
    (root / "core" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"cache")
    assert launch.fingerprint(str(root)) == fp  # caches are not code
    (root / "core" / "a.py").write_text("x = 2\n")  # same size, new content (and mtime)
    os.utime(root / "core" / "a.py", ns=(0, 1))
    fp2 = launch.fingerprint(str(root))
    assert fp2 != fp
    (root / "core" / "b.yaml").write_text("k: v\n")  # data is code here (the manual)
    fp3 = launch.fingerprint(str(root))
    assert fp3 != fp2
    (root / "core" / "b.yaml").unlink()
    assert launch.fingerprint(str(root)) == fp2


def test_a_directory_open_to_others_is_not_used(env, helper, hdir):
    os.chmod(hdir, 0o755)
    try:
        r = run_cli("switch", "list", "--json", env=env)
        assert r.code == 0 and "is not this user's alone" in r.err and not FORKED.search(r.err), r.err
        s = run_cli("helper", "start", env=env)
        assert s.code == 2 and s.err.strip().endswith("fix it or set ROLLBACKCTL_HELPER_DIR"), s.err
    finally:
        os.chmod(hdir, 0o700)


@pytest.mark.skipif(os.getuid() != 0, reason="another uid needs root to become it")
def test_another_user_is_not_served(env):
    """SO_PEERCRED: even reaching the socket (the directory opened up by mistake), another uid gets nothing.
    (Its own directory under /tmp: pytest's base directory is closed to other users.)"""
    import shutil
    import tempfile

    hdir = tempfile.mkdtemp(prefix="helper-peer-")
    env = {**env, "ROLLBACKCTL_HELPER_DIR": hdir}
    assert run_cli("helper", "start", env=env).code == 0
    try:
        sock = launch.socket_path(hdir, launch.fingerprint())
        os.chmod(hdir, 0o711)
        os.chmod(sock, 0o666)
        answer = _as_nobody(sock)
    finally:
        run_cli("helper", "stop", env=env)
        shutil.rmtree(hdir, ignore_errors=True)
    assert answer in ("None", "closed"), answer  # it connected (the socket was open to it) and got nothing run


def _as_nobody(sock: str) -> str:
    """What uid 65534 (a forked child of this test) hears from the helper at `sock` after a request."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the other user: a forked child of this test that becomes uid 65534 (nobody)
        answer = "unset"
        try:
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sock)
            try:
                launch.send_msg(s, {"argv": ["switch", "list"], "cwd": "/", "env": {}, "umask": 0o22}, [0, 1, 2])
                answer = repr(launch.recv_msg(s))
            except (BrokenPipeError, ConnectionResetError):  # closed on it before it had said all
                answer = "closed"
        except BaseException as e:
            answer = f"error {e!r}"
        finally:
            os.write(wfd, answer.encode())
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd) as f:
        answer = f.read()
    os.waitpid(pid, 0)
    return answer



def test_start_status_stop_and_a_dead_helpers_leftovers(env, hdir):
    assert "no helper" in run_cli("helper", "status", env=env).out
    r = run_cli("helper", "start", env=env)
    assert r.code == 0 and "helper started" in r.out, r.err
    pid = int(re.search(r"pid (\d+)", r.out).group(1))
    try:
        again = run_cli("helper", "start", env=env)
        assert again.code == 0 and f"a helper already serves this code: pid {pid}" in again.out
        st = run_cli("helper", "status", "--json", env=env).json()
        assert st["helpers"] == [{"pid": pid, "socket": launch.socket_path(hdir, launch.fingerprint()),
                                  "current": True, "running": True}]
        os.kill(pid, signal.SIGKILL)  # a helper that died without cleaning up
        assert _gone(pid)
        dead = run_cli("helper", "status", env=env)
        assert "dead (leftover files" in dead.out
        r = run_cli("switch", "list", "--json", env=env)  # its socket refuses: the command runs directly
        assert r.code == 0 and "none for this code" in r.err, r.err
    finally:
        stop = run_cli("helper", "stop", env=env)
    assert stop.code == 0 and "removed 1 dead helper's socket and pid file" in stop.out, stop.out
    assert os.listdir(hdir) == ["helper.log"]
    r = run_cli("helper", "start", env=env)
    new = int(re.search(r"pid (\d+)", r.out).group(1))
    stop = run_cli("helper", "stop", env=env)
    assert stop.out.strip() == f"stopped helper pid {new} (this code)" and _gone(new)


def test_commands_that_are_not_the_helpers_never_reach_it(env, helper, monkeypatch):
    """Servers, stacks, key files and the helper itself run in the open, whatever runs."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for argv in (["dev", "up"], ["sim", "run"], ["console"], ["keygen", "x"], ["helper", "stop"], [], ["--version"]):
        assert launch.via_helper(argv) is None, argv
    monkeypatch.setenv("ROLLBACKCTL_HELPER", "off")
    assert launch.via_helper(["switch", "list"]) is None


def test_the_protocol_carries_any_environment():
    """Environment values are str, possibly with surrogate escapes (undecodable bytes): JSON keeps them."""
    a, b = socket.socketpair()
    with a, b:
        launch.send_msg(a, {"env": {"X": "caf\udce9", "Y": json.dumps({"k": 1})}})
        assert launch.recv_msg(b) == {"env": {"X": "caf\udce9", "Y": '{"k": 1}'}}


async def test_a_wedged_helper_costs_a_wait_not_a_lost_or_doubled_command(env, helper, store):
    """A stopped helper (SIGSTOP: a laptop's frozen process) cannot swallow a command: after FIRST_ANSWER_S the
    command runs directly, once; Ctrl-C during that wait ends it at once with nothing run. When the helper
    wakes up, the children it forks for those callers find them gone and run nothing (they wait for "go")."""
    os.kill(helper, signal.SIGSTOP)
    try:
        r = run_cli("switch", "set", "hedge_max_leverage", "1.5", "--as", "rita", "--reason", "helper frozen",
                    env=env)
        assert r.code == 0 and "did not answer" in r.err and "running directly" in r.err, r.err
        assert not FORKED.search(r.err)

        e = {**os.environ, **env}
        p = subprocess.Popen([ROLLBACKCTL, "switch", "set", "hedge_max_leverage", "2", "--as", "rita", "--reason",
                              "interrupted"], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True)
        assert "asked the helper" in p.stderr.readline()  # it waits for the helper's answer now
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 130 and "running directly" not in err, (p.returncode, err)
    finally:
        os.kill(helper, signal.SIGCONT)
    # the helper has now forked a child for each of those two callers; one more command through it comes after them
    r = run_cli("switch", "list", "--json", env=env)
    assert FORKED.search(r.err), r.err
    ours = [(rec["reason"], rec["changes"]) for rec in run_cli("audit", "--json", "--limit", "0", env=env).json()
            if rec["reason"] in ("helper frozen", "interrupted")]
    assert ours == [("helper frozen", [{"switch": "hedge_max_leverage", "old": 3.0, "new": 1.5}])]
    assert (await store.get("hedge_max_leverage")).value == 1.5


def test_killing_the_command_kills_it(env, helper):
    """kill -9 of the command the user ran (no signal to forward) ends the forked command too, as it ends a
    command that runs directly."""
    hole = _blackhole()
    try:
        e = {**os.environ, **env, "ROLLBACKCTL_ETCD_ENDPOINTS": f"127.0.0.1:{hole.getsockname()[1]}",
             "ROLLBACKCTL_ETCD_TIMEOUT_S": "120", "ROLLBACKCTL_ETCD_CONNECT_TIMEOUT_S": "120"}  # it would wait 2 min
        p = subprocess.Popen([ROLLBACKCTL, "switch", "list"], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True)
        line = ""
        while not FORKED.search(line):
            line = p.stderr.readline()
            assert line, "the command ended before it said where it runs"
        child = int(FORKED.search(line).group(1))
        hole.settimeout(30)
        conn, _ = hole.accept()  # the child is inside its etcd call
        p.kill()
        p.wait(timeout=30)
        gone = _gone(child)  # the etcd connection still open: only the caller's end can end it
        conn.close()
    finally:
        hole.close()
    assert gone, f"the forked command {child} outlived the command the user killed"


def test_the_fingerprint_covers_every_package_pyproject_installs():
    """A package added to pyproject but not to launch.PACKAGES would be edited under a helper unnoticed."""
    import tomllib

    with open(os.path.join(launch.code_root(), "pyproject.toml"), "rb") as f:
        meta = tomllib.load(f)
    installed = {p.rstrip("*") for p in meta["tool"]["setuptools"]["packages"]["find"]["include"]}
    modules = {f"{m}.py" for m in meta["tool"]["setuptools"].get("py-modules", [])}
    assert installed == set(launch.PACKAGES) and modules == set(launch.MODULES)
