"""The critical lane, through real processes: `rollback start` puts a critical-path rollback on a task queue
of its own at Temporal's first priority (manual/rollback.py CRITICAL_LANE), anything else on the main queue
at the default; the worker serves both, or one each with ROLLBACKCTL_WORKER_LANES, and a critical lane whose
own process dies is still served by a worker that serves both.

Priority keys per Temporal's docs (docs.temporal.io/develop/task-queue-priority-fairness): 1 is the highest,
5 the lowest, unset means the default (3); a workflow's activities inherit it."""

from __future__ import annotations

import uuid

import pytest
from temporalio.service import RPCError

from contracts.paging import pager_workflow_id

from tests.support.fixtures_sim import apply_and_wait
from tests.support.infra import cli, pollers
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(240)

QUICK = ["--drill", "--observe", "1s", "--interval", "250ms"]


async def _applied_by(store, wid: str) -> bool:
    return any(a.source == wid for a in await store.audit())


async def test_a_critical_rollback_runs_on_its_own_lane_at_first_priority(tclient, store, sim, workers, worker_env,
                                                                         task_queue):
    w = workers.start("worker")
    await workers.wait_polling(tclient, task_queue, w)
    lane = f"{task_queue}-critical"
    await wait_until(lambda: _polls(tclient, lane, w.identity), 30, "the worker polling the critical lane too")
    await apply_and_wait(sim, store, global_betting_enabled=True, routing_mode="NORMAL_MODE")
    tag = uuid.uuid4().hex[:6]
    crit, data = f"rollback-LANE-C-{tag}", f"rollback-LANE-D-{tag}"
    try:
        r = await cli(worker_env, "rollback", "start", "--severity", "critical_path_failure", "--scope",
                      "cross_module", "--incident", f"LANE-C-{tag}", "--as", "oscar", "--reason", "fills failing",
                      *QUICK)
        assert r.code == 0, r.err
        r = await cli(worker_env, "rollback", "start", "--severity", "data_inconsistency", "--scope",
                      "single_module", "--switch", "hedging", "--incident", f"LANE-D-{tag}", "--as", "oscar",
                      "--reason", "positions disagree", *QUICK)
        assert r.code == 0, r.err
        c = (await tclient.get_workflow_handle(crit).describe()).raw_description.workflow_execution_info
        d = (await tclient.get_workflow_handle(data).describe()).raw_description.workflow_execution_info
        assert (c.task_queue, c.priority.priority_key) == (lane, 1)
        assert (d.task_queue, d.priority.priority_key) == (task_queue, 0)  # 0: unset, the server's default
        # served there: the critical rollback's change set is applied (its audit record) by the worker
        await wait_until(lambda: _applied_by(store, crit), 30, "the critical rollback's change set applied")
        # and it pages through the deployment's one pager, the main queue's: one budget against PagerDuty's
        # per-key and Slack's per-webhook limits, and the one the PagerDuty webhook receiver forwards acks to
        await wait_until(lambda: _paged(sim, crit), 30, "the critical rollback's page at PagerDuty")
        await tclient.get_workflow_handle(pager_workflow_id(task_queue)).describe()
        with pytest.raises(RPCError, match="not found"):
            await tclient.get_workflow_handle(pager_workflow_id(lane)).describe()
    finally:
        for wid in (crit, data):
            try:
                await tclient.get_workflow_handle(wid).terminate("test over")
            except Exception:
                pass


async def test_the_lanes_split_into_processes_and_a_worker_serving_both_covers_a_dead_lane(
        tclient, store, sim, workers, worker_env, task_queue):
    lane = f"{task_queue}-critical"
    main = workers.start("main", ROLLBACKCTL_WORKER_LANES="main")
    crit = workers.start("crit", ROLLBACKCTL_WORKER_LANES="critical", ROLLBACKCTL_EMERGENCY_LISTEN="",
                         ROLLBACKCTL_METRICS_LISTEN="", ROLLBACKCTL_SDK_METRICS_LISTEN="")
    await workers.wait_polling(tclient, task_queue, main)
    await workers.wait_polling(tclient, lane, crit)
    assert main.identity not in await pollers(tclient, lane) and crit.identity not in await pollers(tclient, task_queue)
    # the critical lane's own process dies; a worker serving both queues (the default) takes its work
    crit.sigkill()
    both = workers.start("both", ROLLBACKCTL_EMERGENCY_LISTEN="", ROLLBACKCTL_METRICS_LISTEN="",
                         ROLLBACKCTL_SDK_METRICS_LISTEN="")
    await workers.wait_polling(tclient, lane, both)
    await apply_and_wait(sim, store, global_betting_enabled=True, routing_mode="NORMAL_MODE")
    inc = f"LANE-K-{uuid.uuid4().hex[:6]}"
    try:
        r = await cli(worker_env, "rollback", "start", "--severity", "critical_path_failure", "--scope",
                      "cross_module", "--incident", inc, "--as", "oscar", "--reason", "fills failing", *QUICK)
        assert r.code == 0, r.err
        await wait_until(lambda: _applied_by(store, f"rollback-{inc}"), 30, "applied with the lane's process dead")
    finally:
        try:
            await tclient.get_workflow_handle(f"rollback-{inc}").terminate("test over")
        except Exception:
            pass


async def _paged(sim, owner: str) -> bool:
    return any(a["dedup_key"].startswith(f"{owner}/") for a in (await sim.pagerduty())["alerts"])


async def _polls(client, queue: str, identity: str) -> bool:
    return identity in await pollers(client, queue)
