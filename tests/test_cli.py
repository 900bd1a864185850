"""`rollbackctl` as a user runs it (a subprocess of the venv's console script) against the test
etcd: output shapes, exit codes (2 bad input, 3 permission, 4 conflict, 5 store unavailable), and
nothing changed after a refusal."""

from __future__ import annotations

import contextlib
import io

import pytest

from manual import switches
from core import procs
from rollbackctl.cli import build_parser
from tests.support.store_helpers import dump, run_cli


@pytest.fixture
def env(store, etcd_server, prefix) -> dict[str, str]:
    # Only etcd's settings, plus a Temporal address that would not work: with signing off (a local
    # drill) `switch` writes etcd itself and needs none of it. Signed changes: tests/test_cli_signing.py.
    return {"ROLLBACKCTL_ETCD_ENDPOINTS": etcd_server.endpoint, "ROLLBACKCTL_ETCD_PREFIX": prefix,
            "TEMPORAL_ADDRESS": "127.0.0.1:1", "ROLLBACKCTL_SIGNING": "off"}


@pytest.fixture
def unchanged(etcd, prefix):
    """Assert that the prefix is byte-for-byte the same after the block."""
    @contextlib.asynccontextmanager
    async def check():
        before = await dump(etcd, prefix)
        yield
        assert await dump(etcd, prefix) == before, "a refused command changed etcd"
    return check


def _one_line_error(r) -> str:
    err = "".join(line for line in r.err.splitlines(keepends=True)  # the signing-off warning aside
                  if not line.startswith("rollbackctl: WARNING: ROLLBACKCTL_SIGNING=off"))
    assert r.out == "" and err.count("\n") == 1 and err.startswith("rollbackctl: error: "), r.err
    return err


async def test_switch_list_json(env):
    r = run_cli("switch", "list", "--json", env=env)
    assert r.code == 0, r.err
    rows = r.json()
    assert [row["name"] for row in rows] == [s.name for s in switches.SWITCHES]
    for row in rows:
        sw = switches.get(row["name"])
        assert {"name", "type", "value", "default", "permission", "rollback_value"} <= set(row)
        assert (row["type"], row["value"], row["default"], row["permission"], row["rollback_value"]) == (
            sw.type.value, sw.default, sw.default, sw.permission.value, sw.rollback_value)
    by = {row["name"]: row for row in rows}
    assert by["normal_threshold"]["value"] == 10_000 and by["per_symbol_betting"]["value"] == ["BTC", "ETH"]
    assert by["hedge_max_leverage"]["rollback"] == "Lower to 1.5x"


async def test_switch_list_table_and_get(env):
    r = run_cli("switch", "list", env=env)
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].split() == ["SWITCH", "TYPE", "VALUE", "DEFAULT", "OWNER", "ROLLBACK", "LATENCY"]
    for sw in switches.SWITCHES:
        assert any(line.split()[0] == sw.name for line in lines[2:] if line.strip()), sw.name
    assert "$10,000" in r.out and "BTC,ETH" in r.out and "3x" in r.out

    r = run_cli("switch", "get", "hedge_max_leverage", "--json", env=env)
    assert r.code == 0 and r.json()["value"] == 3.0 and r.json()["updated_by"] == "alice"
    r = run_cli("switch", "get", "hedge_max_leverage", env=env)
    assert r.code == 0 and "value" in r.out and "3x" in r.out


async def test_switch_set_is_audited(env, store):
    r = run_cli("switch", "set", "hedge_max_leverage", "1.5", "--as", "rita", "--reason", "hedge margin low", env=env)
    assert r.code == 0, r.err
    assert "hedge_max_leverage: 3x -> 1.5x" in r.out
    assert (await store.get("hedge_max_leverage")).value == 1.5

    r = run_cli("switch", "set", "per_symbol_betting", "", "--as", "rita", "--reason", "ban all", "--json", env=env)
    assert r.code == 0, r.err
    assert r.json()["changes"] == [{"switch": "per_symbol_betting", "old": ["BTC", "ETH"], "new": []}]

    r = run_cli("audit", "--json", "--limit", "2", env=env)
    assert r.code == 0, r.err
    recs = r.json()
    assert len(recs) == 2
    first = recs[0]
    assert (first["actor"], first["role"], first["reason"], first["source"]) == (
        "rita", "risk_manager", "hedge margin low", "cli")
    assert first["changes"] == [{"switch": "hedge_max_leverage", "old": 3.0, "new": 1.5}]
    assert first["revision"] > 0 and first["hash"] and recs[1]["prev_hash"] == first["hash"]
    r = run_cli("audit", env={**env, "COLUMNS": "200"})
    assert r.code == 0 and "hedge_max_leverage 3x -> 1.5x" in r.out and "rita (risk_manager)" in r.out
    # it fits the terminal (a reason cut with "…"); --wide shows every column in full
    narrow = run_cli("audit", env={**env, "COLUMNS": "100"}).out.splitlines()
    assert max(len(line) for line in narrow) <= 100 and any("…" in line for line in narrow), narrow
    wide = run_cli("audit", "--wide", env={**env, "COLUMNS": "100"}).out
    assert "ban all" in wide and max(len(line) for line in wide.splitlines()) > 100
    r = run_cli("audit", "--limit", "0", "--json", env=env)
    assert len(r.json()) == len(await store.audit())


