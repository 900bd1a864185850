"""Models of the P0 incident workflow and the monitor (pure pydantic, no I/O)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from contracts.paging import AlertRecord, PagingFailure
from pydantic import BaseModel, Field

from contracts.progress import Decision

INCIDENT_PREFIX = "incident-"
MONITOR_WORKFLOW_ID = "monitor"


def incident_workflow_id(rule: str, symbol: str | None = None, namespace: str = "") -> str:
    """One workflow id per rule (and symbol): a rule that keeps firing finds its open incident.

    `namespace` separates monitors sharing one Temporal namespace (tests, benchmarks, a second exchange).
    """
    return INCIDENT_PREFIX + (f"{namespace}-" if namespace else "") + rule + (f"-{symbol}" if symbol else "")


class Timings(BaseModel):
    """The manual's SLA by default (manual/alerts.py); shorter only for demos and drills."""

    ack: timedelta | None = None
    action: timedelta | None = None
    page_after: timedelta | None = None
    clear_hold: timedelta | None = None  # auto-recovery hold (default: the rule's)
    manual_after: timedelta | None = None  # HL: "if >5min -> manual" (default: the rule's)
    # A drill's speed: the rollbacks and degradations the incident starts run with the manual's timings divided
    # by it (manual.drills.scaled_durations), as its own clocks are (None: the manual's).
    speed: float | None = Field(default=None, ge=1)


class ConditionReport(BaseModel):
    """From the monitor: the rule fires (again) or has cleared."""

    firing: bool
    at: datetime
    values: dict[str, Any] = {}
    detail: str = ""


class IncidentInput(BaseModel):
    rule: str
    symbol: str | None = None
    detected_at: datetime
    started_at: datetime  # when the condition began (HL: as reported by the trading core)
    values: dict[str, Any] = {}
    detail: str = ""
    timings: Timings = Timings()
    drill: bool = False


class ActionRecord(BaseModel):
    at: datetime
    phase: Literal["immediate", "reapply", "auto_recovery", "human_undo"]
    what: str  # "core pause_new_orders" | "switch hedge_max_leverage"
    status: Literal["ok", "failed", "skipped", "pending", "conflict"]
    detail: str = ""
    by: str  # "monitor" or the operator


class ChecklistItemState(BaseModel):
    id: str
    title: str
    done: bool = False
    by: str | None = None
    at: datetime | None = None
    note: str = ""


class Escalation(BaseModel):
    at: datetime
    level: int
    why: str


class SlaClocks(BaseModel):
    paged_at: datetime | None = None
    ack_due: datetime | None = None
    acked_at: datetime | None = None
    acked_by: str | None = None
    ack_breached: bool = False  # not acknowledged within the ack SLA (escalated)
    action_due: datetime | None = None
    action_at: datetime | None = None
    action_by: str | None = None
    action_what: str = ""
    action_breached_at: datetime | None = None
    level: int = 1  # escalation level paged
    escalations: list[Escalation] = []
    page_submitted_at: datetime | None = None  # handed to the pager (paged_at: once PagerDuty accepted it)
    seen_by: str | None = None  # acknowledged in PagerDuty by (not the signed ack: that is acked_by)
    seen_at: datetime | None = None


class IncidentState(BaseModel):
    workflow_id: str
    incident_id: str
    rule: str
    alert: str
    symbol: str | None = None
    status: Literal["open", "acknowledged", "resolved"] = "open"
    condition: Literal["firing", "clear"] = "firing"
    condition_since: datetime
    started_at: datetime
    detected_at: datetime | None = None  # the monitor's read that fired the rule
    last_values: dict[str, Any] = {}
    detail: str = ""
    actions: list[ActionRecord] = []
    checklist: list[ChecklistItemState] = []
    sla: SlaClocks = SlaClocks()
    recovery: str = ""  # auto: pending / done / withheld: why; human: who may undo
    level_choice: str = ""  # HL: "asked" / "level N by OP"
    children: list[str] = []
    resolved_by: str | None = None
    resolved_at: datetime | None = None
    refused: list[str] = []  # refused signals (Updates are refused by their validators)
    ready: bool = False  # paged, roster loaded, waiting for the acknowledgement: human input accepted
    drill: bool = False
    # Paging (through the pager): the alerts this incident opened and the pages that failed
    alerts: list[AlertRecord] = []
    paging_failures: list[PagingFailure] = []


class TickRequest(Decision):
    """A further step ticked off (or reopened); signed by the CLI like every decision (kind `tick`)."""

    item: str
    done: bool = True
    note: str = ""


class ResolveRequest(Decision):
    """Resolve the incident (kind `resolve`, signed); `reason` is Decision's."""

    undo: bool = False  # also undo the immediate actions (human-only rules; switches by compare-and-swap)
    force: bool = False  # super admin: resolve although the monitor still reports the condition


class UndoGuardInput(BaseModel):
    workflow_id: str  # the asking incident (excluded from "other incidents")
    actions: list[str]  # the pause actions it would undo


class UndoGuardResult(BaseModel):
    ok: bool
    reason: str = ""


class IncidentResult(BaseModel):
    incident_id: str
    rule: str
    symbol: str | None = None
    status: str
    resolved_by: str | None = None
    actions: list[ActionRecord] = []
    sla: SlaClocks = SlaClocks()


# -- the monitor ---------------------------------------------------------------------------------------
class KeyState(BaseModel):
    """Detection state of one rule (per symbol where it applies)."""

    rule: str
    symbol: str | None = None
    streak: int = 0  # consecutive reads in which the trigger held
    streak_since: datetime | None = None
    firing: bool = False
    since: datetime | None = None  # when the firing condition began
    delivered: bool | None = None  # the firing state last delivered to the incident workflow
    values: dict[str, Any] = {}


class AutoModeState(BaseModel):
    over: int = 0  # consecutive reads over a threshold
    under: int = 0  # consecutive reads under both
    last: str = ""  # the last thing the auto mode switch did or withheld, for the status


class MonitorState(BaseModel):
    """What the monitor carries across polls, heartbeats and continue-as-new."""

    keys: dict[str, KeyState] = {}
    last_ok_at: datetime | None = None
    unreachable_since: datetime | None = None
    last_error: str = ""
    polls: int = 0
    failed_polls: int = 0
    auto: AutoModeState = AutoModeState()
    # The end watch: workflows ended from outside (terminated, timed out) seen up to this close time,
    # and the runs already paged (the last ones; a window overlaps the next)
    ends_until: datetime | None = None
    ends_paged: list[str] = []


class MonitorInput(BaseModel):
    namespace: str = ""  # incident ids: incident-<namespace>-<rule>[-<symbol>]
    interval_s: float = Field(default=1.0, gt=0, le=60)
    health_timeout_s: float | None = None  # default: 80% of the interval
    incident_task_queue: str = "rollbackctl"
    activity_task_queue: str | None = None  # where the monitor activity runs (default: the workflow's)
    heartbeat_timeout_s: float = 5.0
    run_for_s: float = 6 * 3600  # the activity hands over to a fresh run (continue-as-new) this often
    end_watch_s: float = Field(default=10.0, gt=0)  # how often to look for workflows ended from outside
    timings: Timings = Timings()
    state: MonitorState = MonitorState()
