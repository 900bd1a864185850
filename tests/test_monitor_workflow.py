"""MonitorWorkflow + the `monitor.run` activity on the dev server, polling the simulator."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack

import httpx
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import Worker

from activities.monitor import MonitorActivities
from activities.trading_core import TradingCoreActivities
from rollbackctl.cli.incident_cmds import monitor_status
from worker import activity_methods, activity_objects, build_worker
from contracts.incidents import MonitorInput, incident_workflow_id
from tests.support.waits import wait_for_value
from workflows.monitor import MonitorWorkflow, monitor_workflow_id


async def wait(fetch, pred, timeout: float = 10.0, what: str = "condition"):
    """Poll an async fetch until pred holds (a deadline, not a sleep standing in for synchronisation)."""
    return await wait_for_value(fetch, pred, timeout, what)


async def test_monitor_workflow_polls_continues_as_new_and_survives_losing_its_process(
        dev_env, store, sim, core_settings, paging_settings, task_queue):
    client = dev_env.client
    ns, mq = uuid.uuid4().hex[:8], f"{task_queue}-monitor"
    wid = monitor_workflow_id(ns)
    inp = MonitorInput(namespace=ns, interval_s=0.05, incident_task_queue=task_queue, activity_task_queue=mq,
                       heartbeat_timeout_s=1.0, run_for_s=1.0)

    def monitor_worker(http) -> Worker:
        acts = MonitorActivities(client, store, TradingCoreActivities.from_settings(core_settings, http))
        return Worker(client, task_queue=mq, workflows=[MonitorWorkflow], activities=[acts.run],
                      graceful_shutdown_timeout=__import__("datetime").timedelta(seconds=0))

    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient())
        objs = activity_objects(store, http, client, core_settings, paging_settings)
        await stack.enter_async_context(build_worker(client, task_queue, activity_methods(objs)))
        first = monitor_worker(http)
        await first.__aenter__()
        h = await client.start_workflow(MonitorWorkflow.run, inp, id=wid, task_queue=mq,
                                        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)
        again = await client.start_workflow(MonitorWorkflow.run, inp, id=wid, task_queue=mq,
                                            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)
        assert again.result_run_id == h.result_run_id, "one monitor per namespace"
        # every run_for_s the activity hands its state to a new run (continue-as-new)
        cfg = await wait(lambda: client.get_workflow_handle(wid).query(MonitorWorkflow.config),
                         lambda c: c.state.polls > 0, what="a continue-as-new with state")
        carried = cfg.state.polls
        st = await wait(lambda: monitor_status(client, wid), lambda s: s.get("polls", 0) > carried,
                        what="heartbeat details past the carried state")
        assert st["running"] and st["failed_polls"] == 0 and st["firing"] == []
        # the monitor process dies: its activity moves to another one and resumes from its heartbeat
        await first.__aexit__(None, None, None)
        await stack.enter_async_context(monitor_worker(http))
        before = st["polls"]
        await sim.inject(hot_wallet_usd=5_000.0)
        acts = await sim.wait_for(sim.actions, lambda a: a, 20, what="the action after the takeover")
        assert [a["action"] for a in acts] == ["pause_large_withdrawals"]
        st = await wait(lambda: monitor_status(client, wid), lambda s: s.get("firing") == ["hot_wallet"],
                        what="the monitor status shows the firing rule")
        assert st["polls"] > before, "resumed, not restarted from zero"
        inc = client.get_workflow_handle(incident_workflow_id("hot_wallet", None, ns))
        assert (await inc.describe()).status == WorkflowExecutionStatus.RUNNING
        await client.get_workflow_handle(wid).cancel()
        await wait(lambda: client.get_workflow_handle(wid).describe(),
                   lambda d: d.status != WorkflowExecutionStatus.RUNNING, what="monitor stopped")
        await inc.terminate("test over")
