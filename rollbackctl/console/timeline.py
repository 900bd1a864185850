"""An incident's or a rollback's timeline and postmortem draft, built from three records nobody edits:
the workflow's Temporal history (start, every decision accepted or refused, close), its own ledger
(steps, health checks, alerts and what PagerDuty said of them, an incident's actions and SLA clocks)
and the audit chain (every change set, with its etcd revision and hash).

Exported as JSON and Markdown. The JSON carries each audit record whole, so anyone can re-derive its
hash (SHA-256 of the canonical JSON without `hash`, activities/switch_store.record_hash) and check it
links to the one before (`prev_hash`) and to the chain `rollbackctl audit verify` checks.
Pure: the caller reads the three sources (rollbackctl/console/data.py); nothing here does I/O.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel

FORMAT = "rollbackctl/timeline/v1"


class Event(BaseModel):
    at: datetime
    kind: str  # started | step | decision | refused | alert | paged | acknowledged | seen | action | change | check | escalation | closed | resolved
    what: str
    by: str | None = None
    audit_id: str | None = None
    audit_hash: str | None = None
    revision: int | None = None


class Timeline(BaseModel):
    format: str = FORMAT
    workflow_id: str
    kind: str
    status: str
    title: str
    started_at: datetime | None = None
    closed_at: datetime | None = None
    events: list[Event] = []
    audit_records: list[dict[str, Any]] = []  # whole, as stored (re-derive each hash)
    audit_head: str | None = None  # "seq:hash" of the chain when exported
    audit_ok: bool | None = None
    temporal_link: str = ""


def _dt(v: Any) -> datetime | None:
    if isinstance(v, datetime):
        return v
    if isinstance(v, str) and v:
        try:
            return datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def history_events(history: Any) -> list[Event]:
    """What a Temporal history says happened: the start, each update (a human decision) accepted with who
    made it, each update refused by its validator, each signal, and the close."""
    from temporalio.api.enums.v1 import EventType as E

    out: list[Event] = []
    for ev in history.events:
        at = ev.event_time.ToDatetime().replace(tzinfo=_utc())
        t = ev.event_type
        if t == E.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            a = ev.workflow_execution_started_event_attributes
            who = _payload_field(a.input.payloads, ("requested_by", "actor", "by"))
            out.append(Event(at=at, kind="started", what=f"{a.workflow_type.name} started", by=who))
        elif t == E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            req = ev.workflow_execution_update_accepted_event_attributes.accepted_request
            name = req.input.name
            actor = _payload_field(req.input.args.payloads, ("actor",))
            reason = _payload_field(req.input.args.payloads, ("reason",)) or ""
            out.append(Event(at=at, kind="decision", by=actor,
                             what=f"{name} accepted" + (f": {reason}" if reason else "")))
        elif t == E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            a = ev.workflow_execution_signaled_event_attributes
            if a.signal_name in ("condition", "alert_event", "paging_outcome"):  # reports: in the ledger below
                continue
            out.append(Event(at=at, kind="signal", what=f"signal {a.signal_name}",
                             by=_payload_field(a.input.payloads, ("actor",))))
        elif t in (E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, E.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
                   E.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED, E.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
                   E.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT, E.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW):
            out.append(Event(at=at, kind="closed", what=E.Name(t).removeprefix("EVENT_TYPE_WORKFLOW_EXECUTION_").lower()
                             .replace("_", " ")))
    return out


def _utc():
    from datetime import timezone

    return timezone.utc


def _payload_field(payloads: Any, names: tuple[str, ...]) -> str | None:
    for p in payloads:
        try:
            obj = json.loads(p.data)
        except (ValueError, TypeError):
            continue
        if isinstance(obj, dict):
            for n in names:
                if isinstance(obj.get(n), str) and obj[n]:
                    return obj[n]
    return None


def ledger_events(progress: Any, state: Any) -> list[Event]:
    """What the workflow's own ledger adds: steps, checks, refusals, alerts and, for an incident, its SLA
    clocks and actions."""
    out: list[Event] = []
    if progress is not None:
        for h in progress.history:
            if h.ended_at is not None and h.outcome is not None:
                out.append(Event(at=h.ended_at, kind="step", what=f"{h.name}: {h.outcome}"
                                 + (f" ({h.detail})" if h.detail else "")))
        for d in progress.decisions:
            if not d.accepted:
                out.append(Event(at=d.at, kind="refused", by=d.actor, what=f"{d.kind} refused: {d.detail}"))
        for c in progress.checks:
            if not c.ok:
                out.append(Event(at=c.at, kind="check", what="health check failed: " + "; ".join(c.breaches or [c.error or ""])))
        out += _alert_events(progress.alerts)
    if state is not None:
        sla = state.sla
        if state.detected_at:
            out.append(Event(at=state.detected_at, kind="detected", by="monitor",
                             what=f"{state.rule} detected: {state.detail or state.alert}"))
        if sla.paged_at:
            out.append(Event(at=sla.paged_at, kind="paged", what=f"paged escalation level 1 (ack due "
                             f"{sla.ack_due:%H:%M:%S} UTC)" if sla.ack_due else "paged"))
        if sla.acked_at:
            out.append(Event(at=sla.acked_at, kind="acknowledged", by=sla.acked_by, what="acknowledged (signed)"))
        for esc in sla.escalations:
            out.append(Event(at=esc.at, kind="escalation", what=f"escalated to level {esc.level}: {esc.why}"))
        for a in state.actions:
            out.append(Event(at=a.at, kind="action", by=a.by, what=f"{a.phase}: {a.what} {a.status}"
                             + (f" ({a.detail})" if a.detail else "")))
        for it in state.checklist:
            if it.done and it.at:
                out.append(Event(at=it.at, kind="step", by=it.by, what=f"checklist: {it.title}"
                                 + (f" ({it.note})" if it.note else "")))
        if state.resolved_at:
            out.append(Event(at=state.resolved_at, kind="resolved", by=state.resolved_by, what="resolved"))
        out += _alert_events(state.alerts)
    return out


def _alert_events(alerts: list[Any]) -> list[Event]:
    out = []
    for a in alerts:
        out.append(Event(at=a.opened_at, kind="alert", what=f"page opened (level {a.level}, {a.kind}): {a.summary}"))
        if a.delivered_at:
            out.append(Event(at=a.delivered_at, kind="paged", what=f"PagerDuty accepted the level {a.level} page"))
        if a.seen_at:
            out.append(Event(at=a.seen_at, kind="seen", by=a.seen_by,
                             what="acknowledged in PagerDuty (seen: re-paging stops; not a decision)"))
        if a.resolved_at:
            out.append(Event(at=a.resolved_at, kind="alert", what=f"page resolved (level {a.level})"))
    return out


def audit_events(records: list[dict[str, Any]]) -> list[Event]:
    out = []
    for r in records:
        at = _dt(r.get("at"))
        if at is None:
            continue
        ch = ", ".join(f"{c.get('switch')} {json.dumps(c.get('old'))} -> {json.dumps(c.get('new'))}"
                       for c in r.get("changes") or [])
        out.append(Event(at=at, kind="change", by=r.get("actor"), audit_id=r.get("id"), audit_hash=r.get("hash"),
                         revision=r.get("revision"),
                         what=f"{r.get('action')}: {ch or r.get('reason', '')}"
                              + (f" (approved by {r['approved_by']})" if r.get("approved_by") else "")))
    return out


def records_of(records: list[dict[str, Any]], workflow_ids: set[str]) -> list[dict[str, Any]]:
    """The audit records a workflow (or its children) wrote: `source` is the workflow id."""
    return [r for r in records if r.get("source") in workflow_ids]


def build(*, workflow_id: str, kind: str, status: str, title: str, started_at: datetime | None,
          closed_at: datetime | None, history: list[Event], progress: Any, state: Any,
          records: list[dict[str, Any]], head: str | None, audit_ok: bool | None, link: str) -> Timeline:
    events = sorted([*history, *ledger_events(progress, state), *audit_events(records)], key=lambda e: e.at)
    return Timeline(workflow_id=workflow_id, kind=kind, status=status, title=title, started_at=started_at,
                    closed_at=closed_at, events=events, audit_records=records, audit_head=head, audit_ok=audit_ok,
                    temporal_link=link)


def markdown(t: Timeline) -> str:
    """A postmortem draft: the facts filled in, the judgement left for people."""
    dur = ""
    if t.started_at and t.closed_at:
        dur = f" ({int((t.closed_at - t.started_at).total_seconds() // 60)} min)"
    lines = [
        f"# Postmortem draft: {t.title}", "",
        f"- Workflow: `{t.workflow_id}` ({t.kind}), status **{t.status}**",
        f"- Started: {t.started_at:%Y-%m-%d %H:%M:%S} UTC" if t.started_at else "- Started: unknown",
        (f"- Closed: {t.closed_at:%Y-%m-%d %H:%M:%S} UTC{dur}" if t.closed_at else "- Closed: still running"),
        f"- Temporal: {t.temporal_link}",
        f"- Audit chain at export: head `{t.audit_head}`, verify {'OK' if t.audit_ok else 'BROKEN' if t.audit_ok is False else 'not run'}",
        "", "## Summary", "", "_What happened, in two sentences (to be written)._", "",
        "## Impact", "", "_Who and what was affected, for how long (to be written)._", "",
        "## Timeline (UTC)", "", "| time | what | by | audit |", "|---|---|---|---|",
    ]
    for e in t.events:
        audit = f"#{e.audit_id} rev {e.revision} `{(e.audit_hash or '')[:16]}`" if e.audit_id else ""
        what = e.what.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {e.at:%H:%M:%S} | **{e.kind}** {what} | {e.by or ''} | {audit} |")
    lines += ["", "## Changes made (audit records)", ""]
    if not t.audit_records:
        lines.append("None: no switch was changed by this workflow.")
    for r in t.audit_records:
        lines.append(f"- record {r.get('id')} at {r.get('at')} by {r.get('actor')} ({r.get('role')}), "
                     f"{r.get('action')}, etcd revision {r.get('revision')}: {r.get('reason', '')}")
        for c in r.get("changes") or []:
            lines.append(f"  - `{c.get('switch')}`: {json.dumps(c.get('old'))} -> {json.dumps(c.get('new'))}")
        lines.append(f"  - hash `{r.get('hash')}`, prev `{r.get('prev_hash')}`"
                     + (f", {len(r.get('signatures') or [])} signature(s)" if r.get("signatures") else ""))
    lines += ["", "## Root cause", "", "_To be written._", "", "## What went well / what did not", "",
              "_To be written._", "", "## Follow-ups", "", "- [ ] _owner, ticket_", "",
              "---", "Check the record: the JSON export carries each audit record whole; `rollbackctl audit verify "
              f"--expect-head {t.audit_head}` re-checks the chain they belong to.", ""]
    return "\n".join(lines)
