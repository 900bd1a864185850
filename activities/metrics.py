"""What fills the domain gauges that no single activity sees (core/metrics.py has the catalogue).

- MatrixMetrics (the worker): every switch's value from a watch, the audit chain followed as it
  grows (changes by switch / authority / role, the head's sequence), and a periodic full verification.
- WorkflowMetrics (the worker): running workflows by kind and step, who is awaited and for how long,
  open incidents by rule and those past their acknowledge SLA, the canary's stage and last check:
  one Temporal visibility list and one query per running workflow, every `collect_s`.
- TaskQueueMetrics (the P0 monitor, an observer independent of the workers): the pollers Temporal saw
  on the task queues in the last minute, so "no worker polls" is visible even when no worker is up.

Each runs until its stop event and survives etcd or Temporal being away (it tries again next round).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from core import metrics
from core.aio import wait_set, within
from core.etcd import EtcdCompacted, EtcdError, EtcdUnavailable
from core.watcher import SwitchUpdate, SwitchWatcher
from manual import alerts, switches

log = logging.getLogger(__name__)


def _ts(at: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(at).replace("Z", "+00:00")).timestamp()
    except (TypeError, ValueError):
        return None


def set_switch(name: str, value: Any, record: dict[str, Any]) -> None:
    """The gauges of one switch from its etcd record (unknown names are not exported: bounded labels)."""
    sw = switches.BY_NAME.get(name)
    if sw is None:
        return
    try:
        v = sw.parse(value)
    except Exception:  # a value the manual does not accept: shown as off its default, no value
        metrics.SWITCH_OFF_DEFAULT.labels(name).set(1.0)
        return
    if sw.type is switches.SwitchType.ENUM:
        for c in sw.choices:
            metrics.SWITCH_ENUM.labels(name, c).set(1.0 if c == v else 0.0)
    elif sw.type is not switches.SwitchType.SYMBOLS:  # bool (1 = true), money, float, int
        metrics.SWITCH_VALUE.labels(name).set(float(v))
    metrics.SWITCH_OFF_DEFAULT.labels(name).set(0.0 if v == sw.default else 1.0)
    t = _ts(record.get("updated_at"))
    if t is not None:
        metrics.SWITCH_LAST_CHANGE.labels(name).set(t)


def count_record(rec: dict[str, Any]) -> None:
    """One audit record: a change per switch it changed, by the authority and role that made it."""
    for ch in rec.get("changes") or []:
        sw = ch.get("switch")
        if sw and sw in switches.BY_NAME:
            metrics.SWITCH_CHANGES.labels(sw, str(rec.get("authority") or "-"), str(rec.get("role") or "-")).inc()


class MatrixMetrics:
    def __init__(self, store, verify: Callable[[], Awaitable[bool]] | None = None, verify_every_s: float = 300.0,
                 consumers_every_s: float = 2.0):
        self.store = store
        self.verify, self.verify_every_s = verify, verify_every_s
        self.consumers_every_s = consumers_every_s
        self.counted = 0  # the last audit sequence counted

    async def run(self, stop: asyncio.Event) -> None:
        watcher = SwitchWatcher(self.store.etcd, self.store.prefix, on_change=self._changed, observe=False)
        tasks = [asyncio.create_task(self._follow_audit(stop)), asyncio.create_task(self._consumers_loop(stop))]
        if self.verify is not None and self.verify_every_s > 0:
            tasks.append(asyncio.create_task(self._verify_loop(stop)))
        try:
            await watcher.start()
            for name, value in watcher.values.items():
                set_switch(name, value, watcher.records.get(name, {}))
            await stop.wait()
        finally:
            await watcher.stop()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    def _changed(upd: SwitchUpdate) -> None:
        set_switch(upd.name, upd.value, upd.record)

    async def _follow_audit(self, stop: asyncio.Event) -> None:
        """Watch the audit prefix from the head: each new record counts its changes once."""
        base = f"{self.store.prefix}audit/"
        rev, delay = 0, 0.2
        while not stop.is_set():
            try:
                if rev == 0:  # the whole chain once: the counters are the chain's totals, across restarts
                    kvs, rev = await self.store.etcd.get_prefix(base)
                    for kv in kvs:
                        self._count(json.loads(kv.value))
                async for events in self.store.etcd.watch_prefix(base, rev + 1):
                    delay = 0.2
                    for ev in events:
                        rev = max(rev, ev.kv.mod_revision)
                        if ev.type == "put":
                            self._count(json.loads(ev.kv.value))
            except EtcdCompacted:
                rev = 0  # read the chain again; what was counted is skipped
            except (EtcdUnavailable, EtcdError, OSError) as e:
                log.warning("metrics: audit watch dropped (%s); resuming", e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _count(self, rec: dict[str, Any]) -> None:
        """Each record once (a re-read after a compaction skips what was counted)."""
        seq = int(rec["id"]) if str(rec.get("id", "")).isdigit() else None
        if seq is not None and seq <= self.counted:
            return
        count_record(rec)
        if seq is not None:
            self.counted = seq
            metrics.AUDIT_HEAD.set(seq)

    async def consumers(self) -> None:
        """Live receipts and how many lag the last switch change: a straggler of any writer's change (a
        workflow's, `switch set` without --wait-applied, the emergency lane) fires RollbackctlConsumerBehind."""
        from contracts.fleet import receipt_rows

        rows, matrix = await self.store.consumers()
        metrics.CONSUMERS_LIVE.set(len(rows))
        metrics.CONSUMERS_BEHIND.set(sum(r["behind"] for r in receipt_rows(rows, matrix, time.time())))

    async def _consumers_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.consumers()
            except Exception as e:  # etcd away: the gauges keep their last values (the etcd alerts see it)
                log.warning("metrics: consumers' receipts unreadable (%s)", e)
            await wait_set(stop, self.consumers_every_s)

    async def _verify_loop(self, stop: asyncio.Event) -> None:
        metrics.AUDIT_VERIFY_OK.set(float("nan"))  # not verified yet: neither passing nor failing
        while not stop.is_set():
            try:
                ok = await self.verify()
                metrics.AUDIT_VERIFY_OK.set(1.0 if ok else 0.0)
                metrics.AUDIT_VERIFY_TIME.set(time.time())
            except Exception as e:  # etcd away: the timestamp goes stale, which the alert sees
                log.warning("metrics: audit verification could not run (%s)", e)
            await wait_set(stop, self.verify_every_s)


