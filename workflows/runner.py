"""The one interpreter of manual/steps.py, used inside workflows (rollback, degradation, canary).

It decides per step kind; activities touch the world. Progress (current step, history, what is
awaited, checklist results, recent checks) lives here and is exposed by the workflows' queries.
Human decisions arrive through the workflows' Updates: `validate` (pure, synchronous, no state
change) refuses the wrong person or the wrong moment; `accept` delivers the decision to the step
that waits for it. With signing on (the worker's setting, carried by the roster) a decision must
also carry a valid signature of its actor's current key, bound to this workflow, the step awaited
and the decision kind, with a nonce this workflow has not seen (core/identity.py). The
roster (roles and keys) is refreshed every ROSTER_REFRESH while a step waits for a human, so a
rotated or removed key stops working for approvals within that interval. Steps under the
two-person rule (`AwaitConfirmation.approvals == 2`) wait for a second, different operator.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from pydantic import BaseModel

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError

with workflow.unsafe.imports_passed_through():
    from contracts import errors
    from contracts.errors import Refusal, invalid, not_permitted
    from contracts.changes import ChangeSetRequest, ChangeSetResult, Snapshot, SwitchChange
    from activities.switch_activities import Roster, SwitchActivities
    from contracts.changes import SeenRecord
    from contracts.trading_core import (CoreActionInput, CoreActionResult, ExposureReport, HealthSnapshot,
                                        ReadHealthInput, WaitAppliedInput, exposure_mismatches)
    from activities.temporal_ops import TemporalOps
    from activities.trading_core import TradingCoreActivities
    from activities.pager_client import PagerClient
    from activities.paging import ChatInput, PageInput, PagingActivities
    from contracts.paging import (
        EVENT_SIGNAL,
        OPEN_STATUSES,
        OUTCOME_SIGNAL,
        TAKE_ALERTS_SIGNAL,
        AlertEvent,
        AlertRecord,
        AlertStatus,
        Channel,
        Delivery,
        Notice,
        PagerLimits,
        PagingFailure,
        owner_of,
    )
    from manual import approvals, escalation, switches
    from contracts.roles import Role
    from core import identity
    from contracts.changes import BreakGlass
    from manual.steps import (
        ApplySwitches,
        AwaitConfirmation,
        Checklist,
        CoreActions,
        HealthCheck,
        Notify,
        Observe,
    )
    from contracts.progress import (
        Awaiting,
        ChecklistResult,
        CheckResult,
        Decision,
        DecisionAck,
        DecisionRecord,
        Progress,
        StepRecord,
    )

SWITCH_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    maximum_interval=timedelta(seconds=5),
    non_retryable_error_types=errors.SWITCH_NON_RETRYABLE,
)
CORE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    maximum_interval=timedelta(seconds=5),
    non_retryable_error_types=["BadRequest", "SchemaViolation", "Maintenance", "Unauthorized"],
)
NOTIFY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30),
                           maximum_attempts=20, non_retryable_error_types=["BadRequest", "NotConfigured"])
SUBMIT_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=500), maximum_interval=timedelta(seconds=10),
                           maximum_attempts=10)
# Patch "pager-outbox": notices go through the pager workflow (budgets, storms, rerouting) and every alert
# a workflow opens is in its ledger, resolved or handed on when it ends.
PAGER_OUTBOX = "pager-outbox"
# patch: restore change sets carry only the switches they change; `fix` needs the role the store will demand
RESTORE_ONLY_CHANGES = "restore-only-changes"
# patch: a workflow cancelled in Temporal says what stays and pages it before it ends CANCELED
CANCEL_HANDLED = "cancel-handled"
CLOSE_WAIT = timedelta(seconds=30)  # at its end a workflow waits this long to hear its alerts resolved
# The longest a trading-core action is retried under one Idempotency-Key; the core must keep a
# performed action's answer at least this long (docs/trading-core-api.md; the simulator: 24 h).
CORE_ACTION_HORIZON = timedelta(hours=1)
MAX_CHECKS_KEPT = 20
# While a step waits for a human (signing on), the roster and its keys are re-read at least this often:
# a rotated or removed key stops working for approvals within this interval.
ROSTER_REFRESH = timedelta(seconds=30)

# Which Update kinds answer which awaited step.
ANSWERS: dict[str, tuple[str, ...]] = {
    "confirm": ("confirm",),
    "proceed_or_cancel": ("proceed", "cancel"),
    "fix": ("fix",),
    "escalate": ("escalate", "confirm"),
    "level_choice": ("escalate",),
    "promote": ("promote",),
}


def root_cause(e: BaseException) -> BaseException:
    """The ApplicationError behind an activity failure (local activities raise it unwrapped)."""
    while isinstance(e, ActivityError) and e.cause is not None:
        e = e.cause
    return e


class StepFailed(Exception):
    """A step could not complete; the workflow ends with this message. `kind`: the error kind when
    one is known (CONFLICT: someone changed a switch in between; a caller may read again)."""

    def __init__(self, message: str, kind: "errors.ErrorKind | None" = None):
        super().__init__(message)
        self.kind = kind

    @property
    def conflict(self) -> bool:
        return self.kind is errors.ErrorKind.CONFLICT


@dataclass(frozen=True)
class ActionOutcome:
    """What one trading-core action of a CoreActions step came to (str(): the line shown and logged)."""

    action: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def __str__(self) -> str:
        return self.action if self.ok else f"{self.action} FAILED ({self.error})"


class StartRefused(StepFailed):
    """The requester's signed start was refused (signing on): nothing was changed."""


def metric_value(health: dict[str, Any], metric: str) -> Any:
    v = health.get(metric)
    if isinstance(v, dict):  # per-symbol map: the worst (largest) value
        return max(v.values(), default=0.0)
    return v


def check_one(c: HealthCheck, health: dict[str, Any], values: dict[str, Any]) -> str | None:
    """Why this check fails on this snapshot, or None (pure)."""
    v = metric_value(health, c.metric)
    t = c.threshold
    if c.threshold_switch:
        sv = values.get(c.threshold_switch)
        t = c.threshold if sv is None else (sv if c.threshold_factor == 1 else sv * c.threshold_factor)
    if v is None:
        return f"{c.metric} missing"
    ok = {
        "<=": lambda: v <= t, "<": lambda: v < t, ">=": lambda: v >= t, ">": lambda: v > t, "==": lambda: v == t,
    }[c.op]()
    return None if ok else f"{c.metric}={v} (needs {c.op} {t})"


