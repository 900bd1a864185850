"""Replay of recorded IncidentWorkflow histories (tests/histories/incident_*.json).

tests/test_replay.py replays every history in the folder against today's code; this file checks
that each incident branch has one, that a deliberate nondeterministic change is caught, and records
them: `RECORD_HISTORIES=1 pytest tests/test_incident_replay.py -k record` (only for a new branch,
never to make a replay pass).
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.support.incident_nondeterministic import PageFirst
from tests.support.incident_helpers import GuardStandIn, clear, fire, incident_worker, open_incident, stop_child, until
from tests.support.standins import StandIns
from tests.test_rollback_workflow import set_switches
from workflows.incident import IncidentWorkflow
from contracts.incidents import ResolveRequest, TickRequest
from contracts.progress import Decision
from workflows.registry import WORKFLOWS

DIR = Path(__file__).parent / "histories"
BRANCHES = ("incident_hot_wallet_acked_auto_recovered", "incident_hl_margin_unacked_escalated",
            "incident_hl_down_level_choice", "incident_asset_mismatch_rollback_child",
            "incident_hedge_margin_undo_conflict", "incident_hl_refired_after_recovery")
MIN = timedelta(minutes=1)


def _history(name: str) -> WorkflowHistory:
    return WorkflowHistory.from_json(name, json.loads((DIR / f"{name}.json").read_text()))


def test_every_incident_branch_has_a_history():
    have = {p.stem for p in DIR.glob("incident_*.json")}
    assert set(BRANCHES) <= have, set(BRANCHES) - have


@pytest.mark.parametrize("name", BRANCHES)
async def test_incident_history_replays(name):
    await Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter).replay_workflow(_history(name))


async def test_a_nondeterministic_incident_change_is_caught():
    replayer = Replayer(workflows=[PageFirst], data_converter=pydantic_data_converter)
    res = await replayer.replay_workflow(_history(BRANCHES[0]), raise_on_replay_failure=False)
    assert res.replay_failure is not None and "ondetermin" in f"{type(res.replay_failure).__name__} {res.replay_failure}"


# -- recording --------------------------------------------------------------------------------------------
async def _ready(h, env):
    return await until(h, env, lambda s: s.ready)


async def _hot_wallet(env, tq, store, wid):
    h = await open_incident(env, tq, "hot_wallet", workflow_id=wid)
    await _ready(h, env)
    await env.sleep(1 * MIN)
    await h.execute_update(IncidentWorkflow.acknowledge, Decision(actor="oscar"))
    await h.execute_update(IncidentWorkflow.tick, TickRequest(actor="oscar", item="cold_transfer"))
    await clear(h)
    await env.sleep(6 * MIN)
    await until(h, env, lambda s: s.recovery.startswith("done"))
    await h.execute_update(IncidentWorkflow.resolve, ResolveRequest(actor="oscar"))
    return h


async def _hl_margin(env, tq, store, wid):
    h = await open_incident(env, tq, "hl_margin", workflow_id=wid)
    await _ready(h, env)
    await env.sleep(11 * MIN)
    await h.execute_update(IncidentWorkflow.acknowledge, Decision(actor="rita"))
    await clear(h)
    await h.execute_update(IncidentWorkflow.resolve, ResolveRequest(actor="rita"))
    return h


async def _hl_down(env, tq, store, wid):
    h = await open_incident(env, tq, "hl_disconnection", started_ago=timedelta(seconds=61), workflow_id=wid)
    await _ready(h, env)
    await env.sleep(4 * MIN)
    await until(h, env, lambda s: s.level_choice == "asked")
    await h.execute_update(IncidentWorkflow.escalate, Decision(actor="oscar", level=2))
    st = await until(h, env, lambda s: s.children)
    await stop_child(env, st.children[0])
    await clear(h)
    await h.execute_update(IncidentWorkflow.resolve, ResolveRequest(actor="oscar"))
    return h


async def _asset(env, tq, store, wid):
    h = await open_incident(env, tq, "asset_mismatch", workflow_id=wid)
    await _ready(h, env)
    await h.execute_update(IncidentWorkflow.acknowledge, Decision(actor="oscar"))
    st = await until(h, env, lambda s: s.children)
    await stop_child(env, st.children[0])
    await clear(h)
    await h.execute_update(IncidentWorkflow.resolve, ResolveRequest(actor="alice", undo=True, reason="signed off"))
    return h


async def _hedge(env, tq, store, wid):
    h = await open_incident(env, tq, "hedge_margin", workflow_id=wid)
    await _ready(h, env)
    await set_switches(store, "rita", hedge_max_leverage=1.5)
    await clear(h)
    await h.execute_update(IncidentWorkflow.resolve, ResolveRequest(actor="rita", undo=True))
    return h


async def _refire(env, tq, store, wid):
    h = await open_incident(env, tq, "hl_disconnection", started_ago=timedelta(seconds=61), workflow_id=wid)
    await _ready(h, env)
    await h.execute_update(IncidentWorkflow.acknowledge, Decision(actor="oscar"))
    await clear(h)
    await env.sleep(3 * MIN)
    await until(h, env, lambda s: s.recovery.startswith("done"))
    await fire(h)
    await until(h, env, lambda s: any(a.phase == "reapply" for a in s.actions))
    await clear(h)
    await h.execute_update(IncidentWorkflow.resolve, ResolveRequest(actor="oscar", undo=True))
    return h


SCENARIOS = dict(zip(BRANCHES, (_hot_wallet, _hl_margin, _hl_down, _asset, _hedge, _refire)))


@pytest.mark.parametrize("name", BRANCHES)
async def test_each_branch_runs_to_the_end_and_its_fresh_history_replays(name, ts_env, store, task_queue):
    """Every recorded branch, run now by today's code: it completes, and its history replays. With
    RECORD_HISTORIES=1 the history is also written to tests/histories/ (to re-record after a change)."""
    si, guard = StandIns(), GuardStandIn()
    async with incident_worker(ts_env, store, si, guard, task_queue):
        # the workflow id is the file's stem: tests/test_replay.py replays under that id
        h = await SCENARIOS[name](ts_env, task_queue, store, name)
        res = await h.result()
        hist = await h.fetch_history()
    assert res.status == "resolved", res
    await Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter).replay_workflow(hist)
    if os.environ.get("RECORD_HISTORIES") == "1":
        (DIR / f"{name}.json").write_text(hist.to_json())
