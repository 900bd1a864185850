"""Guarded input on `switch set`: a change by a large factor (a misplaced decimal point: 1.5 typed as 15)
or of a switch a running rollback holds is shown old -> new with why, and needs `--yes`; `--dry-run`
shows what would happen and writes nothing. The CLI runs as a user runs it; etcd is compared byte for
byte after every refusal."""

from __future__ import annotations

import pytest

from contracts.progress import Decision
from manual.rollback import Durations, Scope, Severity
from tests.support.standins import StandIns
from tests.support.store_helpers import dump, run_cli
from tests.support.wf_helpers import (awaiting, incident, make_worker, poll_progress, set_switches, values,
                                      wait_for)
from workflows.models import RollbackInput
from workflows.rollback import RollbackWorkflow, rollback_workflow_id


@pytest.fixture
def env(store, etcd_server, prefix) -> dict[str, str]:
    return {"ROLLBACKCTL_ETCD_ENDPOINTS": etcd_server.endpoint, "ROLLBACKCTL_ETCD_PREFIX": prefix,
            "TEMPORAL_ADDRESS": "127.0.0.1:1", "ROLLBACKCTL_SIGNING": "off"}


async def test_a_tenfold_change_needs_yes_and_says_why(store, etcd, prefix, env):
    await set_switches(store, "rita", hedge_max_leverage=1.5)
    before = await dump(etcd, prefix)
    r = run_cli("switch", "set", "hedge_max_leverage", "15", "--as", "rita", "--reason", "thin margin", env=env)
    assert r.code == 2, r
    assert ("hedge_max_leverage: 1.5x -> 15x not applied: hedge_max_leverage 1.5x -> 15x is a 10x change away from "
            "its rollback value 1.5x (a misplaced decimal point looks like this). Re-run with --yes to apply it") in r.err
    assert await dump(etcd, prefix) == before
    r = run_cli("switch", "set", "hedge_max_leverage", "2", "--as", "rita", "--reason", "x", env=env)  # 1.33x: fine
    assert r.code == 0, r
    r = run_cli("switch", "set", "hedge_max_leverage", "15", "--as", "rita", "--reason", "x", "--yes", env=env)
    assert r.code == 0 and "2x -> 15x" in r.out, r
    # towards the rollback value (less risk) is never asked, however large: 100% -> the 5% canary
    await set_switches(store, "rita", betting_traffic_pct=100)
    r = run_cli("switch", "set", "betting_traffic_pct", "5", "--as", "rita", "--reason", "canary", env=env)
    assert r.code == 0, r


async def test_dry_run_shows_old_new_roles_and_warnings_and_writes_nothing(store, etcd, prefix, env):
    await set_switches(store, "alice", normal_threshold=2500)
    before = await dump(etcd, prefix)
    r = run_cli("switch", "set", "normal_threshold", "25000", "--as", "oscar", "--reason", "x", "--dry-run", env=env)
    assert r.code == 0, r
    assert r.out.splitlines()[0].startswith("DRY RUN, nothing written: normal_threshold $2,500 -> $25,000")
    assert "owner role risk_manager; oscar is on_call: REFUSED" in r.out
    assert "needs --yes: normal_threshold $2,500 -> $25,000 is a 10x change" in r.out
    r = run_cli("switch", "set", "normal_threshold", "3000", "--as", "rita", "--reason", "x", "--dry-run", "--json",
                env=env)
    j = r.json()
    assert (j["old"], j["new"], j["allowed"], j["needs_yes"], j["owner_role"]) == (2500, 3000, True, False,
                                                                                   "risk_manager")
    assert await dump(etcd, prefix) == before