@pytest.mark.parametrize("args,code,message", [
    (["switch", "set", "hedge_max_leverage", "abc"], 2, "hedge_max_leverage: expected a number"),
    (["switch", "set", "hedge_max_leverage", "25"], 2, "above the maximum 20x"),
    (["switch", "set", "routing_mode", "TURBO"], 2, "expected one of HL_MODE, NORMAL_MODE, BETTING_MODE"),
    (["switch", "set", "per_symbol_betting", "btc"], 2, "not an upper-case ticker"),
    (["switch", "set", "hedge_enabld", "false"], 2, "unknown switch 'hedge_enabld' (did you mean hedge_enabled?)"),
    (["switch", "get", "nope"], 2, "unknown switch 'nope'"),
    (["switch", "set", "hedge_enabled", "false", "--reason", " "], 2, "--reason must not be empty"),
    (["switch", "set", "hedge_max_leverage", "2", "--as", "oscar"], 3, "oscar is on_call"),
    (["switch", "set", "withdrawal_enabled", "false", "--as", "rita"], 3, "owned by super_admin"),
    (["switch", "set", "hedge_enabled", "false", "--as", "mallory"], 3, "unknown operator 'mallory'"),
    (["switch", "set", "hedge_enabled", "false", "--as", "monitor"], 3, "reserved"),
    (["switch", "set", "hedge_max_leverage", "2", "--expect", "2.5"], 4, "hedge_max_leverage is 3x"),
    (["operator", "add", "zed", "viewer", "--as", "rita"], 3, "only a super_admin"),
    (["operator", "add", "rita", "viewer", "--as", "alice"], 4, "already exists"),
    (["operator", "add", "monitor", "viewer", "--as", "alice"], 2, "reserved"),
    (["init", "--super-admin", "eve"], 3, "operators already exist"),
], ids=lambda v: "-".join(v) if isinstance(v, list) else None)
async def test_refusals_exit_with_the_right_code_and_change_nothing(env, unchanged, args, code, message):
    if args[:2] == ["switch", "set"]:
        args = args + [a for a in ("--as", "rita") if "--as" not in args] + (
            ["--reason", "test"] if "--reason" not in args else [])
    async with unchanged():
        r = run_cli(*args, env=env)
    assert r.code == code, (r.code, r.err)
    assert message in _one_line_error(r)


async def test_argparse_errors_are_exit_2(env, unchanged):
    async with unchanged():
        for args in (["switch", "set", "hedge_enabled", "false"],  # no --as / --reason
                     ["operator", "add", "zed", "emperor", "--as", "alice"],
                     ["audit", "--limit", "many"]):
            r = run_cli(*args, env=env)
            assert r.code == 2 and "usage:" in r.err


async def test_expect_matching_value_applies(env, store):
    r = run_cli("switch", "set", "betting_traffic_pct", "5%", "--expect", "100", "--as", "rita", "--reason", "canary",
                env=env)
    assert r.code == 0, r.err
    assert (await store.get("betting_traffic_pct")).value == 5


async def test_etcd_unavailable_is_exit_5_fast_and_clear(env, unchanged):
    dead = f"127.0.0.1:{procs.free_port()}"
    for args in (["switch", "list"], ["switch", "set", "hedge_enabled", "false", "--as", "rita", "--reason", "x"],
                 ["audit"], ["init", "--super-admin", "alice"]):
        r = run_cli(*args, env={**env, "ROLLBACKCTL_ETCD_ENDPOINTS": dead})
        assert r.code == 5, (args, r.err)
        assert f"etcd unavailable: {dead}: " in _one_line_error(r) and "refused" in r.err
        assert r.seconds < 5, f"took {r.seconds:.1f}s"


async def test_operators_and_init(env, etcd_server):
    r = run_cli("operator", "add", "olga", "on_call", "--as", "alice", env=env)
    assert r.code == 0 and "operator olga added as on_call by alice" in r.out
    r = run_cli("operator", "list", "--json", env=env)
    assert {o["name"]: o["role"] for o in r.json()}["olga"] == "on_call"
    r = run_cli("operator", "list", env=env)
    assert r.code == 0 and "olga" in r.out and "on_call" in r.out

    fresh = {**env, "ROLLBACKCTL_ETCD_PREFIX": env["ROLLBACKCTL_ETCD_PREFIX"].rstrip("/") + "-fresh/"}
    r = run_cli("init", env=fresh)
    assert r.code == 2 and "init --super-admin" in r.err
    r = run_cli("init", "--super-admin", "root", env=fresh)
    assert r.code == 0 and f"initialised {len(switches.SWITCHES)} switches" in r.out, r.err
    n = len(run_cli("audit", "--limit", "0", "--json", env=fresh).json())
    r = run_cli("init", "--super-admin", "root", env=fresh)
    assert r.code == 0 and "nothing overwritten" in r.out
    assert len(run_cli("audit", "--limit", "0", "--json", env=fresh).json()) == n


