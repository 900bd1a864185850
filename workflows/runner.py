"""The one interpreter of manual/steps.py, used inside workflows (rollback, degradation, canary).

It decides per step kind; activities touch the world. Progress (current step, history, what is
awaited, checklist results, recent checks) lives here and is exposed by the workflows' queries.
Its parts, one file each: the step executors (here), the activity gateway (workflows/gateway.py),
paging (workflows/alerting.py) and the decision gate (workflows/gate.py); what they share
(patch names, retry policies, StepFailed) is in workflows/base.py.
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
from datetime import datetime, timedelta
from typing import Any, Callable

from pydantic import BaseModel

from temporalio import workflow
from temporalio.exceptions import ApplicationError, CancelledError, FailureError

with workflow.unsafe.imports_passed_through():
    from contracts import errors
    from contracts.changes import ChangeSetResult, Snapshot
    from contracts.paging import Delivery, PagerLimits
    from manual import switches
    from contracts.roles import Role
    from core import identity
    from manual.steps import ApplySwitches, Checklist, CoreActions, HealthCheck, Notify, Observe
    from contracts.progress import ChecklistResult, CheckResult, Decision, Progress, StepRecord
    from core import metrics as series

from workflows.alerting import Alerting
from workflows.base import (FLEET_RECEIPTS, MAX_CHECKS_KEPT, OBSERVE_TRAFFIC, ROSTER_REFRESH, ROSTER_REFRESH_PATCH,
                            ActionOutcome, StepFailed, root_cause)
from workflows import metrics as wf_metrics
from workflows.gate import DecisionGate
from workflows.gateway import ActivityGateway


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


def reading(c: HealthCheck, health: dict[str, Any], values: dict[str, Any]) -> str:
    """This check's value against its limit, for people (pure): "error_rate=0.002 (<= 0.01) ok"."""
    v = metric_value(health, c.metric)
    t = c.threshold
    if c.threshold_switch:
        sv = values.get(c.threshold_switch)
        t = c.threshold if sv is None else (sv if c.threshold_factor == 1 else sv * c.threshold_factor)
    shown = f"{v:.6g}" if isinstance(v, float) else str(v)
    return f"{c.metric}={shown} ({c.op} {t}) " + ("FAILED" if check_one(c, health, values) else "ok")


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
    traffic: bool | None = None  # the step's `traffic` metric: None never reported, False only 0 seen, True > 0 seen

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