async def test_a_switch_held_by_a_running_rollback_needs_yes(ts_env, store, etcd, prefix, env, task_queue):
    """The rollback set routing_mode=HL_MODE and waits for its confirmation; moving routing_mode by hand
    is asked again, naming the rollback (its restore would stop at the change, not overwrite it)."""
    await set_switches(store, "alice", routing_mode="NORMAL_MODE")
    inc = incident()
    env = {**env, "TEMPORAL_ADDRESS": ts_env.client.service_client.config.target_host}
    async with make_worker(ts_env, store, StandIns(), task_queue):
        h = await ts_env.client.start_workflow(
            RollbackWorkflow.run,
            RollbackInput(incident_id=inc, summary="s", severity=Severity.CRITICAL, scope=Scope.CROSS,
                          requested_by="oscar", reason="t", durations=Durations()),
            id=rollback_workflow_id(inc), task_queue=task_queue)
        await poll_progress(h, lambda p: p.applied)
        before = await dump(etcd, prefix)
        r = run_cli("switch", "set", "routing_mode", "NORMAL_MODE", "--as", "rita", "--reason", "x", env=env)
        assert r.code == 2, r
        assert f"routing_mode is held by {h.id}, which still runs: it set HL_MODE" in r.err
        assert await dump(etcd, prefix) == before
        r = run_cli("switch", "set", "routing_mode", "NORMAL_MODE", "--as", "rita", "--reason", "x", "--yes", env=env)
        assert r.code == 0, r
        await wait_for(h, ts_env, awaiting("confirm"))
        await h.execute_update(RollbackWorkflow.withdraw, Decision(actor="oscar", reason="test over"))
        await h.result()
    assert (await values(store, "routing_mode"))["routing_mode"] == "NORMAL_MODE"
    # once the rollback ended, the same change is not asked again
    await set_switches(store, "alice", routing_mode="HL_MODE")
    r = run_cli("switch", "set", "routing_mode", "NORMAL_MODE", "--as", "rita", "--reason", "x", env=env)
    assert r.code == 0, r


async def test_dry_runs_of_rollback_degrade_and_canary_start_nothing(store, etcd, prefix, env):
    """With Temporal unreachable (127.0.0.1:1) a real start would exit 5: a dry run needs only etcd's roles,
    prints the manual's plan for it, and writes nothing."""
    before = await dump(etcd, prefix)
    r = run_cli("rollback", "start", "--severity", "critical_path_failure", "--scope", "full_system", "--incident",
                "D-1", "--as", "oscar", "--reason", "x", "--dry-run", env=env)
    assert r.code == 0, r
    out = r.out
    assert out.startswith("DRY RUN, nothing started: rollback-D-1 (critical_path_failure, full_system) by oscar (on_call)")
    assert "change set: global_api_enabled=False" in out
    assert "full_system needs super_admin; oscar is on_call: it waits for a super admin's `confirm`" in out
    assert "already at Level 3" in out and "`withdraw` ends it at any wait" in out
    r = run_cli("rollback", "start", "--severity", "critical_path_failure", "--scope", "single_module", "--switch",
                "hedging", "--incident", "D-2", "--as", "oscar", "--reason", "x", "--dry-run", env=env)
    assert "3 failed in a row escalate: cross_module -> full_system (a super admin's escalate, or stay)" in r.out, r
    r = run_cli("degrade", "2", "--incident", "D-3", "--as", "oscar", "--reason", "x", "--dry-run", env=env)
    assert r.code == 0 and "level 2 (Read-Only + Limited" in r.out.splitlines()[0], r
    assert "trading core: pause_hl_opens" in r.out and "approval: none needed" in r.out
    r = run_cli("degrade", "3", "--incident", "D-4", "--as", "oscar", "--reason", "x", "--dry-run", env=env)
    assert "REFUSED as asked: level 3 needs super_admin; oscar is on_call" in r.out, r
    r = run_cli("canary", "start", "phase3", "--as", "alice", "--reason", "x", "--dry-run", env=env)
    assert r.code == 0 and r.out.startswith("DRY RUN, nothing started:") and "stage 4" in r.out.lower(), r
    assert await dump(etcd, prefix) == before
