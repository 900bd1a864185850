"""`rollbackctl sim fault` / `sim faults`: faults go in (and out) of a running simulator from the CLI, as a
drill needs, with no curl; a bad fault or a URL that is not a simulator is one line and an exit code."""

from __future__ import annotations

from tests.support.store_helpers import run_cli


def _env(sim) -> dict[str, str]:
    return {"ROLLBACKCTL_TRADING_CORE_URL": sim.base_url}


async def test_inject_list_and_clear_faults(sim):
    env = _env(sim)
    r = run_cli("sim", "fault", "error_rate=0.03", "hl_connected=false", env=env)
    assert r.code == 0, r
    assert r.out.strip() == "faults in force: error_rate=0.03, hl_connected=false"
    h = await sim.health()
    assert h["error_rate"] == 0.03 and h["hl_connected"] is False  # what the trading-core contract now says
    r = run_cli("sim", "faults", "--json", env=env)
    assert r.json() == {"error_rate": 0.03, "hl_connected": False}
    r = run_cli("sim", "fault", "hl_connected=null", env=env)  # null removes one
    assert r.out.strip() == "faults in force: error_rate=0.03"
    r = run_cli("sim", "fault", "--clear", env=env)
    assert r.code == 0 and "no faults in force" in r.out
    assert await sim.faults() == {}


async def test_bad_input_and_wrong_targets_are_one_line(sim):
    env = _env(sim)
    r = run_cli("sim", "fault", "error_rate", env=env)
    assert r.code == 2 and "expected KEY=VALUE" in r.err and r.err.count("\n") == 1, r
    r = run_cli("sim", "fault", "no_such_metric=1", env=env)
    assert r.code == 2 and "the simulator refused it (400)" in r.err and "no_such_metric" in r.err, r
    r = run_cli("sim", "fault", env=env)
    assert r.code == 2 and "nothing to inject" in r.err, r
    r = run_cli("sim", "fault", "error_rate=0.5", env={"ROLLBACKCTL_TRADING_CORE_URL": sim.base_url + "/core"})
    assert r.code == 2 and "it is not the simulator" in r.err, r  # a core without the controls: refused
    r = run_cli("sim", "faults", env={"ROLLBACKCTL_TRADING_CORE_URL": "http://127.0.0.1:1"})
    assert r.code == 5 and "is unreachable" in r.err and r.err.count("\n") == 1, r
    assert await sim.faults() == {}


def test_dev_up_prints_the_exports_another_shell_needs(tmp_path, monkeypatch):
    """After `dev up` a second shell must reach the same stack and act as its operators (their keys live in
    the stack's directory): the lines it prints are valid shell, and carry every setting the CLI reads."""
    import shlex

    from rollbackctl import devstack
    from rollbackctl.cli.dev_cmds import export_lines

    monkeypatch.setenv("ROLLBACKCTL_DEV_DIR", str(tmp_path / "dev stack"))  # a space: quoting matters
    monkeypatch.setenv("ROLLBACKCTL_ETCD_ENDPOINTS", "127.0.0.1:23790")
    lines = export_lines(devstack.Stack())
    got = dict(shlex.split(line)[1].split("=", 1) for line in lines)
    assert all(shlex.split(line)[0] == "export" for line in lines)
    assert got["ROLLBACKCTL_KEY_DIR"] == str((tmp_path / "dev stack").resolve() / "keys")
    assert got["ROLLBACKCTL_ETCD_ENDPOINTS"] == "127.0.0.1:23790"
    assert {"TEMPORAL_ADDRESS", "ROLLBACKCTL_TASK_QUEUE", "ROLLBACKCTL_TRADING_CORE_URL",
            "ROLLBACKCTL_TRADING_CORE_TOKEN", "ROLLBACKCTL_ETCD_PREFIX"} <= set(got)