def _help(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        build_parser().parse_args([*args, "--help"])
    assert e.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize("cmd", [
    [], ["init"], ["switch"], ["switch", "list"], ["switch", "get"], ["switch", "set"], ["audit"],
    ["operator"], ["operator", "add"], ["operator", "list"], ["dev"], ["dev", "up"], ["dev", "down"], ["dev", "status"],
], ids=lambda c: " ".join(c) or "rollbackctl")
def test_help_on_every_command(cmd):
    assert "usage: rollbackctl" in _help(*cmd)


def test_help_on_the_real_console_script():
    r = run_cli("switch", "set", "--help", env={})
    assert r.code == 0 and "--as OPERATOR" in r.out and "BTC,ETH" in r.out


def test_reading_the_matrix_does_not_import_the_temporal_sdk(env):
    """`switch list` / `switch get` read etcd only: importing temporalio (about 80-100 ms of the CLI's
    start on this machine, `python -X importtime`) is left to the commands that talk to Temporal
    (issue 21: a fast CLI)."""
    import os

    # main() leaves with os._exit: run what it runs, then look at what was imported
    code = ("import asyncio\nfrom rollbackctl.cli import build_parser\n"
            "args = build_parser().parse_args(['switch', 'get', 'routing_mode'])\n"
            "assert not asyncio.run(args.func(args))\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ROLLBACKCTL_", "TEMPORAL_"))}
    assert _imported_by(code, "m.split('.')[0] == 'temporalio' or m in ('simulator.runner', 'simulator.core')",
                        env={**base, **env}) == []


def _imported_by(code: str, which: str, env: dict | None = None) -> list[str]:
    """The modules, among those `which` (a condition on the module name `m`) selects, that running `code` in a
    fresh interpreter imported."""
    import subprocess
    import sys

    probe = f"{code}\nimport sys\nprint(sorted(m for m in sys.modules if {which}))\n"
    r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    import ast

    return ast.literal_eval(r.stdout.strip().splitlines()[-1])  # (the list printed above)


def test_building_the_parser_imports_no_models_and_no_clients():
    """Every command pays for building the parser (`rollbackctl --help` too): it must not import the
    pydantic models of the contracts or the manual's scenarios, nor an etcd or Temporal client. It once
    did: `drill list --kind` built manual/drills.py (and the incident contracts behind it) for its
    choices, and `consumers` imported the fleet's contracts at the top, about 0.2 s of every command
    (`python -X importtime`, issue 21)."""
    assert _imported_by("from rollbackctl.cli import build_parser\nbuild_parser()",
                        "m.split('.')[0] in ('contracts', 'activities', 'workflows', 'temporalio', 'aetcd', 'grpc', "
                        "'httpx', 'pydantic_settings', 'cryptography') or m in ('manual.drills', 'manual.alerts', "
                        "'manual.switches', 'core.settings', 'core.etcd')") == []


def test_a_cli_connection_to_temporal_does_not_load_the_metrics_exporter():
    """The CLI's Temporal runtime has no metrics exporter, so a command that connects (every on-call
    command) must not import prometheus_client (~55 ms of `rollback start`, issue 21): only the worker
    and the monitor, which pass a listen address, pay for it."""
    code = "from core.temporal_client import runtime\nruntime()"
    assert _imported_by(code, "m.split('.')[0] == 'prometheus_client' or m == 'core.metrics'") == []
    # and the worker's runtime still makes its exporter
    assert "prometheus_client" in _imported_by("from core.temporal_client import runtime\nruntime('127.0.0.1:0')",
                                               "m == 'prometheus_client'")


def test_argparse_translations_are_looked_up_once_with_the_same_result(monkeypatch):
    """argparse looks its ~190 messages up through gettext, which searched the locale directories on
    every call (~10-30 ms per command, issue 21). The parser now binds the catalog gettext would find,
    once per build: its messages read the same, and a build searches at most once."""
    import argparse
    import gettext

    from rollbackctl.cli import build_parser

    build_parser()
    assert argparse._("usage: ") == gettext.gettext("usage: ")
    assert argparse.ngettext("expected %s argument", "expected %s arguments", 2) == gettext.ngettext(
        "expected %s argument", "expected %s arguments", 2)
    looked, real = [], gettext.find
    monkeypatch.setattr(gettext, "find", lambda *a, **k: looked.append(a) or real(*a, **k))
    build_parser()
    assert len(looked) <= 1, f"{len(looked)} catalog searches building the parser"
