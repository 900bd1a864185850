"""Rollback and degradation end to end on the Temporal dev server with every real activity:
the audited store in etcd, the trading-core simulator over HTTP (it follows etcd) and paging to its
PagerDuty/Slack sinks. Update paths are exercised here (the dev server runs in real time)."""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from manual.rollback import Durations, Scope, Severity
from core import procs
from tests.support import histories_io
from tests.support.fixtures_sim import apply_and_wait
from tests.support.wf_helpers import awaiting, incident, poll_progress, real_worker, save_history, values
from workflows.degradation import DegradationWorkflow, degrade_workflow_id
from contracts.progress import Decision
from workflows.models import DegradeInput, RollbackInput
from workflows.registry import WORKFLOWS
from workflows.rollback import RollbackWorkflow, rollback_workflow_id

QUICK = Durations(observe=timedelta(seconds=1), check_interval=timedelta(milliseconds=250),
                  restore_observe=timedelta(seconds=1), confirm_sla=timedelta(minutes=10))


async def test_cross_module_rollback_end_to_end(dev_env, store, sim, core_settings, paging_settings, http,
                                               task_queue, tmp_path):
    await apply_and_wait(sim, store, global_betting_enabled=True, routing_mode="NORMAL_MODE")
    await sim.inject(error_rate=0.03)  # what the on-call sees: internalization is failing orders
    inc = incident()
    async with real_worker(dev_env, store, core_settings, paging_settings, http, task_queue):
        h = await dev_env.client.start_workflow(
            RollbackWorkflow.run,
            RollbackInput(incident_id=inc, summary="error rate 3%", severity=Severity.CRITICAL, scope=Scope.CROSS,
                          requested_by="oscar", reason="internalization failing", durations=QUICK),
            id=rollback_workflow_id(inc), task_queue=task_queue)
        applied = await sim.wait_for(sim.switches, lambda s: s["switches"]["routing_mode"]["value"] == "HL_MODE",
                                     what="HL_MODE applied at the simulator")
        assert applied["switches"]["global_betting_enabled"]["value"] is False
        await sim.clear_faults()  # HL routing fixes it
        p = await poll_progress(h, awaiting("confirm"))
        apply_step = next(r for r in p.history if r.name == "apply")
        assert "trading core applied revision" in apply_step.detail
        await h.execute_update(RollbackWorkflow.confirm, Decision(actor="oscar", reason="error rate back to normal"))
        await poll_progress(h, awaiting("fix"))
        with pytest.raises(WorkflowUpdateFailedError):
            await h.execute_update(RollbackWorkflow.fix, Decision(actor="oscar", reference="pr-1", tests_passed=True))
        await h.execute_update(RollbackWorkflow.fix, Decision(actor="alice", reference="pr-1", tests_passed=True))
        await sim.wait_for(sim.switches, lambda s: s["switches"]["betting_traffic_pct"]["value"] == 5,
                           what="5% restore applied at the simulator")
        res = await h.result()
    assert res.status == "restored"
    sw = (await sim.switches())["switches"]
    assert (sw["routing_mode"]["value"], sw["global_betting_enabled"]["value"], sw["betting_traffic_pct"]["value"]) == (
        "NORMAL_MODE", True, 100)
    pages = await sim.pages()
    assert any(pg.get("event_action") == "trigger" for pg in pages)
    assert any(pg.get("event_action") == "resolve" for pg in pages)
    audit = [a for a in await store.audit() if a.source == rollback_workflow_id(inc)]
    assert len(audit) == 3
    # The history as an operator downloads it from a real server replays here as is: the format and
    # loader the replay tests use (tests/support/histories_io.py) are Temporal's own, not a private variant.
    # `temporal workflow show --output json` "you may pass the results to an SDK to perform a replay".
    out = subprocess.run([procs.binary("temporal"), "workflow", "show", "--workflow-id", h.id, "--output", "json",
                          "--address", dev_env.client.service_client.config.target_host],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    exported = tmp_path / "exported.json"
    exported.write_text(out)
    assert histories_io.workflow_id_of(json.loads(out)) == h.id
    await Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter).replay_workflow(
        histories_io.load(exported))


async def test_level_2_applies_switches_and_core_actions_then_restores(dev_env, store, sim, core_settings,
                                                                       paging_settings, http, task_queue):
    inc = incident()
    async with real_worker(dev_env, store, core_settings, paging_settings, http, task_queue):
        h = await dev_env.client.start_workflow(
            DegradationWorkflow.run,
            DegradeInput(level=2, incident_id=inc, requested_by="oscar", reason="liquidation broken", durations=QUICK),
            id=degrade_workflow_id(2, inc), task_queue=task_queue)
        await poll_progress(h, awaiting("confirm"))
        assert await values(store, "liquidation_enabled", "routing_mode", "global_betting_enabled") == {
            "liquidation_enabled": False, "routing_mode": "HL_MODE", "global_betting_enabled": False}
        acts = [a["action"] for a in await sim.actions()]
        assert acts == ["pause_hl_opens", "pause_large_withdrawals"]
        await h.execute_update(DegradationWorkflow.confirm, Decision(actor="oscar"))
        await poll_progress(h, awaiting("fix"))
        with pytest.raises(WorkflowUpdateFailedError) as e:  # re-enabling liquidation is a super admin's
            await h.execute_update(DegradationWorkflow.fix, Decision(actor="rita", reference="x", tests_passed=True))
        assert "super_admin" in str(e.value.cause)
        await h.execute_update(DegradationWorkflow.fix, Decision(actor="sam", reference="liq-fix", tests_passed=True))
        res = await h.result()
        await save_history(h, "degradation_level_2_restored")
    assert res.status == "restored"
    assert (await values(store, "liquidation_enabled"))["liquidation_enabled"] is True
    acts = [a["action"] for a in await sim.actions()]
    assert acts[2:] == ["resume_hl_opens", "resume_large_withdrawals"]


async def test_level_3_maintenance_answers_503_and_needs_super_admin(dev_env, store, sim, core_settings,
                                                                     paging_settings, http, task_queue):
    inc = incident()
    async with real_worker(dev_env, store, core_settings, paging_settings, http, task_queue):
        refused = await dev_env.client.start_workflow(
            DegradationWorkflow.run,
            DegradeInput(level=3, incident_id=inc, requested_by="oscar", reason="asset at risk", durations=QUICK),
            id=degrade_workflow_id(3, inc) + "-oncall", task_queue=task_queue)
        assert (await refused.result()).status == "failed"
        assert (await values(store, "global_api_enabled"))["global_api_enabled"] is True
        h = await dev_env.client.start_workflow(
            DegradationWorkflow.run,
            DegradeInput(level=3, incident_id=inc, requested_by="alice", reason="asset at risk", durations=QUICK),
            id=degrade_workflow_id(3, inc), task_queue=task_queue)
        await poll_progress(h, awaiting("confirm"))
        r = await sim.v1("POST", "/v1/orders", {"symbol": "BTC", "notional_usd": 100, "side": "buy"})
        assert r.status_code == 503 and r.json()["error"] == "maintenance"
        await h.execute_update(DegradationWorkflow.confirm, Decision(actor="alice"))
        await poll_progress(h, awaiting("fix"))
        await h.execute_update(DegradationWorkflow.fix, Decision(actor="alice", reference="db-restored",
                                                                 tests_passed=True))
        assert (await h.result()).status == "restored"
    r = await sim.v1("POST", "/v1/orders", {"symbol": "BTC", "notional_usd": 100, "side": "buy"})
    assert r.status_code == 200
