"""The rollbackctl worker: runs every workflow and activity on the task queue.

    python worker.py          (or the console script `rollbackctl-worker`)

Needs etcd, Temporal, the trading core and paging settings (a worker without paging configured
refuses to start: pages must never be dropped silently).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from contextlib import AsyncExitStack
from datetime import timedelta

import httpx
import structlog
from temporalio.client import Client
from temporalio.worker import Worker

from activities.switch_activities import SwitchActivities
from activities.switch_store import SwitchStore
from activities.temporal_ops import TemporalOps
from core.etcd import Etcd
from core.settings import (
    SIGNING_OFF_WARNING,
    EmergencySettings,
    EtcdSettings,
    MetricsSettings,
    PagingSettings,
    SigningSettings,
    TemporalSettings,
    TradingCoreSettings,
)
from workflows.registry import WORKFLOWS

log = structlog.get_logger("rollbackctl.worker")


def activity_objects(store: SwitchStore, http: httpx.AsyncClient, client: Client,
                     core: TradingCoreSettings, paging: PagingSettings) -> list:
    from activities.change_events import ChangeEventRelay
    from activities.emergency import EmergencyActivities
    from activities.pager_client import PagerClient
    from activities.paging import PagingActivities
    from activities.requests import RequestActivities
    from activities.trading_core import TradingCoreActivities
    from activities.monitor import IncidentOps

    return [
        SwitchActivities(store),
        RequestActivities(store),  # signed direct changes (switch set, operator add|rotate-key)
        TradingCoreActivities.from_settings(core, http),
        pg := PagingActivities.from_settings(paging, http),
        PagerClient(pager_limits(paging), client),  # paging.submit: notices to the pager workflow
        ChangeEventRelay(store, pg),  # paging.relay_changes: a PagerDuty Change Event per audited change
        TemporalOps(client),
        IncidentOps(client),  # incident auto-recovery guard; the monitor loop itself: `rollbackctl monitor`
        EmergencyActivities(store),  # what the emergency lane applied, for its follow-up workflow
    ]


def activity_methods(objs: list) -> list:
    """Every @activity.defn method of the given activity objects."""
    out = []
    for o in objs:
        for name in dir(type(o)):
            fn = getattr(o, name)
            if callable(fn) and hasattr(getattr(type(o), name), "__temporal_activity_definition"):
                out.append(fn)
    return out


def pager_limits(paging: PagingSettings):
    """The pager's budgets from the settings (PagerDuty's and Slack's documented limits by default)."""
    from contracts.paging import PagerLimits
    from manual import escalation

    return PagerLimits(pagerduty_per_min=paging.pagerduty_events_per_min, slack_per_s=paging.slack_messages_per_s,
                       levels=len(escalation.LEVELS))


async def ensure_change_events(client: Client, tset: TemporalSettings) -> None:
    """Start the Change Events relay of this task queue unless it runs (a second worker finds it running)."""
    from temporalio.common import WorkflowIDConflictPolicy

    from activities.change_events import RelayInput
    from workflows.change_events import ChangeEventsWorkflow, change_events_workflow_id

    await client.start_workflow(
        ChangeEventsWorkflow.run, RelayInput(links_base=tset.workflow_url("").rstrip("/")),
        id=change_events_workflow_id(tset.task_queue), task_queue=tset.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)


def build_worker(client: Client, task_queue: str, activities: list, worker_class: type = Worker) -> Worker:
    return worker_class(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=activities,
        # A crashed worker's workflows move to a standby in seconds, not the default 10 s + (PITFALLS.md).
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=1),
        max_concurrent_activities=200,
        max_concurrent_local_activities=200,
    )


