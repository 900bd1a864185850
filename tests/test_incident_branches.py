"""Each recorded incident branch (tests/histories/incident_*.json), run now by today's code on the
time-skipping server: it completes, and its fresh history replays. With RECORD_HISTORIES=1 the history is
also written to tests/histories/ (`RECORD_HISTORIES=1 pytest tests/test_incident_branches.py`: only for a
new branch, never to make a replay pass). The recorded histories themselves are replayed in
tests/test_replay.py.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.support.incident_helpers import GuardStandIn, clear, fire, incident_worker, open_incident, stop_child, until
from tests.support.standins import StandIns
from tests.support.histories_io import REQUIRED
from tests.support.wf_helpers import set_switches
from workflows.incident import IncidentWorkflow
from contracts.incidents import ResolveRequest, TickRequest
from contracts.progress import Decision
from workflows.registry import WORKFLOWS

DIR = Path(__file__).parent / "histories"
BRANCHES = REQUIRED["incident"]
MIN = timedelta(minutes=1)


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