class Runner(ActivityGateway, Alerting, DecisionGate):
    """The interpreter: state and the step executors (checklist, apply, core actions, notify, observe);
    activities through ActivityGateway (workflows/gateway.py), pages through Alerting
    (workflows/alerting.py), human decisions through DecisionGate (workflows/gate.py)."""

    def __init__(self, workflow_id: str, kind: str, *, requested_by: str, drill: bool, incident: str,
                 key: str | None = None):
        self.progress = Progress(workflow_id=workflow_id, kind=kind, drill=drill)
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
        # Standing decisions (canary pause/promote, incident tick/resolve...): accepted whenever their
        # rule (kind, decision) -> refusal-or-None allows, never taken as the awaited step's answer.
        self.standing: dict[str, Callable[[str, Decision], str | None]] = {}
        # Patch "flip-first" (workflows set it from workflow.patched): the roster loads beside the
        # snapshot and canaries are paused beside the change, so nothing delays a critical flip.
        self.flip_first = False
        # Identity (from the roster activity: the worker's setting and the operators' public keys)
        self.signing = False
        self.keys: dict[str, str] = {}
        self.passkeys: dict[str, list[str]] = {}  # approved passkeys (decisions from the console)
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
        self.show()
        return rec

    def _end(self, rec: StepRecord, outcome: str, detail: str = "") -> None:
        rec.ended_at, rec.outcome, rec.detail = workflow.now(), outcome, detail
        self._runs[rec.name] = self._runs.get(rec.name, 0) + 1
        self.show()

    def show(self) -> None:
        """Publish where it is as the workflow's current details (the Web UI shows them on its page; no
        command, so replay-safe). Not when the workflow is being evicted from the worker's cache (its
        coroutines' `finally` blocks run outside the workflow's event loop)."""
        if workflow.in_workflow():
            workflow.set_current_details(self.progress.details())

    def role_of(self, actor: str) -> Role | None:
        r = self.roster.get(actor)
        return Role(r) if r else None

    # -- activities ------------------------------------------------------------------------------


    # -- paging through the pager ----------------------------------------------------------------


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
            if workflow.patched(FLEET_RECEIPTS):
                detail += "; " + await self.verify_everywhere(res, step)
            else:
                detail += "; " + await self.verify_applied(res.revision, step.verify_timeout)
        self._end(rec, "ok", detail)
        return res

    async def verify_everywhere(self, res: ChangeSetResult, step: ApplySwitches) -> str:
        """The trading core's own confirmation and every registered consumer's receipt, side by side; a
        consumer past the change's latency class is paged (critical for a <1 s switch) and named here."""
        core, fleet = await asyncio.gather(self.verify_applied(res.revision, step.verify_timeout),
                                           self.verify_fleet(res, step.verify_timeout))
        if fleet is None:
            return f"{core}; consumers' receipts could not be read"
        if fleet.stragglers:
            critical = fleet.class_s <= 1.0
            await self.notify(f"{self.wid} step {step.name}: consumers did not apply etcd revision {res.revision} "
                              f"within {fleet.class_s:g}s: {fleet.summary()} (`rollbackctl consumers`)",
                              page=True, severity="critical" if critical else "warning", kind="straggler",
                              wait=False)
        return f"{core}; {fleet.summary()}"

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


    async def _check(self, step: Observe, values: dict[str, Any] | None
                     ) -> tuple[CheckResult, list[str | None], dict[str, Any] | None]:
        """One health read (+ probes) judged against the step's checks: the result, each check's verdict and
        the health read (None: unreadable)."""
        try:
            read = self.read_health(timedelta(seconds=2), local=step.local_reads)
            if step.probes:
                health, extra = await asyncio.gather(read, self.read_probes(step))
                health = {**health, **extra}
            else:
                health = await read
            vals = values or self.progress.snapshot
            verdicts = [check_one(c, health, vals) for c in step.checks]
            breaches = [v for v in verdicts if v is not None]
            breaches += [f"  {line}" for line in health.get("exposure_mismatch_detail") or []]
            return CheckResult(at=workflow.now(), ok=not breaches, breaches=breaches,
                               readings=[reading(c, health, vals) for c in step.checks]), verdicts, health
        except FailureError as e:
            return (CheckResult(at=workflow.now(), ok=False, breaches=["health unreadable"], error=str(root_cause(e))),
                    [None] * len(step.checks), None)

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
                            and workflow.now() - self.roster_at >= ROSTER_REFRESH
                            and workflow.patched(ROSTER_REFRESH_PATCH)):
                        await self.load_roster(local=False)  # an escalation may arrive meanwhile: keep keys fresh
                    check, verdicts, health = await self._check(step, values)
                    c.tick(workflow.now())
                    c.checks += 1
                    if step.traffic and health is not None and health.get(step.traffic) is not None:
                        c.traffic = c.traffic or float(health[step.traffic]) > 0
                    c.next_check_at = workflow.now() + step.interval
                    self.progress.checks = [*self.progress.checks[-(MAX_CHECKS_KEPT - 1):], check]
                    wf_metrics.count(series.HEALTH_CHECKS, drill=self.drill, kind=self.progress.kind,
                                     result="ok" if check.ok else "failed")
                    self.show()
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
                self.progress.observing_until = None if c.paused else now + remaining  # (countdowns: status)
                self.progress.next_check_at = c.next_check_at
                if wait <= timedelta(0):
                    due = True
                    continue
                version = c.version
                try:
                    await workflow.wait_condition(lambda: self._escalation is not None or c.version != version,
                                                  timeout=wait, timeout_summary=f"{step.name}: next health check")
                    due = False
                except asyncio.TimeoutError:
                    due = True
        finally:
            self._escalate_open = False
            self.progress.observing_until = self.progress.next_check_at = None
        done = f"{c.duration} observed, last check {'ok' if self.progress.checks[-1].ok else 'failed'}"
        if step.traffic and workflow.patched(OBSERVE_TRAFFIC):
            if c.traffic is False:
                self._end(rec, "no_traffic", f"{done}; no live traffic on the observed path ({step.traffic} was 0 at "
                                             f"every check): nothing verified")
                return "no_traffic"
            if c.traffic is None:
                self._end(rec, "ok", f"{done}; the trading core does not report {step.traffic}: whether orders "
                                     "flowed is unknown")
                await self.notify(f"{self.wid}: {step.name} passed its checks, but the trading core does not report "
                                  f"{step.traffic}: whether any order used the restored path is unknown. Check the "
                                  "core's order flow.", page=True, severity="warning", kind="no_traffic_figure")
                return "ok"
            done += "; live traffic seen"
        self._end(rec, "ok", done)
        return "ok"


    # -- human decisions -----------------------------------------------------------------------


