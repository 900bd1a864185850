"""Drill scenarios generated from the manual's tables (manual/drills.py), checked against the real thing:
each fault is sent to the real simulator's fault API and its health read back over the trading-core
contract (GET /v1/health); the P0 monitor's own detector (activities/monitor.py) must fire the rule the
scenario rehearses, and a rollback's or canary's own health checks (workflows/runner.py) must fail. A
scenario whose fault rehearsed nothing would teach the wrong lesson on a game day."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from activities.monitor import Detector
from contracts.incidents import MonitorState
from contracts.trading_core import HealthSnapshot
from manual import alerts, canary, degradation, drills
from manual.rollback import MIN_REPAGE_INTERVAL, OBSERVE_CHECKS, Durations, Scope, Severity
from workflows.runner import check_one

ROLLBACKCTL = str(Path(sys.executable).with_name("rollbackctl"))


def test_every_row_of_the_manuals_tables_has_its_scenario():
    names = [s.name for s in drills.scenarios()]
    assert len(names) == len(set(names))
    assert {s.rule for s in drills.scenarios() if s.kind == "p0"} == {r.id for r in alerts.RULES}
    assert {(s.severity, s.scope) for s in drills.scenarios() if s.kind == "rollback"} == \
        {(sev, sc) for sev in Severity for sc in Scope}
    assert {s.level for s in drills.scenarios() if s.kind == "degradation"} == set(degradation.LEVELS)
    assert set(drills.LEVEL_FAULTS) == set(degradation.LEVELS)
    assert {s.phase for s in drills.scenarios() if s.kind == "canary"} == set(canary.PLANS)
    assert [s.name for s in drills.scenarios() if s.kind == "hl_down_rollback"] == ["rollback-hl-down"]
    assert [k for k in drills.KINDS] == list(dict.fromkeys(s.kind for s in drills.scenarios()))


async def _health(sim_server, http: httpx.AsyncClient, fault: dict) -> dict:
    """Inject `fault` at the simulator (all or nothing: a refused body is a 400) and read its health
    back as a consumer of the contract would."""
    r = await http.post(f"{sim_server.url}/sim/faults", json=fault)
    assert r.status_code == 200, r.text
    h = await http.get(f"{sim_server.url}/v1/health", headers={"Authorization": f"Bearer {sim_server.token}"})
    assert h.status_code == 200, h.text
    HealthSnapshot.model_validate(h.json())  # what the monitor reads is the contract
    return h.json()


def _fires(rule: alerts.Rule, health: dict) -> bool:
    """Whether the monitor's detector fires `rule` on this health, read as often as the rule's hold needs."""
    det = Detector(MonitorState(), rules=(rule,))
    now = datetime.now(timezone.utc)
    for i in range(rule.hold.polls):
        det.observe(health, now + timedelta(seconds=i))
    return any(k.firing for k in det.state.keys.values())


def _clear(rule: alerts.Rule, health: dict) -> bool:
    """Whether every clear condition holds (for a per-symbol rule: on the drill's symbol)."""
    def value(metric: str):
        v = health.get(metric)
        return v.get(drills.DRILL_SYMBOL) if isinstance(v, dict) else v

    return all(c.holds(value(c.metric)) for c in rule.clear if c.metric in alerts.CORE_METRICS)


@pytest.mark.parametrize("name", [s.name for s in drills.scenarios() if s.kind in ("p0", "degradation", "hl_down_rollback")])
async def test_a_p0_or_degradation_fault_fires_its_rules_at_the_simulator_and_clears(sim, sim_server, http, name):
    sc = drills.get(name)
    rules = [alerts.get(sc.rule)] if sc.rule else [alerts.get(r) for r in drills.LEVEL_FAULTS[sc.level]]
    quiet = await _health(sim_server, http, {})
    assert not any(_fires(r, quiet) for r in rules), "the simulator's own health already fires the rule"
    health = await _health(sim_server, http, sc.fault)
    for r in rules:
        assert _fires(r, health), f"{name}: {r.id} does not fire on {sc.fault}"
        assert not _clear(r, health), f"{name}: {r.id}'s clear conditions all hold on {sc.fault}: an incoherent fault"
    if sc.kind == "hl_down_rollback":  # and the rollback's observation breaches on it: HL_MODE needs HL up
        assert any(check_one(c, health, {}) is not None for c in OBSERVE_CHECKS)
    assert (await http.delete(f"{sim_server.url}/sim/faults")).status_code == 200
    after = await _health(sim_server, http, {})
    assert not any(_fires(r, after) for r in rules)


@pytest.mark.parametrize("name", [s.name for s in drills.scenarios() if s.kind in ("rollback", "canary")])
async def test_a_rollback_or_canary_fault_fails_its_steps_health_checks_at_the_simulator(sim, sim_server, http, name):
    sc = drills.get(name)
    checks = OBSERVE_CHECKS if sc.kind == "rollback" else canary.PLANS[sc.phase].stages[0].observe.checks
    fixed = [c for c in checks if c.threshold_switch is None]
    quiet = await _health(sim_server, http, {})
    assert [check_one(c, quiet, {}) for c in fixed] == [None] * len(fixed), "the simulator's own health fails a check"
    health = await _health(sim_server, http, sc.fault)
    assert any(check_one(c, health, {}) is not None for c in fixed), f"{name}: no check fails on {sc.fault}"


def test_slas_and_timings_scale_by_the_speed_with_the_workflows_floors():
    p0 = drills.get("p0-hot_wallet")
    assert {s.name: s.within for s in drills.scaled(p0.slas, 10)} == {
        "acknowledge": alerts.SLA.ack / 10, "first action": alerts.SLA.action / 10}
    data = drills.get("rollback-data_inconsistency-cross_module")
    assert [s.name for s in data.slas] == ["decision window", "observe", "confirm"]
    d, fast = Durations(), drills.scaled_durations(60)
    assert fast.observe == d.observe / 60 and fast.decision_window == d.decision_window / 60
    assert fast.check_interval == d.check_interval / 60
    assert fast.confirm_sla == max(d.confirm_sla / 60, MIN_REPAGE_INTERVAL) == MIN_REPAGE_INTERVAL
    for bad in (0.5, drills.MAX_SPEED + 1):
        with pytest.raises(ValueError, match="speed must be between 1 and"):
            drills.scaled(p0.slas, bad)
        with pytest.raises(ValueError, match="speed must be between 1 and"):
            drills.scaled_durations(bad)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ROLLBACKCTL, *args], capture_output=True, text=True, timeout=60)


