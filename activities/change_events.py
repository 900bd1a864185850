"""PagerDuty Change Events for every audited switch change (`paging.relay_changes`).

PagerDuty shows recent Change Events on an incident's page ("what changed": docs/events-API-v2/
03-Change-Events.md); a change event notifies nobody. The relay follows the audit trail in etcd, so it
sees every writer's changes (workflows, direct changes, the P0 monitor, init), and posts one change
event per audit record that changed switches: who, which switches old -> new, why, which workflow.

One long-running activity (ChangeEventsWorkflow, workflows/change_events.py) polls the trail every
`poll_s`, heartbeats the sequence number it has posted up to, and resumes after a crash from its last
heartbeat: every record is posted at least once (a crash between a post and its heartbeat posts that
record again; PagerDuty has no dedup key for change events). A post refused for good (400) is logged,
counted and skipped; a 429 or 5xx is retried with backoff (the record waits, nothing is skipped).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from contracts.changes import AuditRecord
from activities.paging import BAD_REQUEST, ChangeEventInput, PagingActivities
from activities.switch_store import SwitchStore


class RelayInput(BaseModel):
    after_seq: int | None = None  # None: start at the trail's head (what was written before is not replayed)
    poll_s: float = Field(default=1.0, gt=0, le=60)
    run_for_s: float = Field(default=6 * 3600, gt=0)  # then the workflow continues as new with the cursor
    links_base: str = ""  # the Temporal Web UI base, for a link to the workflow behind a change


class RelayState(BaseModel):
    after_seq: int
    posted: int = 0
    skipped: int = 0
    last_error: str = ""


def change_event_for(rec: AuditRecord, links_base: str = "") -> ChangeEventInput:
    """The Change Event of one audited change set (pure)."""
    changes = ", ".join(f"{c.switch} {c.old!r} -> {c.new!r}" for c in rec.changes)
    glass = " [BREAK-GLASS]" if getattr(rec, "break_glass", None) else ""
    drill = "[DRILL] " if rec.drill else ""
    summary = f"{drill}{rec.actor} ({rec.role}): {changes}{glass} — {rec.reason}"
    details: dict[str, Any] = {
        "actor": rec.actor, "role": rec.role, "authority": rec.authority, "approved_by": rec.approved_by,
        "source": rec.source, "action": rec.action, "audit_id": rec.id, "hash": rec.hash,
        "changes": [c.model_dump() for c in rec.changes], "reason": rec.reason, "drill": rec.drill,
    }
    links = []
    if links_base and rec.source and rec.source != "cli":
        links.append({"href": f"{links_base.rstrip('/')}/{rec.source}", "text": f"workflow {rec.source}"})
    return ChangeEventInput(summary=summary[:1024], source=f"rollbackctl:{rec.source}", timestamp=rec.at,
                            custom_details=details, links=links)


class ChangeEventRelay:
    def __init__(self, store: SwitchStore, paging: PagingActivities):
        self.store = store
        self.paging = paging

    async def _post(self, ev: ChangeEventInput) -> str | None:
        """Post until accepted; None, or why it was refused for good."""
        delay = 1.0
        while True:
            try:
                await self.paging.change_event(ev)
                return None
            except ApplicationError as e:
                if e.type == BAD_REQUEST:
                    return e.message
                activity.heartbeat()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    @activity.defn(name="paging.relay_changes")
    async def relay(self, inp: RelayInput) -> RelayState:
        info = activity.info()
        st: RelayState | None = None
        if info.heartbeat_details:
            st = RelayState.model_validate(info.heartbeat_details[0])
        if st is None:
            st = RelayState(after_seq=inp.after_seq if inp.after_seq is not None else await self.store.head_seq())
        deadline = time.monotonic() + inp.run_for_s
        while time.monotonic() < deadline:
            for rec in await self.store.audit_after(st.after_seq, limit=100):
                if rec.changes:
                    why = await self._post(change_event_for(rec, inp.links_base))
                    if why is None:
                        st.posted += 1
                    else:
                        st.skipped += 1
                        st.last_error = why[:300]
                        activity.logger.warning("change event for audit %s refused: %s", rec.id, why)
                st.after_seq = int(rec.id)
                activity.heartbeat(st.model_dump())
            activity.heartbeat(st.model_dump())
            await asyncio.sleep(inp.poll_s)
        return st
