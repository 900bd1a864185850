"""What the console shows, read from where it lives: the matrix from a watch, the audit chain and the
operators from etcd, workflows from Temporal (visibility, then each one's own query). Read-only.

Nothing here is cached past what is known to be unchanged: the audit chain is re-read when its head
moved; a workflow's view is its query's answer, corrected by what Temporal says (a cancelled workflow
never says `running`: rollbackctl/cli/workflow_cmds.truthful_progress).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from activities.audit_verify import Report, verify
from activities.switch_store import SwitchStore
from contracts.changes import Operator
from contracts.fleet import receipt_rows
from core.aio import within
from core.settings import TemporalSettings
from core.watcher import SwitchWatcher
from manual import switches

# The workflows people follow (the rest are the worker's plumbing: monitor, pager, relay)
DECISION_KINDS = ("RollbackWorkflow", "DegradationWorkflow", "CanaryWorkflow", "IncidentWorkflow",
                  "ChangeRequestWorkflow", "EmergencyWorkflow")
QUERY_TIMEOUT_S = 3.0
RECENT = timedelta(days=2)


@dataclass
class AuditView:
    records: list[dict[str, Any]]
    report: Report
    head_revision: int


@dataclass
class WorkflowRow:
    id: str
    kind: str
    status: str  # Temporal's, lower case
    started: datetime | None
    closed: datetime | None
    progress: Any = None  # contracts.progress.Progress (running: its query; closed: when asked for)
    extra: Any = None  # IncidentState / CanaryStatus
    note: str | None = None
    link: str = ""


@dataclass
class ConsoleData:
    store: SwitchStore
    client: Any  # temporalio.client.Client, or None when Temporal is not reachable yet
    watcher: SwitchWatcher
    temporal: TemporalSettings = field(default_factory=TemporalSettings)
    _audit: AuditView | None = None
    _audit_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    # -- matrix ------------------------------------------------------------------------------------
    def matrix_rows(self, audit: AuditView) -> list[dict[str, Any]]:
        by_change = {r.get("change_id"): r for r in audit.records if r.get("change_id")}
        last_by_switch: dict[str, dict[str, Any]] = {}
        for r in audit.records:
            for c in r.get("changes") or []:
                last_by_switch[c.get("switch")] = r
        rows = []
        for sw in switches.SWITCHES:
            rec = self.watcher.records.get(sw.name) if hasattr(self.watcher, "records") else None
            value = self.watcher.values.get(sw.name, sw.default) if rec is not None else None
            audit_rec = by_change.get((rec or {}).get("change_id")) or last_by_switch.get(sw.name)
            rows.append({
                "name": sw.name, "type": sw.type.value, "scope": sw.scope, "owner": sw.permission.value,
                "value": sw.render(value) if rec is not None else "(not set)",
                "default": sw.render(sw.default), "rollback": sw.render(sw.rollback_value),
                "rollback_text": sw.rollback_text, "latency": sw.latency.value,
                "off_default": rec is not None and sw.render(value) != sw.render(sw.default),
                "updated_by": (rec or {}).get("updated_by"), "updated_at": (rec or {}).get("updated_at"),
                "why": (audit_rec or {}).get("reason", ""), "audit_id": (audit_rec or {}).get("id"),
                "source": (audit_rec or {}).get("source"),
            })
        return rows

    async def consumers(self) -> dict[str, Any]:
        """Every live consumer's receipt against the last switch change; the stragglers first."""
        import time

        try:
            rows, matrix = await self.store.consumers()
        except Exception as e:  # etcd away: said on the page, not a 500
            return {"error": f"{type(e).__name__}: {str(e)[:120]}", "rows": [], "matrix": 0, "behind": 0}
        out = sorted(receipt_rows(rows, matrix, time.time()), key=lambda r: not r["behind"])  # stragglers first
        return {"rows": out, "matrix": matrix, "behind": sum(r["behind"] for r in out), "error": None}

    # -- audit -------------------------------------------------------------------------------------
    async def audit(self) -> AuditView:
        """The whole chain and its verification, re-read only when the head moved."""
        async with self._audit_lock:
            head = await self.store.etcd.get(self.store.head_key)
            rev = head.mod_revision if head is not None else 0
            if self._audit is not None and self._audit.head_revision == rev:
                return self._audit
            kvs, _ = await self.store.etcd.get_prefix(self.store.prefix)
            pre = f"{self.store.prefix}audit/"
            pairs = [(kv.key, json.loads(kv.value)) for kv in kvs if kv.key.startswith(pre)]
            head_kv = next((kv for kv in kvs if kv.key == self.store.head_key), None)
            report = verify(pairs, json.loads(head_kv.value) if head_kv else None)
            records = []
            for kv in kvs:
                if kv.key.startswith(pre):
                    records.append({**json.loads(kv.value), "revision": kv.mod_revision})
            self._audit = AuditView(records, report, head_kv.mod_revision if head_kv else 0)
            return self._audit

    async def operators(self) -> dict[str, Operator]:
        return {o.name: o for o in await self.store.operators()}

    # -- workflows ---------------------------------------------------------------------------------
    async def _query(self, wid: str, name: str, result_type):
        try:
            return await within(QUERY_TIMEOUT_S,
                                self.client.get_workflow_handle(wid).query(name, result_type=result_type))
        except Exception:
            return None

    async def workflows(self, kinds: tuple[str, ...] = DECISION_KINDS, running_only: bool = False,
                        with_extra: bool = False, limit: int = 100) -> list[WorkflowRow]:
        from contracts.incidents import IncidentState
        from contracts.progress import Progress
        from workflows.canary_models import CanaryStatus

        if self.client is None:
            raise ConnectionError("Temporal is not reachable (TEMPORAL_ADDRESS)")
        since = (datetime.now(timezone.utc) - RECENT).strftime("%Y-%m-%dT%H:%M:%SZ")
        types = " OR ".join(f"WorkflowType = '{k}'" for k in kinds)
        q = f"({types}) AND " + ("ExecutionStatus = 'Running'" if running_only
                                 else f"(ExecutionStatus = 'Running' OR StartTime > '{since}')")
        rows: list[WorkflowRow] = []
        async for wf in self.client.list_workflows(q, limit=limit):
            st = wf.status.name.lower() if wf.status else "running"
            rows.append(WorkflowRow(wf.id, wf.workflow_type, st, wf.start_time, wf.close_time,
                                    link=self.temporal.workflow_url(wf.id)))
        sem = asyncio.Semaphore(16)

        async def fill(r: WorkflowRow) -> None:
            if r.status != "running":
                return
            async with sem:
                r.progress = await self._query(r.id, "progress", Progress)
                if r.progress is None:
                    r.note = f"no answer to its progress query within {QUERY_TIMEOUT_S:g} s: is a worker running?"
                if with_extra and r.kind == "IncidentWorkflow":
                    r.extra = await self._query(r.id, "state", IncidentState)
                elif with_extra and r.kind == "CanaryWorkflow":
                    r.extra = await self._query(r.id, "status", CanaryStatus)

        await asyncio.gather(*(fill(r) for r in rows))
        return rows

    async def workflow(self, wid: str) -> WorkflowRow:
        """One workflow, running or closed, as truthfully as `rollbackctl status` shows it."""
        from contracts.incidents import IncidentState
        from rollbackctl.cli.workflow_cmds import truthful_progress
        from workflows.canary_models import CanaryStatus

        if self.client is None:
            raise ConnectionError("Temporal is not reachable (TEMPORAL_ADDRESS)")
        desc = await self.client.get_workflow_handle(wid).describe()
        p, temporal, note = await truthful_progress(self.client, wid)
        row = WorkflowRow(wid, desc.workflow_type, temporal, desc.start_time, desc.close_time, progress=p, note=note,
                          link=self.temporal.workflow_url(wid))
        if desc.workflow_type == "IncidentWorkflow":
            row.extra = await self._query(wid, "state", IncidentState)
        elif desc.workflow_type == "CanaryWorkflow":
            row.extra = await self._query(wid, "status", CanaryStatus)
        return row

    async def history(self, wid: str):
        return await self.client.get_workflow_handle(wid).fetch_history()