def _replace(gauge, values: dict[tuple[str, ...], float], keep: set[tuple[str, ...]]) -> set[tuple[str, ...]]:
    """Set `values` on a labelled gauge and remove the label sets set last time and not now."""
    for labels, v in values.items():
        gauge.labels(*labels).set(v)
    for labels in keep - set(values):
        try:
            gauge.remove(*labels)
        except KeyError:
            pass
    return set(values)


# Workflow types whose progress the gauges count (Progress.kind is the label).
TRACKED = {"RollbackWorkflow", "DegradationWorkflow", "CanaryWorkflow", "IncidentWorkflow", "ChangeRequestWorkflow",
           "EmergencyWorkflow"}


class WorkflowMetrics:
    def __init__(self, client, every_s: float = 10.0, query_timeout_s: float = 3.0, clock=lambda: datetime.now(timezone.utc)):
        self.client, self.every_s, self.query_timeout_s, self.clock = client, every_s, query_timeout_s, clock
        self._last: dict[str, set] = {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.collect()
                metrics.COLLECTIONS.labels("ok").inc()
            except Exception as e:  # Temporal away: the gauges keep their last values; the counter says so
                metrics.COLLECTIONS.labels("failed").inc()
                log.warning("metrics: workflow collection failed (%s)", e)
            await wait_set(stop, self.every_s)

    async def _query(self, wid: str, name: str):
        from contracts.incidents import IncidentState
        from contracts.progress import Progress

        types = {"progress": Progress, "state": IncidentState, "status": dict}  # the canary's status: its JSON
        try:
            return await within(self.query_timeout_s,
                                self.client.get_workflow_handle(wid).query(name, result_type=types[name]))
        except Exception:  # no worker answers now, or it closed meanwhile: left out of this round
            return None

    async def collect(self) -> None:
        running = [wf async for wf in self.client.list_workflows("ExecutionStatus = 'Running'")
                   if wf.workflow_type in TRACKED]
        sem = asyncio.Semaphore(16)

        async def one(wf):
            async with sem:
                p = await self._query(wf.id, "progress")
                extra = None
                if wf.workflow_type == "IncidentWorkflow":
                    extra = await self._query(wf.id, "state")
                elif wf.workflow_type == "CanaryWorkflow":
                    extra = await self._query(wf.id, "status")
                return p, extra

        rows = await asyncio.gather(*(one(wf) for wf in running))
        now = self.clock()
        steps: dict[tuple[str, ...], float] = {}
        awaiting: dict[tuple[str, ...], float] = {}
        oldest: dict[tuple[str, ...], float] = {}
        # every rule's real series exists at 0 (an alert rule tells "none late" from "not collected"); a drill's
        # only while one runs
        opened = {(r.id, metrics.drill_label(False)): 0.0 for r in alerts.RULES}
        late = {(r.id, metrics.drill_label(False)): 0.0 for r in alerts.RULES}
        stage, stages, last_ok, in_a_row = {}, {}, {}, {}
        for p, extra in rows:
            if p is None:
                continue
            drill = metrics.drill_label(p.drill)
            key = (p.kind, p.current_step or "-", drill)
            steps[key] = steps.get(key, 0) + 1
            if p.awaiting is not None:
                k = (p.kind, p.awaiting.min_role, drill)
                awaiting[k] = awaiting.get(k, 0) + 1
                waited = max(0.0, (now - p.awaiting.since).total_seconds())
                oldest[(p.kind, drill)] = max(oldest.get((p.kind, drill), 0.0), waited)
            if extra is None:
                continue
            if hasattr(extra, "rule"):
                r = (extra.rule, drill)
                if extra.status != "resolved":
                    opened[r] = opened.get(r, 0) + 1
                    if extra.sla.acked_at is None and (extra.sla.ack_breached or (
                            extra.sla.ack_due is not None and now > extra.sla.ack_due)):
                        late[r] = late.get(r, 0) + 1
            elif isinstance(extra, dict) and extra.get("phase"):
                ph = (str(extra["phase"]), drill)
                stage[ph] = float(extra.get("stage") or 0)
                stages[ph] = float(extra.get("stages") or 0)
                in_a_row[ph] = float(extra.get("failed_in_a_row") or 0)
                checks = extra.get("recent_checks") or []
                if checks:
                    last_ok[ph] = 1.0 if checks[-1].get("ok") else 0.0
        for name, gauge, vals in (("steps", metrics.WORKFLOWS_RUNNING, steps), ("awaiting", metrics.AWAITING_HUMAN, awaiting),
                                  ("oldest", metrics.AWAITING_HUMAN_OLDEST, oldest),
                                  ("open", metrics.INCIDENTS_OPEN, opened), ("late", metrics.INCIDENTS_UNACKED_PAST_SLA, late),
                                  ("stage", metrics.CANARY_STAGE, stage), ("stages", metrics.CANARY_STAGES, stages),
                                  ("last_ok", metrics.CANARY_LAST_CHECK_OK, last_ok),
                                  ("in_a_row", metrics.CANARY_FAILED_IN_A_ROW, in_a_row)):
            self._last[name] = _replace(gauge, vals, self._last.get(name, set()))


class TaskQueueMetrics:
    """Pollers per task queue and type, as Temporal saw them (DescribeTaskQueue), every `every_s`."""

    def __init__(self, client, namespace: str, task_queues: list[str], every_s: float = 10.0, recent_s: float = 60.0):
        self.client, self.namespace, self.task_queues = client, namespace, task_queues
        self.every_s, self.recent_s = every_s, recent_s

    async def collect(self) -> None:
        from temporalio.api.enums.v1 import TaskQueueType
        from temporalio.api.taskqueue.v1 import TaskQueue
        from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

        now = time.time()
        for tq in self.task_queues:
            for label, typ in (("workflow", TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW),
                               ("activity", TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)):
                resp = await self.client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
                    namespace=self.namespace, task_queue=TaskQueue(name=tq), task_queue_type=typ))
                n = sum(1 for p in resp.pollers
                        if p.HasField("last_access_time") and now - p.last_access_time.ToSeconds() <= self.recent_s)
                metrics.TASK_QUEUE_POLLERS.labels(tq, label).set(n)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.collect()
            except Exception as e:  # Temporal away: stale values; the heartbeat alerts see the rest
                log.warning("metrics: task queue collection failed (%s)", e)
            await wait_set(stop, self.every_s)