def test_the_cli_lists_and_shows_them():
    r = _cli("drill", "list", "--json")
    assert r.returncode == 0, r.stderr
    assert [s["name"] for s in json.loads(r.stdout)] == [s.name for s in drills.scenarios()]
    r = _cli("drill", "list", "--kind", "degradation")
    assert r.returncode == 0 and "degrade-3" in r.stdout and "p0-hot_wallet" not in r.stdout
    r = _cli("drill", "show", "p0-order_deviation", "--speed", "10")
    assert r.returncode == 0, r.stderr
    assert 'rollbackctl sim fault order_price_deviation={"BTC":0.1}' in r.stdout
    assert "acknowledge      within 30 s" in r.stdout and "pause_symbol_hl_routing (symbol=BTC)" in r.stdout
    shown = json.loads(_cli("drill", "show", "p0-hot_wallet", "--speed", "5", "--json").stdout)
    assert shown["fault"] == {"hot_wallet_usd": 50000.0} and shown["slas"][0]["within"] == "PT1M"
    r = _cli("drill", "show", "p0-nothing")
    assert r.returncode == 2 and r.stderr.strip().endswith("no drill scenario 'p0-nothing': `rollbackctl drill list` "
                                                           f"shows the {len(drills.scenarios())} there are")
    r = _cli("drill", "show", "p0-hot_wallet", "--speed", "0")
    assert r.returncode == 2 and "between 1 (the manual's clocks) and 600" in r.stderr