def evaluate(checks: tuple[HealthCheck, ...], health: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """Breached checks, as readable lines (pure)."""
    return [why for c in checks if (why := check_one(c, health, values)) is not None]


class ObserveClock(BaseModel):
    """Observation time that can pause, stretch, be cut short and survive continue-as-new (canary stages).

    The workflow that owns it changes it from its handlers and calls `touch()`; `run_observe` wakes,
    and returns `stop` when set. Paused time does not count; checks go on while paused.
    """

    duration: timedelta  # to observe in all, extensions included
    observed: timedelta = timedelta(0)  # observed so far (paused time excluded)
    ticked_at: datetime | None = None  # when `observed` was last brought up to date
    next_check_at: datetime | None = None
    streak: int = 0  # failed checks in a row (any check)
    streaks: dict[str, int] = {}  # failures in a row of each check that has its own `consecutive`
    checks: int = 0
    paused: bool = False
    armed: bool = True  # False: breaches are recorded but do not end the observation
    stop: str | None = None  # set by a human decision ("promoted", "aborted"): returned by run_observe
    version: int = 0  # bumped by touch(): wakes the observation
    max_history: int | None = None  # return "continue_as_new" after a check once the run's history is this long

    def touch(self) -> None:
        self.version += 1

    def tick(self, now: datetime) -> None:
        if self.ticked_at is not None and not self.paused:
            self.observed += now - self.ticked_at
        self.ticked_at = now

    def left(self, now: datetime | None = None) -> timedelta:
        seen = self.observed
        if now is not None and self.ticked_at is not None and not self.paused:
            seen += now - self.ticked_at
        return max(self.duration - seen, timedelta(0))


class Runner:
    def __init__(self, workflow_id: str, kind: str, *, requested_by: str, drill: bool, incident: str,
                 key: str | None = None):
        self.progress = Progress(workflow_id=workflow_id, kind=kind)
        # Change ids, idempotency keys and page dedup keys derive from this (default: the workflow id;
        # an incident workflow whose id repeats per rule uses its per-occurrence incident id).
        self.key_base = key or workflow_id
        self.actor_kind = "operator"  # "service": change sets go out under the P0 monitor's identity
        self.on_repage: Callable[[int], None] | None = None  # called with the new page level on a re-page
        self.requested_by = requested_by
        self.drill = drill
        self.incident = incident
        self.roster: dict[str, str] = {}
        self.snapshot: Snapshot | None = None
        self._decision: tuple[str, Decision] | None = None
        self._escalate_open = False
        self._escalation: Decision | None = None
        self._runs: dict[str, int] = {}
        self._background: list[asyncio.Task] = []
        self.extra_answers: dict[str, Callable[[str, Decision], str | None]] = {}
        # Patch "flip-first" (workflows set it from workflow.patched): the roster loads beside the
        # snapshot and canaries are paused beside the change, so nothing delays a critical flip.
        self.flip_first = False
        # Identity (from the roster activity: the worker's setting and the operators' public keys)
        self.signing = False
        self.keys: dict[str, str] = {}
        self.retired: dict[str, list[str]] = {}
        self.roster_at: datetime | None = None
        self.used_nonces: list[str] = []  # of every signed request this workflow accepted
        self.proofs: list[identity.Proof] = []  # the signed requests behind its change sets
        self._start_checked = False
        # Paging through the pager workflow (patch PAGER_OUTBOX, set by each workflow at the start of its run)
        self.outbox = False
        self.limits = PagerLimits()
        self._pending: dict[str, str] = {}  # acknowledge/resolve notice id -> the alert it acts on
        self._acting: set[str] = set()  # "<action>:<dedup key>" submitted (never twice)
        self._notices = 0
        self.on_delivery: Callable[[Delivery], None] | None = None  # e.g. an incident's paged_at
        self.current_alert: str | None = None  # the latest page: a decision awaited now was asked for by it
        self.group: str | None = None  # the storm this workflow's pages belong to (per-symbol P0 incidents)

    # -- helpers ----------------------------------------------------------------------------
    @property
    def wid(self) -> str:
        return self.progress.workflow_id

    def _key(self, step: str) -> str:
        """A stable id for this occurrence of a step: change ids and idempotency keys derive from it."""
        n = self._runs.get(step, 0)
        return f"{self.key_base}:{step}" + (f":{n}" if n else "")

    def log(self, msg: str, *args: Any) -> None:
        workflow.logger.info(msg, *args)

    def _begin(self, name: str, kind: str) -> StepRecord:
        rec = StepRecord(index=len(self.progress.history), name=name, kind=kind, started_at=workflow.now())
        self.progress.history.append(rec)
        self.progress.current_step = name
        return rec

    def _end(self, rec: StepRecord, outcome: str, detail: str = "") -> None:
        rec.ended_at, rec.outcome, rec.detail = workflow.now(), outcome, detail
        self._runs[rec.name] = self._runs.get(rec.name, 0) + 1

    def role_of(self, actor: str) -> Role | None:
        r = self.roster.get(actor)
        return Role(r) if r else None

    # -- activities ------------------------------------------------------------------------------
    async def load_roster(self, local: bool = True) -> None:
        """`local` on the critical path (start); a refresh while waiting is a regular activity: it holds
        no workflow task open (and time-skipping tests skip through it)."""
        run = workflow.execute_local_activity_method if local else workflow.execute_activity_method
        r: Roster = await run(SwitchActivities.roster, start_to_close_timeout=timedelta(seconds=10),
                              retry_policy=SWITCH_RETRY)
        self.roster = r.roles
        self.keys, self.retired, self.signing = r.keys, r.retired, r.signing
        self.roster_at = self.progress.roster_at = workflow.now()

    def two_person(self, values: dict[str, Any]) -> int:
        """How many different operators must approve a step leading to `values` (two-person rule)."""
        if not self.signing or not approvals.two_person_changes(values):
            return 1
        return 2 if workflow.patched("two-person") else 1

    def accept_start(self, action: str, proof: identity.Proof | None, values: dict[str, Any]) -> str | None:
        """Check the requester's signed start (once; signing on). A refusal, or None (then the proof
        goes with this workflow's change sets). A start by a parent workflow carries the parent's
        authority: its human decision was checked there (a client cannot set a parent)."""
        if not self.signing or self._start_checked:
            return None
        self._start_checked = True
        if workflow.info().parent is not None:
            return None
        try:
            identity.check(proof, actor=self.requested_by, public_key=self.keys.get(self.requested_by),
                           retired=self.retired.get(self.requested_by, ()), workflow_id=self.wid, action=action,
                           target=self.wid, values=values)
        except identity.Refused as e:
            hint = " (start it with the rollbackctl CLI, which signs)" if e.kind is identity.Refusal.UNSIGNED else ""
            return f"start of {self.wid} by {self.requested_by} {e}{hint}"
        self.used_nonces.append(proof.request.nonce)
        self.proofs.append(proof)
        return None

    async def page_everyone(self, text: str) -> None:
        """A break-glass: every escalation level is paged, under its own dedup key (never merged)."""
        await asyncio.gather(*(self.notify(text, page=True, severity="critical", level=lv.level, dedup="break-glass",
                                           kind="break_glass")
                               for lv in escalation.LEVELS))

    async def take_snapshot(self) -> Snapshot:
        snap: Snapshot = await workflow.execute_local_activity_method(
            SwitchActivities.snapshot, start_to_close_timeout=timedelta(seconds=10), retry_policy=SWITCH_RETRY)
        return snap

    async def read_health(self, timeout: timedelta, attempts: int = 2, local: bool = False) -> dict[str, Any]:
        """The core's health snapshot (GET /v1/health, validated by the activity), as the metrics the steps'
        checks read by name (manual/steps.HealthCheck.metric)."""
        inp = ReadHealthInput(timeout_s=timeout.total_seconds())
        policy = RetryPolicy(maximum_attempts=attempts, initial_interval=timedelta(milliseconds=100))
        if local:
            snap: HealthSnapshot = await workflow.execute_local_activity_method(
                TradingCoreActivities.read_health, inp, start_to_close_timeout=timeout + timedelta(milliseconds=200),
                retry_policy=policy)
        else:
            snap = await workflow.execute_activity_method(
                TradingCoreActivities.read_health, inp, start_to_close_timeout=timeout + timedelta(seconds=1),
                retry_policy=policy)
        return snap.model_dump(mode="json")

    async def core_action(self, step: str, action: str, body: dict[str, Any]) -> CoreActionResult:
        # activities.trading_core.CoreActionInput. A regular activity even on a critical path (a P0
        # immediate action): as a local activity, a core that is down holds the workflow task open
        # (no timer, no page meanwhile), and a failed local attempt followed by other commands did
        # not replay (sdk-core 1.35: nondeterminism on the next worker).
        inp = CoreActionInput(action=action, body=body, idempotency_key=f"{self._key(step)}:{action}")
        return await workflow.execute_activity_method(
            TradingCoreActivities.action, inp, start_to_close_timeout=timedelta(seconds=10),
            schedule_to_close_timeout=CORE_ACTION_HORIZON, retry_policy=CORE_RETRY)

    async def notify(self, text: str, *, page: bool, severity: str = "warning", event_action: str = "trigger",
                     wait: bool = True, level: int | None = None, dedup: str | None = None, kind: str = "notice",
                     update: bool = False, group: str | None = None, member: str | None = None) -> None:
        """Chat always; a PagerDuty event too when `page`. With wait=False it runs beside the caller.

        `level`: the escalation level to address (default the current one); an acknowledge or resolve
        acts on every open alert (of that level, when given). Through the pager (patch PAGER_OUTBOX) a
        trigger page opens an alert of its own, so it notifies someone, unless `update`: then it is
        appended to the latest open alert and wakes nobody (a status update). `kind`, `group`, `member`:
        what the notice is and which storm it belongs to (workflows/pager.py).
        """
        if not self.outbox:
            await self._notify_direct(text, page=page, severity=severity, event_action=event_action, wait=wait,
                                      level=level, dedup=dedup)
            return
        if wait:
            await self._submit(text, page, severity, event_action, level, kind, update, group, member)
        else:
            self._background.append(asyncio.create_task(
                self._submit(text, page, severity, event_action, level, kind, update, group, member)))

    # -- paging through the pager ----------------------------------------------------------------
    def _notice_id(self) -> str:
        """Unique across runs (continue-as-new) and the same on replay: the workflow's seeded uuid4 alone
        (never the run id or workflow id, which a replay of an exported history need not reproduce)."""
        self._notices += 1
        return f"n-{workflow.uuid4().hex}"

    def alert_key(self, level: int, topic: str | None = None) -> str:
        """`<workflow id>/[<key base>:]<topic>:L<level>`: the owner first (PagerDuty webhooks are routed
        by it), a topic of its own per alert unless one is named."""
        topic = topic or f"p{len(self.progress.alerts) + 1}"
        base = "" if self.key_base == self.wid else f"{self.key_base}:"
        return f"{self.wid}/{base}{topic}:L{level}"[:255]

    def open_alerts(self, level: int | None = None) -> list[AlertRecord]:
        return [a for a in self.progress.alerts if a.status in OPEN_STATUSES and (level is None or a.level == level)]

    def _alert(self, dedup_key: str | None) -> AlertRecord | None:
        """The ledger's alert for this dedup key (its owner prefix aside: a replay may run under another id)."""
        if dedup_key is None:
            return None
        exact = next((a for a in reversed(self.progress.alerts) if a.dedup_key == dedup_key), None)
        if exact is not None or dedup_key.startswith("pager/") or "/" not in dedup_key:
            return exact
        rest = dedup_key.split("/", 1)[1]
        return next((a for a in reversed(self.progress.alerts)
                     if "/" in a.dedup_key and a.dedup_key.split("/", 1)[1] == rest), None)

    async def _submit(self, text: str, page: bool, severity: str, event_action: str, level: int | None, kind: str,
                      update: bool, group: str | None, member: str | None) -> None:
        prefix = "[DRILL] " if self.drill else ""
        lvl = level or self.progress.page_level
        now = workflow.now()
        common = dict(owner=self.wid, severity=severity, drill=self.drill, kind=kind,
                      fields={"workflow": self.wid, "incident": self.incident},
                      custom_details={"workflow_id": self.wid, "incident": self.incident, "drill": self.drill})
        notices: list[Notice] = []
        if event_action == "trigger":
            key = None
            target = next(iter(reversed(self.open_alerts())), None) if update and page else None
            if target is not None:
                key, lvl = target.dedup_key, target.level
            elif page:
                key = self.alert_key(lvl)
            n = Notice(id=self._notice_id(), text=f"{prefix}{text}", page=page, event_action="trigger", level=lvl,
                       dedup_key=key, group=group, member=member, urgent=page and severity == "critical",
                       submitted_at=now, **common)
            if page and target is None:
                self.progress.alerts.append(AlertRecord(dedup_key=key, level=lvl, kind=kind, summary=text[:240],
                                                        opened_at=now, notice_id=n.id, group=group))
                self.current_alert = key
                if self.progress.awaiting is not None:
                    self.progress.awaiting.alerts.append(key)
            notices.append(n)
        else:
            # each alert once: not one an earlier acknowledge/resolve of this workflow is still on its way to
            targets = [a for a in self.open_alerts(level) if f"{event_action}:{a.dedup_key}" not in self._acting
                       and not (event_action == "acknowledge" and a.status is AlertStatus.ACKNOWLEDGED)]
            self._acting.update(f"{event_action}:{a.dedup_key}" for a in targets)
            for i, a in enumerate(targets):
                n = Notice(id=self._notice_id(), text=f"{prefix}{text}", page=True, event_action=event_action,
                           level=a.level, dedup_key=a.dedup_key, chat=i == 0 and a.level == lvl, submitted_at=now,
                           **common)
                self._pending[n.id] = a.dedup_key
                notices.append(n)
            if not any(n.chat for n in notices):
                notices.append(Notice(id=self._notice_id(), text=f"{prefix}{text}", level=lvl, submitted_at=now,
                                      **common))
        try:
            await workflow.execute_activity_method(
                PagerClient.submit, notices, start_to_close_timeout=timedelta(seconds=10),
                schedule_to_close_timeout=timedelta(minutes=2), retry_policy=SUBMIT_RETRY)
        except FailureError as e:
            why = f"the pager could not be reached ({root_cause(e)})"
            await self._send_directly(notices, why)
            return
        triggers = [n for n in notices if n.page and n.event_action == "trigger"]
        if triggers:
            self._background.append(asyncio.create_task(self._watch(triggers)))

    async def _watch(self, notices: list[Notice]) -> None:
        """Every wait has an exit: a page the pager has not confirmed within `confirm_within` is sent
        directly (and the failure recorded), so a broken pager can delay a page, never swallow it."""
        def confirmed() -> bool:
            return all((a := self._by_notice(n.id)) is None or a.status is not AlertStatus.SUBMITTED for n in notices)

        try:
            await workflow.wait_condition(confirmed, timeout=self.limits.confirm_within)
        except asyncio.TimeoutError:
            late = [n for n in notices if (a := self._by_notice(n.id)) is not None and a.status is AlertStatus.SUBMITTED]
            await self._send_directly(late, f"the pager did not confirm within {self.limits.confirm_within}")

    def _by_notice(self, notice_id: str) -> AlertRecord | None:
        return next((a for a in self.progress.alerts if a.notice_id == notice_id), None)

    async def _send_directly(self, notices: list[Notice], why: str) -> None:
        for n in notices:
            self._fail(Channel.PAGERDUTY if n.page else Channel.SLACK, n.level, n.id, why, ["sent directly"])
            calls = []
            if n.chat:
                calls.append(workflow.execute_activity_method(
                    PagingActivities.chat, ChatInput(text=n.text, escalation_level=n.level, fields=n.fields),
                    start_to_close_timeout=timedelta(seconds=10), retry_policy=NOTIFY_RETRY))
            if n.page and n.dedup_key:
                calls.append(workflow.execute_activity_method(
                    PagingActivities.page, PageInput(event_action=n.event_action, dedup_key=n.dedup_key,
                                                     summary=n.text[:1000], severity=n.severity,
                                                     escalation_level=n.level, custom_details=n.custom_details),
                    start_to_close_timeout=timedelta(seconds=10), retry_policy=NOTIFY_RETRY))
            results = await asyncio.gather(*calls, return_exceptions=True)
            page_ok = n.page and n.dedup_key and not isinstance(results[-1], BaseException)
            if n.page and n.dedup_key:
                self.on_deliveries([Delivery(notice_id=n.id, channel=Channel.PAGERDUTY, level=n.level,
                                             event_action=n.event_action, ok=bool(page_ok), at=workflow.now(),
                                             dedup_key=n.dedup_key,
                                             error="" if page_ok else str(root_cause(results[-1])))])

    def _fail(self, channel: Channel, level: int, notice_id: str, why: str, rerouted: list[str]) -> None:
        self.progress.paging_failures.append(PagingFailure(at=workflow.now(), notice_id=notice_id, channel=channel,
                                                           level=level, why=why[:500], rerouted=rerouted))
        del self.progress.paging_failures[:-MAX_CHECKS_KEPT]
        self.log("paging failed (%s level %d): %s; rerouted to %s", channel.value, level, why,
                 ", ".join(rerouted) or "nothing")

    def on_deliveries(self, deliveries: list[Delivery]) -> None:
        """The pager's outcome for notices of this workflow (signal `paging_outcome`)."""
        for d in deliveries:
            if d.channel is Channel.PAGERDUTY:
                if d.event_action == "trigger":
                    a = self._by_notice(d.notice_id)
                    if a is not None:
                        if d.ok:
                            if a.status is AlertStatus.SUBMITTED:
                                a.status = AlertStatus.OPEN
                            a.delivered_at = a.delivered_at or d.at
                            if d.dedup_key and d.dedup_key.startswith("pager/") and d.dedup_key != a.dedup_key:
                                # a storm's shared alert: this notice went out as part of it
                                aw = self.progress.awaiting
                                if aw is not None and a.dedup_key in aw.alerts:
                                    aw.alerts.append(d.dedup_key)
                                if self.current_alert == a.dedup_key:
                                    self.current_alert = d.dedup_key
                                a.dedup_key = d.dedup_key
                        elif a.status is AlertStatus.SUBMITTED:
                            a.status, a.why = AlertStatus.FAILED, d.error[:300]
                else:
                    key = self._pending.pop(d.notice_id, None)
                    a = self._alert(key)
                    if a is not None and d.ok:
                        if d.event_action == "resolve":
                            a.status, a.resolved_at = AlertStatus.RESOLVED, d.at
                        elif a.status in (AlertStatus.OPEN, AlertStatus.SUBMITTED):
                            a.status, a.acked_at = AlertStatus.ACKNOWLEDGED, d.at
            if not d.ok:
                self._fail(d.channel, d.level, d.notice_id, d.error or "failed", d.rerouted)
            if self.on_delivery is not None:
                self.on_delivery(d)

    async def on_alert_event(self, ev: AlertEvent) -> None:
        """PagerDuty says a person acted on one of this workflow's alerts (v3 webhook, via the pager).
        An acknowledgement is recorded as *seen* (who, when; in the audit trail too): it stops re-paging
        for the decision that alert asked for, and is never the signed decision itself."""
        a = self._alert(ev.dedup_key)
        if a is None:
            self.log("PagerDuty %s for %s: not an alert of this workflow; ignored", ev.event_type, ev.dedup_key)
            return
        aw = self.progress.awaiting
        if ev.event_type == "acknowledged":
            a.seen_by, a.seen_at = ev.by or "someone in PagerDuty", ev.at
            if a.status in (AlertStatus.OPEN, AlertStatus.SUBMITTED):
                a.status, a.acked_at = AlertStatus.ACKNOWLEDGED, ev.at
            if aw is not None and a.dedup_key in aw.alerts:
                aw.seen_by, aw.seen_at = a.seen_by, ev.at
        elif ev.event_type in ("unacknowledged", "reopened"):
            a.status = AlertStatus.OPEN
            if aw is not None and a.dedup_key in aw.alerts:
                aw.seen_by, aw.seen_at = None, None  # its acknowledgement timed out: re-paging resumes
        elif ev.event_type == "resolved":
            a.status, a.resolved_at = AlertStatus.RESOLVED, ev.at
        self.progress.decisions.append(DecisionRecord(
            at=workflow.now(), kind=f"pagerduty.{ev.event_type}", actor=ev.by or "pagerduty", accepted=False,
            detail=f"seen in PagerDuty ({a.dedup_key}); not a signed decision"))
        try:
            await workflow.execute_activity_method(
                SwitchActivities.record_seen,
                SeenRecord(event_id=ev.event_id, event=ev.event_type, by=ev.by, at=ev.at.isoformat(),
                           dedup_key=ev.dedup_key, source=self.wid, incident=self.incident,
                           awaiting=aw.step if aw is not None else None),
                start_to_close_timeout=timedelta(seconds=10), retry_policy=SWITCH_RETRY)
        except FailureError as e:
            self.log("could not record PagerDuty %s in the audit trail: %s", ev.event_type, root_cause(e))

    def take_alerts(self, recs: list[AlertRecord]) -> None:
        """Alerts handed on by the workflow this one continues: resolved when this one ends."""
        known = {a.dedup_key for a in self.progress.alerts}
        for r in recs:
            if r.dedup_key not in known:
                self.progress.alerts.append(r.model_copy(update={"handed_to": None,
                                                                 "why": f"handed on by {owner_of(r.dedup_key)}"}))

    async def hand_on(self, to_workflow: str) -> bool:
        """Give this workflow's open alerts to `to_workflow` (which continues its work); False if it has ended."""
        recs = self.open_alerts()
        if not recs:
            return False
        try:
            await workflow.get_external_workflow_handle(to_workflow).signal(TAKE_ALERTS_SIGNAL, recs)
        except (FailureError, ApplicationError):
            return False
        for a in recs:
            a.status, a.handed_to, a.why = AlertStatus.HANDED_ON, to_workflow, f"handed on to {to_workflow}"
        return True

    async def cancelled_from_outside(self, held: dict[str, Any], core_in_force: list[str]) -> None:
        """Temporal's "Request Cancellation" (the Web UI's button) ended this workflow between its own steps:
        nothing is restored (that needs a fix and its approvals), so say what stays, page it, and leave that
        page open for a human (patch CANCEL_HANDLED; before, the workflow just vanished, silent)."""
        step = self.progress.current_step or "-"
        stays = ", ".join(f"{k}={switches.get(k).render(v)}" for k, v in held.items()) or "no switch changed by it"
        self.progress.detail = (f"cancelled in Temporal at step {step}: nothing restored; the switches stay as it left "
                                f"them ({stays})" + (f"; trading-core controls still in force: {', '.join(core_in_force)}"
                                                     if core_in_force else "")
                                + ". Decide by hand: `rollbackctl switch list`, `rollbackctl audit`.")
        self.progress.status = self.progress.result = "cancelled"
        self.progress.awaiting = None
        self.progress.current_step = None
        await self.notify(f"{self.wid} CANCELLED from Temporal: {self.progress.detail}", page=True, severity="critical",
                          kind="cancelled")
        await self.drain()
        await self.close_alerts(left_open=self.progress.detail)
        await self.drain()

    async def close_alerts(self, left_open: str | None = None) -> None:
        """At the end: resolve every alert still open, but for `left_open` (why a human must still act:
        the latest alert stays open in PagerDuty, said in the ledger). Waits briefly to hear them resolved."""
        if not self.outbox:
            return
        opened = self.open_alerts()
        if left_open and opened:
            keep = max(opened, key=lambda a: a.opened_at)
            keep.status, keep.why = AlertStatus.LEFT_OPEN, left_open[:300]
        if not self.open_alerts():
            return
        await self.notify(f"{self.wid} ended: {self.progress.result or self.progress.status}"
                          + (f" ({left_open})" if left_open else ""), page=True, severity="info",
                          event_action="resolve", kind="closed")
        try:
            await workflow.wait_condition(lambda: not [a for a in self.open_alerts()], timeout=CLOSE_WAIT)
        except asyncio.TimeoutError:
            for a in self.open_alerts():
                a.why = f"resolve sent; PagerDuty had not confirmed it within {CLOSE_WAIT}"

    async def _notify_direct(self, text: str, *, page: bool, severity: str = "warning", event_action: str = "trigger",
                             wait: bool = True, level: int | None = None, dedup: str | None = None) -> None:
        """Before patch PAGER_OUTBOX: chat and page straight from the workflow (recorded histories)."""
        prefix = "[DRILL] " if self.drill else ""
        level = level or self.progress.page_level

        async def send() -> None:
            try:
                # By name, results read as dicts: histories recorded before the pager outbox hold the
                # answers of older paging activities, which today's ChatResult / PageResult do not decode
                # (a method reference would impose its return type; the SDK ignores result_type then).
                calls = [workflow.execute_activity(
                    "paging.chat", ChatInput(text=f"{prefix}{text}", escalation_level=level,
                                                     fields={"workflow": self.wid, "incident": self.incident}),
                    result_type=dict, start_to_close_timeout=timedelta(seconds=10), retry_policy=NOTIFY_RETRY)]
                if page:
                    calls.append(workflow.execute_activity(
                        "paging.page", PageInput(
                            event_action=event_action,
                            dedup_key=f"{self.key_base}:L{level}" + (f":{dedup}" if dedup else ""),
                            summary=f"{prefix}{text}"[:1000], severity=severity, source="rollbackctl",
                            escalation_level=level,
                            custom_details={"workflow_id": self.wid, "incident": self.incident, "drill": self.drill}),
                        result_type=dict, start_to_close_timeout=timedelta(seconds=10), retry_policy=NOTIFY_RETRY))
                await asyncio.gather(*calls)
            except FailureError as e:
                self.log("notification failed: %s", e)

        if wait:
            await send()
        else:
            self._background.append(asyncio.create_task(send()))

    async def drain(self) -> None:
        """Let background notifications finish before the workflow returns."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
            self._background.clear()

    async def apply(self, step: ApplySwitches, *, expected: dict[str, Any] | None = None,
                    values: dict[str, Any] | None = None, approved_by: str | None = None,
                    actor: str | None = None, action: str | None = None,
                    break_glass: BreakGlass | None = None) -> ChangeSetResult:
        changes = values if values is not None else step.changes
        req = ChangeSetRequest(
            change_id=self._key(step.name),
            actor=actor or self.requested_by,
            actor_kind="operator" if actor else self.actor_kind,
            action=action or ("rollback.apply" if step.authority == "preapproved" else "plan.apply"),
            changes=[SwitchChange(switch=k, value=v) for k, v in changes.items()],
            reason=("[DRILL] " if self.drill else "") + step.reason,
            source=self.wid,
            authority=step.authority,
            approved_by=approved_by,
            expected=expected,
            drill=self.drill,
            proofs=list(self.proofs),
            # The nonces of these signed requests belong to this workflow's chain of runs: the first
            # run's id is stable across continue-as-new (a canary's later runs carry its start's proofs).
            nonce_owner=f"{self.wid}/{workflow.info().first_execution_run_id}",
            break_glass=break_glass,
        )
        res: ChangeSetResult = await workflow.execute_local_activity_method(
            SwitchActivities.apply, req, start_to_close_timeout=timedelta(seconds=15),
            schedule_to_close_timeout=timedelta(minutes=30), retry_policy=SWITCH_RETRY)
        if res.replayed:
            self._unsee_own_write(res)
        self.progress.applied.append(res)
        return res

    def _unsee_own_write(self, res: ChangeSetResult) -> None:
        """A worker that died after this change set committed and before its result was recorded
        leaves a retried workflow task that took the snapshot again, after the write: the snapshot
        shows this workflow's own values and a restore would find nothing to restore. The audit
        record's `old` values (returned on replay) are the real ones before the change: put them back.
        Called only in that case, so the patch marker is written only in histories that need it.
        """
        snap = self.snapshot
        if snap is None:
            return
        own = [c for c in res.changes
               if (st := snap.switches.get(c.switch)) is not None and st.change_id == res.change_id]
        if not own or not workflow.patched("snapshot-before-own-write"):
            return
        for c in own:
            snap.switches[c.switch] = snap.switches[c.switch].model_copy(
                update={"value": c.old, "change_id": None, "updated_by": None, "updated_at": None})
            self.progress.snapshot[c.switch] = c.old
        self.log("snapshot taken after this workflow's own change set %s (worker crash): pre-change values "
                 "restored from its audit record for %s", res.change_id, ", ".join(c.switch for c in own))

    async def verify_applied(self, revision: int, timeout: timedelta) -> str:
        try:
            await workflow.execute_activity_method(
                TradingCoreActivities.wait_applied, WaitAppliedInput(revision=revision, timeout_s=timeout.total_seconds()),
                start_to_close_timeout=timeout + timedelta(seconds=2),
                retry_policy=RetryPolicy(maximum_attempts=3, non_retryable_error_types=["Maintenance"]),
            )
            return f"trading core applied revision {revision}"
        except FailureError as e:
            cause = root_cause(e)
            if isinstance(cause, ApplicationError) and cause.type == "Maintenance":
                return f"revision {revision} written; the trading core is in maintenance mode (503)"
            return f"revision {revision} written; trading core did not confirm it applied: {cause}"

    # -- steps ----------------------------------------------------------------------------------
    async def run_checklist(self, step: Checklist, *, required: Role, changes: dict[str, Any]) -> str:
        """Returns "ok", "role_needs_approval" or "hl_down"."""
        rec = self._begin(step.name, step.kind)
        ids = [i.id for i in step.items]

        def result(item_id: str, status: str, detail: str = "") -> None:
            item = next(i for i in step.items if i.id == item_id)
            self.progress.checklist.append(ChecklistResult(id=item_id, title=item.title, status=status, detail=detail,
                                                           at=workflow.now()))

        # In parallel: snapshot (etcd) and, when forcing HL_MODE, the HL health read (tight timeout).
        snap_task = asyncio.create_task(self.take_snapshot())
        roster_task = asyncio.create_task(self.load_roster()) if not self.roster and self.flip_first else None
        health_task = (asyncio.create_task(self.read_health(step.health_timeout, attempts=1, local=True))
                       if "hl_health" in ids or "exposure" in ids else None)
        if "notify" in ids:
            await self.notify(f"{self.progress.kind} {self.wid} started by {self.requested_by}: "
                              + ", ".join(f"{k}={switches.get(k).render(v)}" for k, v in changes.items()),
                              page=True, severity="critical", wait=False, kind="opened")
            result("notify", "ok", "sent in parallel; does not delay the change")
        self.snapshot = await snap_task
        self.progress.snapshot_revision = self.snapshot.revision
        self.progress.snapshot = self.snapshot.values()
        result("snapshot", "ok", f"{len(self.snapshot.switches)} switches at etcd revision {self.snapshot.revision}")

        if roster_task is not None:
            await roster_task
        outcome = "ok"
        role = self.role_of(self.requested_by)
        if role is None:
            result("requester_role", "failed", f"{self.requested_by} is not an operator")
            raise StepFailed(f"{self.requested_by} is not an operator")
        if role.at_least(required):
            result("requester_role", "ok", f"{self.requested_by} is {role.value} (needs {required.value})")
        elif role.at_least(Role.ON_CALL):
            result("requester_role", "failed", f"{self.requested_by} is {role.value}; this level needs {required.value}")
            outcome = "role_needs_approval"
        else:
            result("requester_role", "failed", f"{self.requested_by} is {role.value}; rollbacks need on_call")
            raise StepFailed(f"{self.requested_by} is {role.value}: rollbacks need on_call or above")

        health: dict[str, Any] | None = None
        if health_task is not None:
            try:
                health = await health_task
            except FailureError as e:
                health = None
                err = f"trading core did not answer within {step.health_timeout.total_seconds() * 1000:.0f} ms ({root_cause(e)})"
                if "hl_health" in ids:
                    result("hl_health", "skipped", err + "; going on: HL_MODE is the safe side when the core is degraded")
                if "exposure" in ids:
                    result("exposure", "skipped", err)
        if health is not None:
            if "hl_health" in ids:
                if health.get("hl_connected", True):
                    result("hl_health", "ok", f"HL connected, latency {health.get('hl_latency_ms')} ms")
                else:
                    result("hl_health", "failed",
                           f"HL disconnected for {health.get('hl_disconnected_for_s')} s: forcing HL_MODE would strand orders")
                    outcome = "hl_down" if outcome == "ok" else outcome
            if "exposure" in ids:
                exp = health.get("internal_net_exposure_usd") or {}
                result("exposure", "ok", "open internal exposure: " + (", ".join(f"{k} ${v:,.0f}" for k, v in exp.items()) or "none"))
        if "pause_canaries" in ids and not self.flip_first:  # histories from before patch "flip-first"
            paused = await self.pause_canaries()
            result("pause_canaries", "ok" if paused is not None else "skipped", paused or "no canary registry")
        elif "pause_canaries" in ids:
            # Beside the change, not before it: a canary promotes on a schedule of hours, the flip is now.
            async def pause() -> None:
                paused = await self.pause_canaries()
                result("pause_canaries", "ok" if paused is not None else "failed", paused or "could not signal canaries")

            self._background.append(asyncio.create_task(pause()))
        self._end(rec, outcome)
        return outcome

    async def pause_canaries(self) -> str | None:
        """Signal running canaries to pause (nothing promotes over a rollback)."""
        try:
            r = await workflow.execute_activity_method(
                TemporalOps.pause_canaries, self.wid, start_to_close_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(maximum_attempts=3))
            return r
        except FailureError as e:
            self.log("pausing canaries failed: %s", e)
            return None

    async def run_apply(self, step: ApplySwitches, **kw: Any) -> ChangeSetResult:
        rec = self._begin(step.name, step.kind)
        try:
            res = await self.apply(step, **kw)
        except FailureError as e:
            cause = root_cause(e)
            msg = str(cause.message if isinstance(cause, ApplicationError) else e)
            self._end(rec, "failed", msg)
            if isinstance(cause, ApplicationError) and cause.type == errors.CONFLICT:
                raise StepFailed(f"conflict: {msg}", errors.ErrorKind.CONFLICT) from e
            raise StepFailed(msg) from e
        detail = f"audit {res.audit_id}, etcd revision {res.revision}" + (" (already applied)" if res.replayed else "")
        if step.verify_applied:
            detail += "; " + await self.verify_applied(res.revision, step.verify_timeout)
        self._end(rec, "ok", detail)
        return res

    async def run_core_actions(self, step: CoreActions) -> list[ActionOutcome]:
        """Each action once (idempotency key per step occurrence); returns what happened to each."""
        rec = self._begin(step.name, step.kind)
        done = []
        for action, body in step.actions:
            try:
                await self.core_action(step.name, action, body)
                done.append(ActionOutcome(action))
            except FailureError as e:
                if isinstance(root_cause(e), CancelledError):  # the step itself was cancelled: stop here
                    self._end(rec, "cancelled", ", ".join(map(str, done)))
                    raise
                done.append(ActionOutcome(action, str(root_cause(e))))
        self._end(rec, "ok", ", ".join(map(str, done)))
        return done

    async def run_notify(self, step: Notify) -> None:
        rec = self._begin(step.name, step.kind)
        await self.notify(step.text, page=step.page, severity=step.severity, event_action=step.event_action)
        self._end(rec, "ok")

    async def read_probes(self, step: Observe) -> dict[str, Any]:
        """Extra metrics a step asks for (Observe.probes), merged into the health snapshot."""
        out: dict[str, Any] = {}
        if "exposure_precision" in step.probes:
            report: ExposureReport = await workflow.execute_activity_method(
                TradingCoreActivities.read_exposure, start_to_close_timeout=timedelta(seconds=5),
                retry_policy=RetryPolicy(maximum_attempts=2, initial_interval=timedelta(milliseconds=100)))
            bad = exposure_mismatches(report)
            out["exposure_mismatches"] = len(bad)
            out["exposure_mismatch_detail"] = bad
        return out

    async def _check(self, step: Observe, values: dict[str, Any] | None) -> tuple[CheckResult, list[str | None]]:
        """One health read (+ probes) judged against the step's checks: the result and each check's verdict."""
        try:
            read = self.read_health(timedelta(seconds=2), local=step.local_reads)
            if step.probes:
                health, extra = await asyncio.gather(read, self.read_probes(step))
                health = {**health, **extra}
            else:
                health = await read
            verdicts = [check_one(c, health, values or self.progress.snapshot) for c in step.checks]
            breaches = [v for v in verdicts if v is not None]
            breaches += [f"  {line}" for line in health.get("exposure_mismatch_detail") or []]
            return CheckResult(at=workflow.now(), ok=not breaches, breaches=breaches), verdicts
        except FailureError as e:
            return (CheckResult(at=workflow.now(), ok=False, breaches=["health unreadable"], error=str(root_cause(e))),
                    [None] * len(step.checks))

    async def run_observe(self, step: Observe, values: dict[str, Any] | None = None,
                          clock: ObserveClock | None = None) -> str:
        """Returns "ok", "breach" or "escalated" (a human escalated during a monitoring observation).

        With a `clock` (kept by the caller across continue-as-new) the observation pauses, stretches and
        resumes with it, and may also return the clock's `stop` or "continue_as_new" (see ObserveClock).
        """
        rec = self._begin(step.name, step.kind)
        c = clock or ObserveClock(duration=step.duration)
        c.tick(workflow.now())
        due = c.next_check_at is None or workflow.now() >= c.next_check_at
        self._escalate_open = step.stop_on_escalate
        try:
            while True:
                if self._escalation is not None:
                    self._end(rec, "escalated", f"escalated by {self._escalation.actor}")
                    return "escalated"
                if c.stop is not None:
                    self._end(rec, c.stop, f"after {c.observed} observed, {c.checks} checks")
                    return c.stop
                if due:
                    if (self._escalate_open and self.signing and self.roster_at is not None
                            and workflow.now() - self.roster_at >= ROSTER_REFRESH and workflow.patched("roster-refresh")):
                        await self.load_roster(local=False)  # an escalation may arrive meanwhile: keep keys fresh
                    check, verdicts = await self._check(step, values)
                    c.tick(workflow.now())
                    c.checks += 1
                    c.next_check_at = workflow.now() + step.interval
                    self.progress.checks = [*self.progress.checks[-(MAX_CHECKS_KEPT - 1):], check]
                    c.streak = c.streak + 1 if not check.ok else 0
                    tripped = c.streak >= step.consecutive
                    for hc, verdict in zip(step.checks, verdicts):
                        if hc.consecutive is not None and check.error is None:
                            key = f"{hc.metric} {hc.op}"
                            c.streaks[key] = c.streaks.get(key, 0) + 1 if verdict is not None else 0
                            tripped = tripped or c.streaks[key] >= hc.consecutive
                    if tripped and step.on_breach != "record" and c.armed:
                        self._end(rec, "breach", f"{c.streak} consecutive failed checks: {'; '.join(check.breaches)}")
                        return "breach"
                    if clock is not None and c.max_history is not None and (
                            workflow.info().get_current_history_length() >= c.max_history
                            or workflow.info().is_continue_as_new_suggested()):
                        self._end(rec, "continue_as_new", f"{c.observed} observed so far, {c.checks} checks")
                        return "continue_as_new"
                now = workflow.now()
                c.tick(now)
                remaining = c.duration - c.observed
                if remaining <= timedelta(0) and not c.paused:
                    break
                wait = c.next_check_at - now
                if not c.paused:
                    wait = min(wait, remaining)
                if wait <= timedelta(0):
                    due = True
                    continue
                version = c.version
                try:
                    await workflow.wait_condition(lambda: self._escalation is not None or c.version != version,
                                                  timeout=wait)
                    due = False
                except asyncio.TimeoutError:
                    due = True
        finally:
            self._escalate_open = False
        self._end(rec, "ok", f"{c.duration} observed, last check {'ok' if self.progress.checks[-1].ok else 'failed'}")
        return "ok"

    def _still_needed(self, aw: Awaiting) -> list[str]:
        """Operators who could still approve `aw` (role, a key when signing on, not yet approved)."""
        need = Role(aw.min_role)
        return sorted(n for n, r in self.roster.items()
                      if Role(r).at_least(need) and n not in aw.approved_by and (not self.signing or n in self.keys))

    def _approval_prompt(self, aw: Awaiting, base: str) -> str:
        if aw.approvals_needed < 2:
            return base
        got = ", ".join(aw.approved_by) or "nobody yet"
        who = ", ".join(aw.still_needed) or "nobody: no other operator holds that role with a key"
        return (f"{base} Two-person rule: {aw.approvals_needed} different {aw.min_role}s must approve; approved by "
                f"{got}; still needed: one of {who} (a single super admin may force it with --break-glass REASON).")

    async def _wait_decision(self, timeout: timedelta, refresh: bool) -> None:
        """Wait up to `timeout` for a decision; with `refresh`, re-read the roster every ROSTER_REFRESH
        meanwhile (raises asyncio.TimeoutError when the whole timeout has passed)."""
        if not refresh:
            await workflow.wait_condition(lambda: self._decision is not None, timeout=timeout)
            return
        deadline = workflow.now() + timeout
        while True:
            left = deadline - workflow.now()
            if left <= timedelta(0):
                raise asyncio.TimeoutError()
            try:
                await workflow.wait_condition(lambda: self._decision is not None, timeout=min(left, ROSTER_REFRESH))
                return
            except asyncio.TimeoutError:
                if workflow.now() >= deadline:
                    raise
                await self.load_roster(local=False)
                if self.progress.awaiting is not None:
                    self.progress.awaiting.still_needed = self._still_needed(self.progress.awaiting)

    async def run_await(self, step: AwaitConfirmation, approved_by: tuple[str, ...] = ()) -> tuple[str, Decision | None]:
        """Wait for a decision. Returns (kind, decision); kind "timeout" when it proceeds/fails on time.

        `step.approvals == 2` (two-person rule): the step ends when a second, different operator of
        `step.min_role` approves (`approved_by`: who approved already, e.g. the signed requester), or a
        super admin's break-glass decision forces it.
        """
        rec = self._begin(step.name, step.kind)
        self._decision = None
        since = workflow.now()
        self.progress.awaiting = Awaiting(step=step.name, expects=step.expects, min_role=step.min_role.value,
                                          since=since, deadline=since + step.timeout, prompt=step.prompt,
                                          approvals_needed=step.approvals, approved_by=list(approved_by))
        aw = self.progress.awaiting
        if self.current_alert is not None:
            aw.alerts.append(self.current_alert)  # the latest page asked for it
        if step.approvals > 1:
            aw.still_needed = self._still_needed(aw)
            aw.prompt = self._approval_prompt(aw, step.prompt)
        # Patch "roster-refresh": with signing on, keys are re-read while a human is awaited.
        refresh = self.signing and workflow.patched("roster-refresh")
        try:
            while True:
                try:
                    await self._wait_decision(step.timeout, refresh)
                except asyncio.TimeoutError:
                    if step.on_timeout == "proceed":
                        self._end(rec, "timeout", f"no decision in {step.timeout}: proceeding")
                        return "timeout", None
                    if step.on_timeout == "fail":
                        self._end(rec, "timeout", f"no decision in {step.timeout}")
                        return "timeout", None
                    if self.outbox and aw.seen_by is not None:
                        # Acknowledged in PagerDuty: a person has it. Remind in chat, page nobody else
                        # (until PagerDuty says the acknowledgement timed out).
                        aw.reminders += 1
                        aw.deadline = workflow.now() + step.timeout
                        await self.notify(f"STILL WAITING ({aw.reminders}) for {step.expects} ({step.min_role.value}+) "
                                          f"at {self.wid}: seen in PagerDuty by {aw.seen_by} at "
                                          f"{aw.seen_at:%H:%M:%S}, no signed decision yet. {step.prompt}", page=False,
                                          kind="reminder")
                        continue
                    # re-page at the next escalation level and keep waiting
                    self.progress.page_level += 1
                    if self.on_repage is not None:
                        self.on_repage(self.progress.page_level)
                    self.progress.awaiting.repages += 1
                    self.progress.awaiting.deadline = workflow.now() + step.timeout
                    await self.notify(f"UNANSWERED after {step.timeout}: {self.wid} waits for {step.expects} "
                                      f"({step.min_role.value}+). {step.prompt}", page=True, severity="critical",
                                      kind="repage", group=self.group)
                    continue
                kind, d = self._decision
                if aw.approvals_needed > 1 and self._counts_as_approval(kind, d) and not d.break_glass:
                    aw.approved_by.append(d.actor)
                    if len(aw.approved_by) < aw.approvals_needed:  # the first of two: keep waiting
                        self._decision = None
                        aw.still_needed = self._still_needed(aw)
                        aw.prompt = self._approval_prompt(aw, step.prompt)
                        await self.notify(f"{self.wid}: {d.actor} approved {step.name}; a second {aw.min_role} must "
                                          f"approve too (one of {', '.join(aw.still_needed) or 'nobody'}): "
                                          f"`rollbackctl {kind} {self.wid} --as OP`", page=True, severity="critical",
                                          kind="second_approval")
                        continue
                who = " and ".join(aw.approved_by) if len(aw.approved_by) > 1 else d.actor
                glass = f" [BREAK-GLASS: {d.break_glass}]" if d.break_glass else ""
                self._end(rec, kind, f"{kind} by {who}{glass}" + (f": {d.reason}" if d.reason else ""))
                return kind, d
        finally:
            self.progress.awaiting = None
            self._decision = None

    # -- human decisions -----------------------------------------------------------------------
    @staticmethod
    def _counts_as_approval(kind: str, d: Decision) -> bool:
        """A decision that changes nothing (`fix --no-restore`) needs no second person."""
        return not (kind == "fix" and not d.restore)

    def signature_refusal(self, kind: str, d: Decision) -> str | None:
        """Why this decision's signature is refused (signing on), or None. Pure."""
        try:
            identity.check(d.proof(), actor=d.actor, public_key=self.keys.get(d.actor),
                           retired=self.retired.get(d.actor, ()), workflow_id=self.wid, action=kind,
                           step=self.progress.decision_step(), used_nonces=self.used_nonces)
        except identity.Refused as e:
            if e.kind is identity.Refusal.UNSIGNED:
                return not_permitted(f"{e}: signing is on, and the Web UI or `temporal workflow signal` cannot "
                                     f"sign; use `rollbackctl {kind} {self.wid} --as {d.actor}`")
            # Signed for another step: the workflow moved on (not a matter of who asked).
            return Refusal(str(e)) if e.kind is identity.Refusal.WRONG_STEP else not_permitted(str(e))
        return None

    def check_decision(self, kind: str, d: Decision) -> str | None:
        """Why this decision is refused now, or None. Pure: no state change, no I/O."""
        role = self.role_of(d.actor)
        if role is None:
            return not_permitted(f"{d.actor!r} is not an operator")
        if self._decision is not None and self.progress.awaiting is not None:
            # Two decisions in the same workflow task (e.g. proceed and cancel at once): the first one
            # accepted wins; the later one must be refused, not acknowledged and then overwritten.
            k, prev = self._decision
            return (f"{k} by {prev.actor} was already accepted at step {self.progress.awaiting.step!r}; "
                    f"this {kind} by {d.actor} is not applied")
        if self.signing:
            why = self.signature_refusal(kind, d)
            if why:
                return why
        if d.break_glass is not None:
            aw = self.progress.awaiting
            if aw is None or aw.approvals_needed < 2:
                return invalid("--break-glass forces a two-person approval alone; this step does not need two")
            if not role.at_least(Role.SUPER_ADMIN):
                return not_permitted(f"{d.actor} is {role.value}; break-glass needs a super_admin")
            if not d.break_glass.strip():
                return invalid("--break-glass needs a reason")
        if kind == "escalate" and self._escalate_open:
            return None if role.at_least(Role.ON_CALL) else not_permitted(f"{d.actor} is {role.value}; escalating needs on_call")
        if kind in self.extra_answers:
            return self.extra_answers[kind](kind, d)
        aw = self.progress.awaiting
        if aw is None:
            return f"{self.wid} is not waiting for a decision now (step: {self.progress.current_step}, status {self.progress.status})"
        if kind not in ANSWERS.get(aw.expects, ()):
            return f"{self.wid} waits for {aw.expects!r} at step {aw.step!r}, not {kind!r}"
        if not role.at_least(Role(aw.min_role)):
            return not_permitted(f"{d.actor} is {role.value}; step {aw.step!r} needs {aw.min_role} or above")
        if kind == "cancel" and not d.reason.strip():
            return invalid("cancel needs a reason")
        if kind == "fix":
            if d.restore and not (d.reference and d.reference.strip()):
                return invalid("fix needs --reference (the deployed fix: commit, release or ticket)")
            if d.restore and not d.tests_passed:
                return invalid("fix needs --tests-passed: the manual restores only after fix + unit tests")
        if aw.expects == "level_choice" and d.level not in (2, 3):
            return invalid("choose degradation level 2 or 3 (--level 2|3)")
        if aw.expects == "level_choice" and d.level == 3 and not role.at_least(Role.SUPER_ADMIN):
            return not_permitted(f"{d.actor} is {role.value}; level 3 needs super_admin")
        if aw.approvals_needed > 1 and d.actor in aw.approved_by and self._counts_as_approval(kind, d):
            return not_permitted(f"{d.actor} already approved step {aw.step!r}: the two-person rule needs a different "
                    f"{aw.min_role} (still needed: one of {', '.join(aw.still_needed) or 'nobody'})")
        return None

    def accept(self, kind: str, d: Decision) -> DecisionAck:
        step = self.progress.current_step or ""
        if kind == "escalate" and self._escalate_open and self.progress.awaiting is None:
            self._escalation = d
        else:
            self._decision = (kind, d)
        proof = d.proof() if self.signing else None
        if proof is not None:
            self.used_nonces.append(proof.request.nonce)
            self.proofs.append(proof)
        self.progress.decisions.append(DecisionRecord(at=workflow.now(), kind=kind, actor=d.actor, accepted=True,
                                                      detail=d.reason, key_id=d.key_id if proof else None,
                                                      break_glass=d.break_glass))
        return DecisionAck(accepted=True, step=step, message=f"{kind} by {d.actor} accepted at step {step}")

    def refuse(self, kind: str, d: Decision, why: str) -> None:
        """A refused signal: recorded, ignored (Updates are refused by their validators instead)."""
        self.progress.decisions.append(DecisionRecord(at=workflow.now(), kind=kind, actor=d.actor, accepted=False,
                                                      detail=why))

    @property
    def escalation(self) -> Decision | None:
        return self._escalation


class PagingHandlers:
    """The pager's answers, for every workflow that pages (its Runner is `self.r`): deliveries, what
    PagerDuty says of its alerts, and alerts handed on by the workflow this one continues."""

    r: Runner

    @workflow.signal(name=OUTCOME_SIGNAL)
    def paging_outcome(self, deliveries: list[Delivery]) -> None:
        self.r.on_deliveries(deliveries)

    @workflow.signal(name=EVENT_SIGNAL)
    async def paging_event(self, ev: AlertEvent) -> None:
        await self.r.on_alert_event(ev)

    @workflow.signal(name=TAKE_ALERTS_SIGNAL)
    def take_alerts(self, recs: list[AlertRecord]) -> None:
        self.r.take_alerts(recs)

