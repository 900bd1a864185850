"""Paging contracts: what a workflow asks to tell people, and what it hears back.

Every notice a workflow sends goes through one outbox, the pager workflow (workflows/pager.py,
id `pager-<task queue>`), which owns what PagerDuty and Slack impose on a sender:

- **PagerDuty Events API v2** (developer.pagerduty.com, docs/events-API-v2/): alerts are keyed by
  (routing_key, dedup_key). A trigger on an *open* alert with the same dedup_key is appended to it and
  notifies nobody; while the alert is *acknowledged* nothing notifies at all; acknowledge and resolve
  act only with the routing_key that opened it; after a resolve the same dedup_key opens a new alert.
  So every event meant to wake someone opens its own alert (a dedup key of its own), and an update that
  must not wake anyone reuses the alert it belongs to. About 120 events a minute per routing key,
  counted over the 60 s looking back; beyond that 429 and the event is *not ingested*.
- **Slack incoming webhooks**: about one message a second per webhook (429 with Retry-After), `&`, `<`
  and `>` escaped, Block Kit limits; 400/403/404/410 are permanent.

The pager answers each notice with Deliveries (signal `paging_outcome` to the owner), forwards what
PagerDuty says about an alert (v3 webhooks: `paging_event`), and keeps the budget and the correlation
of storms (notices of one `group` and `kind` at one level within a short window go out as one alert
naming every member).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, Field

Severity = Literal["critical", "error", "warning", "info"]
EventAction = Literal["trigger", "acknowledge", "resolve"]

PAGER_WORKFLOW = "PagerWorkflow"  # the workflow type, for clients that must not import workflows
SUBMIT_SIGNAL = "submit"
ALERT_EVENT_SIGNAL = "alert_event"
OUTCOME_SIGNAL = "paging_outcome"  # pager -> owner: list[Delivery]
EVENT_SIGNAL = "paging_event"  # pager -> owner: AlertEvent
TAKE_ALERTS_SIGNAL = "take_alerts"  # owner -> the workflow that continues it: list[AlertRecord]

# PagerDuty's documented limits (Events API v2) and Slack's (incoming webhooks).
ROUTING_KEY_LENGTH = 32
SUMMARY_MAX = 1024
DEDUP_KEY_MAX = 255
PAGERDUTY_EVENTS_PER_MIN = 120
SLACK_MESSAGES_PER_S = 1.0
SLACK_SECTION_MAX = 3000
SLACK_FIELD_MAX = 2000
SLACK_FIELDS_MAX = 10
SLACK_BLOCKS_MAX = 50
SLACK_TEXT_MAX = 40_000


def pager_workflow_id(task_queue: str) -> str:
    """One pager per task queue (a test's own task queue gets its own pager)."""
    return f"pager-{task_queue}"


def owner_of(dedup_key: str) -> str | None:
    """The workflow a dedup key belongs to: every owner's keys start `<workflow id>/` (ids have no '/')."""
    head, sep, _ = dedup_key.partition("/")
    return head if sep and head != "pager" else None


class Channel(str, Enum):
    PAGERDUTY = "pagerduty"
    SLACK = "slack"


class Notice(BaseModel):
    """One message for people: Slack at `level` always; a PagerDuty event too when `page`."""

    id: str = Field(min_length=1, max_length=300)  # unique per notice: "<owner>#<n>"
    owner: str = ""  # the workflow the outcome is reported to ("" : nobody)
    text: str = Field(min_length=1)
    page: bool = False
    event_action: EventAction = "trigger"
    severity: Severity = "warning"
    level: int = Field(default=1, ge=1)
    # trigger: the alert it opens (a new key) or updates (an open alert's key); acknowledge/resolve: the
    # alert acted on. Required whenever `page`.
    dedup_key: str | None = Field(default=None, max_length=DEDUP_KEY_MAX)
    kind: str = "notice"  # the family of the message ("opened", "repage", "action_sla", ...): correlation key
    group: str | None = None  # correlation: notices of one group+kind+level within a window go out as one
    member: str | None = None  # what this notice adds to its group (a symbol)
    urgent: bool = False  # jumps the queue (critical triggers)
    chat: bool = True  # also to Slack at `level` (an acknowledge/resolve of several alerts says it once)
    drill: bool = False
    fields: dict[str, str] = {}  # Slack fields (workflow, incident, ...)
    custom_details: dict[str, Any] = {}
    submitted_at: datetime | None = None


class Delivery(BaseModel):
    """What happened to (a channel of) a notice."""

    notice_id: str
    channel: Channel
    level: int
    event_action: EventAction = "trigger"
    ok: bool
    at: datetime
    dedup_key: str | None = None  # PagerDuty: the alert it went to (a storm's shared alert for a grouped notice)
    http_status: int | None = None
    error: str = ""
    permanent: bool = False  # refused for good (not a retryable outage)
    rerouted: list[str] = []  # where it went instead: "slack L1", "pagerduty L2"
    grouped_with: int = 0  # other members named in the same alert


class AlertEvent(BaseModel):
    """What PagerDuty says happened to an alert (a v3 webhook), or what the pager learnt of it."""

    event_id: str = Field(min_length=1, max_length=200)
    event_type: Literal["acknowledged", "unacknowledged", "resolved", "reopened"]
    dedup_key: str = Field(min_length=1, max_length=DEDUP_KEY_MAX)
    by: str = ""  # PagerDuty's agent (the user's name)
    at: datetime
    pd_incident: str = ""  # PagerDuty's incident id or URL


class AlertStatus(str, Enum):
    SUBMITTED = "submitted"  # handed to the pager, not yet accepted by PagerDuty
    OPEN = "open"  # PagerDuty accepted the trigger
    ACKNOWLEDGED = "acknowledged"  # acknowledged (by this workflow's signed ack, or in PagerDuty: seen_by)
    RESOLVED = "resolved"
    FAILED = "failed"  # PagerDuty refused it for good (rerouted: see PagingFailure)
    HANDED_ON = "handed_on"  # given to the workflow that continues this one (handed_to)
    LEFT_OPEN = "left_open"  # the workflow ended needing a human: open until someone resolves it in PagerDuty


OPEN_STATUSES = (AlertStatus.SUBMITTED, AlertStatus.OPEN, AlertStatus.ACKNOWLEDGED)


class AlertRecord(BaseModel):
    """One alert an owner opened, as its ledger (query `progress`, `rollbackctl status`) shows it."""

    dedup_key: str
    level: int
    kind: str
    summary: str
    opened_at: datetime
    status: AlertStatus = AlertStatus.SUBMITTED
    delivered_at: datetime | None = None
    acked_at: datetime | None = None
    resolved_at: datetime | None = None
    seen_by: str | None = None  # acknowledged in PagerDuty by (seen, never the signed decision)
    seen_at: datetime | None = None
    handed_to: str | None = None
    why: str = ""
    group: str | None = None
    notice_id: str = ""


class PagingFailure(BaseModel):
    at: datetime
    notice_id: str
    channel: Channel
    level: int
    why: str
    rerouted: list[str] = []


class PagerLimits(BaseModel):
    """The budgets the pager keeps (the worker's settings; PagerDuty's and Slack's documented limits)."""

    pagerduty_per_min: int = Field(default=PAGERDUTY_EVENTS_PER_MIN, ge=1)
    slack_per_s: float = Field(default=SLACK_MESSAGES_PER_S, gt=0)
    levels: int = Field(default=3, ge=1)
    group_hold: timedelta = timedelta(seconds=2)  # a storm's first page waits this long for its siblings
    group_update_every: timedelta = timedelta(seconds=10)  # then one update naming the newcomers, at most this often
    confirm_within: timedelta = timedelta(seconds=90)  # an owner sends it directly if the pager said nothing by then


class QueueView(BaseModel):
    """What the pager holds back (query `queue`; `rollbackctl incidents` prints it)."""

    waiting: dict[str, int] = {}  # "pagerduty L1" -> sends waiting for budget
    in_flight: int = 0
    oldest_waiting_s: float = 0.0
    groups: list[dict[str, Any]] = []  # open storms: group, kind, level, members, named so far
    sent: dict[str, int] = {}
    failed: dict[str, int] = {}
    rerouted: int = 0
    throttled: int = 0  # sends held back for budget (cumulative)
    unknown_events: int = 0  # PagerDuty events for alerts nobody here opened
    events_forwarded: int = 0  # PagerDuty events passed on to the workflows that opened the alerts
    runs: int = 0


class SubmitResult(BaseModel):
    accepted: int
    pager: str  # the pager's workflow id


# -- the pager's own state (carried across continue-as-new) -------------------------------------------------
class Send(BaseModel):
    """One request to PagerDuty or Slack that the pager will make (a storm's send delivers many notices)."""

    id: str
    channel: Channel
    level: int
    event_action: EventAction = "trigger"
    text: str
    severity: Severity = "warning"
    dedup_key: str | None = None
    fields: dict[str, str] = {}
    custom_details: dict[str, Any] = {}
    links: list[dict[str, str]] = []
    notice_ids: list[str] = []
    owners: list[str] = []  # parallel to notice_ids
    urgent: bool = False
    queued_at: datetime
    throttled: bool = False  # held back for budget at least once
    reroute_of: str | None = None
    group_key: str | None = None
    page: bool = False  # the notice it delivers also pages (a chat-only notice that fails is rerouted to PagerDuty)
    drill: bool = False  # a game day's: to the drill routing key / webhook when configured
    attempts: int = 0  # tries so far (the pager retries under the budget: a retry takes a slot like any send)
    not_before: datetime | None = None  # retry after (Retry-After, or the backoff)
    last_error: str = ""


class GroupMember(BaseModel):
    notice_id: str
    owner: str
    label: str
    text: str
    page: bool
    named_pd: bool = False
    named_slack: bool = False
    resolved: bool = False


class Group(BaseModel):
    """A storm: notices of one group and kind at one level, sent as one PagerDuty alert and Slack digests."""

    key: str
    group: str
    kind: str
    level: int
    drill: bool = False
    dedup_key: str
    opened_at: datetime
    flush_at: datetime
    members: list[GroupMember] = []
    page: bool = False
    severity: Severity = "warning"
    status: Literal["collecting", "open", "acknowledged", "resolved"] = "collecting"


class AlertIndex(BaseModel):
    dedup_key: str
    level: int
    owners: list[str]
    status: Literal["open", "acknowledged", "resolved"] = "open"
    opened_at: datetime
    group_key: str | None = None


class PagerState(BaseModel):
    queue: list[Send] = []
    sent_at: dict[str, list[datetime]] = {}  # "pagerduty L1" -> when each send of the window started
    groups: dict[str, Group] = {}
    alerts: dict[str, AlertIndex] = {}  # dedup_key -> who opened it (PagerDuty webhooks are routed by it)
    seen_notices: list[str] = []  # notice ids taken (a retried submit is not sent twice)
    seen_events: list[str] = []  # PagerDuty event ids forwarded (webhooks are delivered at least once)
    stats: dict[str, int] = {}
    group_seq: int = 0
    runs: int = 0


class PagerInput(BaseModel):
    limits: PagerLimits = PagerLimits()
    carry: PagerState | None = None