async def run(stop: asyncio.Event | None = None) -> None:
    from core.temporal_client import connect

    from activities.paging import check_paging

    from core.temporal_client import runtime

    tset, eset, mset = TemporalSettings(), EtcdSettings(), MetricsSettings()
    paging = PagingSettings()
    check_paging(paging)  # one line naming the variable, before anything connects
    runtime(mset.sdk_metrics_listen)  # the SDK's exporter is set when its runtime is made, before connecting
    async with AsyncExitStack() as stack:
        etcd = await stack.enter_async_context(Etcd.from_settings(eset))
        http = await stack.enter_async_context(httpx.AsyncClient())
        client = await connect(tset)
        metrics_server = serve_metrics(mset)
        if metrics_server is not None:
            stack.callback(metrics_server.shutdown)
        store = SwitchStore(etcd, eset.prefix)
        objs = activity_objects(store, http, client, TradingCoreSettings(), paging)
        # Two queues: the main one and the critical lane's (manual/rollback.py CRITICAL_LANE: the same workflows
        # and activities, with slots of their own, so a storm on the main queue never queues ahead of a critical
        # flip). ROLLBACKCTL_WORKER_LANES: "both" (default), or "main" / "critical" to run them in processes of
        # their own (a critical lane with its own CPU: bench/storm.py).
        lanes = tset.worker_lanes
        queues = [q for lane, q in (("main", tset.task_queue), ("critical", tset.critical_task_queue))
                  if lanes in (lane, "both")]
        workers = [build_worker(client, q, activity_methods(objs)) for q in queues]
        main = lanes != "critical"  # the main lane's process also runs the emergency lane and the metrics loops
        esets = EmergencySettings()
        log.info("worker started", task_queues=queues, lanes=lanes, temporal=tset.temporal_address,
                 namespace=tset.temporal_namespace, etcd=eset.endpoints, signing=SigningSettings().signing,
                 emergency_lane=(esets.emergency_listen or "off") if main else "off",
                 metrics=mset.metrics_listen or "off", sdk_metrics=mset.sdk_metrics_listen or "off")
        if not SigningSettings().signing:
            log.warning(SIGNING_OFF_WARNING)
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        side = (emergency_tasks(store, client, tset.task_queue, objs, esets, stop)
                + metrics_tasks(store, client, mset, stop)) if main else []
        try:
            async with AsyncExitStack() as running:
                for w in workers:
                    await running.enter_async_context(w)
                if main and paging.pagerduty_change_events:
                    await ensure_change_events(client, tset)
                await stop.wait()
        finally:
            stop.set()
            await asyncio.gather(*side, return_exceptions=True)
        log.info("worker stopped")


def emergency_tasks(store: SwitchStore, client: Client, task_queue: str, objs: list, esets: "EmergencySettings",
                    stop: asyncio.Event) -> list[asyncio.Task]:
    """The emergency lane (served while Temporal is down) and the follow-ups of its moves (once it is back)."""
    from activities.emergency import EmergencyLane, EmergencyReconciler, serve, temporal_starter
    from activities.trading_core import TradingCoreActivities

    core = next(o for o in objs if isinstance(o, TradingCoreActivities))
    tasks = []
    if esets.emergency_reconcile_s > 0:
        tasks.append(asyncio.create_task(EmergencyReconciler(store, temporal_starter(client, task_queue)).run(
            stop, every_s=esets.emergency_reconcile_s)))
    if esets.emergency_listen:
        tasks.append(asyncio.create_task(serve(EmergencyLane(store, core.action), esets.emergency_listen, stop)))
    return tasks


def serve_metrics(mset: MetricsSettings):
    """The domain /metrics endpoint (core/metrics.py) when ROLLBACKCTL_METRICS_LISTEN is set."""
    if not mset.metrics_listen:
        return None
    from core import metrics

    return metrics.serve(mset.metrics_listen, metrics.WORKER)


def metrics_tasks(store: SwitchStore, client: Client, mset: MetricsSettings, stop: asyncio.Event) -> list[asyncio.Task]:
    """The matrix, audit and workflow gauges (activities/metrics.py), with the endpoint only."""
    if not mset.metrics_listen:
        return []
    from activities.audit_verify import verify_store
    from activities.metrics import MatrixMetrics, WorkflowMetrics

    async def verify() -> bool:
        return (await verify_store(store)).ok

    tasks = [asyncio.create_task(MatrixMetrics(store, verify, mset.metrics_audit_verify_s).run(stop))]
    if mset.metrics_collect_s > 0:
        tasks.append(asyncio.create_task(WorkflowMetrics(client, mset.metrics_collect_s).run(stop)))
    return tasks


def main() -> None:
    from core import log as logsetup

    logsetup.configure()
    code = 0
    try:
        asyncio.run(run())
    except Exception as e:
        from activities.paging import PagingNotConfigured

        if isinstance(e, PagingNotConfigured):
            print(f"rollbackctl-worker: {e}", file=sys.stderr)
            code = 2
        else:
            log.error("worker failed", error=str(e))
            code = 1
    # Leave without the interpreter's exit path (Temporal core exit crash, sdk-python #300).
    os._exit(code)


if __name__ == "__main__":
    main()