async def test_a_p0_drill_runs_marked_at_its_speed_and_is_refused_where_it_must_be(
        dev_env, store, etcd_server, prefix, sim, sim_server, sim_env, http, task_queue):
    """`drill start p0-hot_wallet --speed 30 --as oscar` against the real dev server, a worker and the real
    simulator: the incident is a drill ([DRILL] in its pages), its acknowledge SLA is the manual's 5 minutes
    / 30 = 10 s and it escalates when that passes, the fault is in at the simulator, `drill end` takes it out.
    Refused, with nothing started and no fault injected: a prefix marked production, a core without the fault
    API, an incident of the rule already open, a scenario `start` does not run yet."""
    import asyncio
    import uuid

    from contracts.incidents import incident_workflow_id
    from tests.support.incident_helpers import GuardStandIn, incident_worker, triggers
    from tests.support.standins import StandIns
    from tests.support.store_helpers import run_cli
    from tests.support.waits import wait_for_value
    from workflows.incident import IncidentWorkflow

    ns = uuid.uuid4().hex[:8]
    env = {"ROLLBACKCTL_ETCD_ENDPOINTS": etcd_server.endpoint, "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
           "ROLLBACKCTL_SIGNING": "off", **sim_env, "ROLLBACKCTL_TASK_QUEUE": task_queue, "ROLLBACKCTL_MONITOR_NAMESPACE": ns}
    wid = incident_workflow_id("hot_wallet", None, ns)

    async def cli(*args: str, **extra: str):
        return await asyncio.to_thread(run_cli, *args, env={**env, **extra}, timeout=60)

    async def nothing_started() -> None:
        assert (await http.get(f"{sim_server.url}/sim/faults")).json() == {}
        try:
            await dev_env.client.get_workflow_handle(wid).describe()
            raise AssertionError(f"{wid} was started")
        except Exception as e:  # RPCError NOT_FOUND
            assert "not found" in str(e).lower(), e

    prod = prefix.rstrip("/") + "-prod/"
    r = await cli("init", "--super-admin", "alice", "--environment", "production", ROLLBACKCTL_ETCD_PREFIX=prod)
    assert r.code == 0 and f"{prod} marked production" in r.out, r.err
    r = await cli("init", "--environment", "staging", ROLLBACKCTL_ETCD_PREFIX=prod)
    assert r.code == 4 and f"{prod} is marked production already" in r.err
    r = await cli("drill", "start", "p0-hot_wallet", "--speed", "30", "--as", "oscar", ROLLBACKCTL_ETCD_PREFIX=prod)
    assert r.code == 3 and r.err.strip() == (f"rollbackctl: error: {prod} is marked production: drills never run there "
                                             "(use a staging or dev stack)")
    await nothing_started()
    no_faults = f"http://{etcd_server.endpoint}"  # answers HTTP, has no /sim/faults: a production core
    r = await cli("drill", "start", "p0-hot_wallet", "--speed", "30", "--as", "oscar", ROLLBACKCTL_TRADING_CORE_URL=no_faults)
    assert r.code == 2 and "has no /sim/faults: it is not the simulator" in r.err
    await nothing_started()
    r = await cli("drill", "start", "rollback-non_critical-single_module", "--as", "oscar")
    assert r.code == 2 and "`drill start` runs P0 scenarios so far" in r.err
    await nothing_started()

    si, guard = StandIns(), GuardStandIn()
    async with incident_worker(dev_env, store, si, guard, task_queue):
        r = await cli("drill", "start", "p0-hot_wallet", "--speed", "30", "--as", "oscar")
        assert r.code == 0, r.err
        assert wid in r.out and "acknowledge   due" in r.out and "(within 10 s)" in r.out
        assert (await http.get(f"{sim_server.url}/sim/faults")).json() == {"hot_wallet_usd": 50000.0}
        h = dev_env.client.get_workflow_handle(wid)

        r = await cli("drill", "start", "p0-hot_wallet", "--speed", "30", "--as", "oscar")
        assert r.code == 4 and f"{wid} is open (a real incident or another drill)" in r.err

        async def state():
            return await h.query(IncidentWorkflow.state)

        st = await wait_for_value(state, lambda s: s.sla.escalations, 40, "the scaled acknowledge SLA to escalate",
                                  every=0.2)
        assert st.drill and st.detail.startswith("[DRILL] p0-hot_wallet at speed 30, run by oscar")
        esc = st.sla.escalations[0]  # unacknowledged 5 min / 30 after the page: level 2 paged, its own 10 s begins
        assert esc.level == 2 and timedelta(seconds=10) <= esc.at - st.sla.page_submitted_at < timedelta(seconds=12), \
            (esc, st.sla.page_submitted_at)
        assert st.sla.ack_due - esc.at == timedelta(seconds=10)
        async def pages():
            return triggers(si)

        # the escalation is recorded when decided; its page follows through the pager
        sent = await wait_for_value(pages, lambda ps: {p["escalation_level"] for p in ps} == {1, 2}, 20,
                                    "the level 1 and level 2 pages")
        assert all(p["summary"].startswith("[DRILL]") for p in sent), sent

        # scored: the acknowledgement came after the scaled SLA (level 2 was paged first): missed
        r = await cli("ack", wid, "--as", "vic")
        assert r.code == 3, r.err
        r = await cli("ack", wid, "--as", "oscar")
        assert r.code == 0, r.err
        r = await cli("drill", "report", wid, "--json")
        assert r.code == 0, r.err
        rep = json.loads(r.out)
        ack, action, resolved = rep["measures"]
        assert ack["by"] == "oscar" and ack["sla_s"] == 10.0 and ack["after_page_s"] > 10 and ack["result"] == "missed"
        assert action["sla_s"] == 20.0 and resolved["result"] == "not yet"
        assert [e["level"] for e in rep["escalations"]] == [2]
        r = await cli("drill", "report", wid)
        assert r.code == 0 and "| acknowledged | oscar |" in r.out and "| missed |" in r.out, r.out

        r = await cli("drill", "end", wid)
        assert r.code == 0 and "fault cleared" in r.out, r.err
        assert (await http.get(f"{sim_server.url}/sim/faults")).json() == {}
        await h.terminate("test over")
