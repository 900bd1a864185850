"""The one interpreter of manual/steps.py, used inside workflows (rollback, degradation, canary).

It decides per step kind; activities touch the world. Progress (current step, history, what is
awaited, checklist results, recent checks) lives here and is exposed by the workflows' queries.
Human decisions arrive through the workflows' Updates: `validate` (pure, synchronous, no state
change) refuses the wrong person or the wrong moment; `accept` delivers the decision to the step
that waits for it.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, Callable

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities import errors
    from activities.changes import ChangeSetRequest, ChangeSetResult, Snapshot, SwitchChange
    from activities.switch_activities import Roster
    from manual import switches
    from manual.roles import Role
    from manual.steps import (
        ApplySwitches,
        AwaitConfirmation,
        Checklist,
        CoreActions,
        HealthCheck,
        Notify,
        Observe,
    )
    from workflows.models import (
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
MAX_CHECKS_KEPT = 20

# Which Update kinds answer which awaited step.
ANSWERS: dict[str, tuple[str, ...]] = {
    "confirm": ("confirm",),
    "proceed_or_cancel": ("proceed", "cancel"),
    "fix": ("fix",),
    "escalate": ("escalate", "confirm"),
    "level_choice": ("escalate",),
    "promote": ("promote",),
}


class StepFailed(Exception):
    """A step could not complete; the workflow ends with this message."""


def metric_value(health: dict[str, Any], metric: str) -> Any:
    v = health.get(metric)
    if isinstance(v, dict):  # per-symbol map: the worst (largest) value
        return max(v.values(), default=0.0)
    return v


def evaluate(checks: tuple[HealthCheck, ...], health: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """Breached checks, as readable lines (pure)."""
    out = []
    for c in checks:
        v = metric_value(health, c.metric)
        t = values.get(c.threshold_switch, c.threshold) if c.threshold_switch else c.threshold
        if v is None:
            out.append(f"{c.metric} missing")
            continue
        ok = {
            "<=": lambda: v <= t, "<": lambda: v < t, ">=": lambda: v >= t, ">": lambda: v > t, "==": lambda: v == t,
        }[c.op]()
        if not ok:
            out.append(f"{c.metric}={v} (needs {c.op} {t})")
    return out


class Runner:
    def __init__(self, workflow_id: str, kind: str, *, requested_by: str, drill: bool, incident: str):
        self.progress = Progress(workflow_id=workflow_id, kind=kind)
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

    # -- helpers ----------------------------------------------------------------------------
    @property
    def wid(self) -> str:
        return self.progress.workflow_id

    def _key(self, step: str) -> str:
        """A stable id for this occurrence of a step: change ids and idempotency keys derive from it."""
        n = self._runs.get(step, 0)
        return f"{self.wid}:{step}" + (f":{n}" if n else "")

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
    async def load_roster(self) -> None:
        r: Roster = await workflow.execute_local_activity(
            "switch.roster", result_type=Roster, start_to_close_timeout=timedelta(seconds=10),
            retry_policy=SWITCH_RETRY,
        )
        self.roster = r.roles

    async def take_snapshot(self) -> Snapshot:
        snap: Snapshot = await workflow.execute_local_activity(
            "switch.snapshot", result_type=Snapshot, start_to_close_timeout=timedelta(seconds=10),
            retry_policy=SWITCH_RETRY,
        )
        return snap

    async def read_health(self, timeout: timedelta, attempts: int = 2, local: bool = False) -> dict[str, Any]:
        inp = {"timeout_s": timeout.total_seconds()}  # activities.trading_core.ReadHealthInput
        policy = RetryPolicy(maximum_attempts=attempts, initial_interval=timedelta(milliseconds=100))
        if local:
            return await workflow.execute_local_activity(
                "core.read_health", inp, result_type=dict, start_to_close_timeout=timeout + timedelta(milliseconds=200),
                retry_policy=policy,
            )
        return await workflow.execute_activity(
            "core.read_health", inp, result_type=dict, start_to_close_timeout=timeout + timedelta(seconds=1),
            retry_policy=policy,
        )

    async def core_action(self, step: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        # activities.trading_core.CoreActionInput
        inp = {"action": action, "body": body, "idempotency_key": f"{self._key(step)}:{action}"}
        return await workflow.execute_activity(
            "core.action", inp, result_type=dict, start_to_close_timeout=timedelta(seconds=10),
            retry_policy=CORE_RETRY,
        )

    async def notify(self, text: str, *, page: bool, severity: str = "warning", event_action: str = "trigger",
                     wait: bool = True) -> None:
        """Chat always; a PagerDuty event too when `page`. With wait=False it runs beside the caller."""
        prefix = "[DRILL] " if self.drill else ""
        level = self.progress.page_level

        async def send() -> None:
            try:
                calls = [workflow.execute_activity(
                    "paging.chat", {"text": f"{prefix}{text}", "escalation_level": level,
                                  "fields": {"workflow": self.wid, "incident": self.incident}},  # paging.ChatInput
                    result_type=dict, start_to_close_timeout=timedelta(seconds=10), retry_policy=NOTIFY_RETRY)]
                if page:
                    calls.append(workflow.execute_activity(
                        "paging.page", {  # activities.paging.PageInput
                            "event_action": event_action, "dedup_key": f"{self.wid}:L{level}",
                            "summary": f"{prefix}{text}"[:1000], "severity": severity, "source": "rollbackctl",
                            "escalation_level": level,
                            "custom_details": {"workflow_id": self.wid, "incident": self.incident, "drill": self.drill}},
                        result_type=dict, start_to_close_timeout=timedelta(seconds=10), retry_policy=NOTIFY_RETRY))
                await asyncio.gather(*calls)
            except ActivityError as e:
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
                    values: dict[str, Any] | None = None, approved_by: str | None = None) -> ChangeSetResult:
        changes = values if values is not None else step.changes
        req = ChangeSetRequest(
            change_id=self._key(step.name),
            actor=self.requested_by,
            action="rollback.apply" if step.authority == "preapproved" else "plan.apply",
            changes=[SwitchChange(switch=k, value=v) for k, v in changes.items()],
            reason=("[DRILL] " if self.drill else "") + step.reason,
            source=self.wid,
            authority=step.authority,
            approved_by=approved_by,
            expected=expected,
            drill=self.drill,
        )
        res: ChangeSetResult = await workflow.execute_local_activity(
            "switch.apply", req, result_type=ChangeSetResult, start_to_close_timeout=timedelta(seconds=15),
            schedule_to_close_timeout=timedelta(minutes=30), retry_policy=SWITCH_RETRY,
        )
        self.progress.applied.append(res)
        return res

    async def verify_applied(self, revision: int, timeout: timedelta) -> str:
        try:
            await workflow.execute_activity(
                "core.wait_applied", {"revision": revision, "timeout_s": timeout.total_seconds()},  # WaitAppliedInput
                result_type=dict, start_to_close_timeout=timeout + timedelta(seconds=2),
                retry_policy=RetryPolicy(maximum_attempts=3, non_retryable_error_types=["Maintenance"]),
            )
            return f"trading core applied revision {revision}"
        except ActivityError as e:
            cause = e.cause
            if isinstance(cause, ApplicationError) and cause.type == "Maintenance":
                return f"revision {revision} written; the trading core is in maintenance mode (503)"
            return f"revision {revision} written; trading core did not confirm it applied: {cause or e}"

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
        health_task = (asyncio.create_task(self.read_health(step.health_timeout, attempts=1, local=True))
                       if "hl_health" in ids or "exposure" in ids else None)
        if "notify" in ids:
            await self.notify(f"{self.progress.kind} {self.wid} started by {self.requested_by}: "
                              + ", ".join(f"{k}={switches.get(k).render(v)}" for k, v in changes.items()),
                              page=True, severity="critical", wait=False)
            result("notify", "ok", "sent in parallel; does not delay the change")
        self.snapshot = await snap_task
        self.progress.snapshot_revision = self.snapshot.revision
        self.progress.snapshot = self.snapshot.values()
        result("snapshot", "ok", f"{len(self.snapshot.switches)} switches at etcd revision {self.snapshot.revision}")

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
            except ActivityError as e:
                health = None
                err = f"trading core did not answer within {step.health_timeout.total_seconds() * 1000:.0f} ms ({e.cause or e})"
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
        if "pause_canaries" in ids:
            paused = await self.pause_canaries()
            result("pause_canaries", "ok" if paused is not None else "skipped", paused or "no canary registry on this worker")
        self._end(rec, outcome)
        return outcome

    async def pause_canaries(self) -> str | None:
        """Signal running canaries to pause (nothing promotes over a rollback)."""
        try:
            r = await workflow.execute_activity(
                "ops.pause_canaries", self.wid, result_type=str, start_to_close_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
            return r
        except ActivityError as e:
            self.log("pausing canaries failed: %s", e)
            return None

    async def run_apply(self, step: ApplySwitches, **kw: Any) -> ChangeSetResult:
        rec = self._begin(step.name, step.kind)
        try:
            res = await self.apply(step, **kw)
        except ActivityError as e:
            cause = e.cause
            msg = str(cause.message if isinstance(cause, ApplicationError) else e)
            self._end(rec, "failed", msg)
            if isinstance(cause, ApplicationError) and cause.type == errors.CONFLICT:
                raise StepFailed(f"conflict: {msg}") from e
            raise StepFailed(msg) from e
        detail = f"audit {res.audit_id}, etcd revision {res.revision}" + (" (already applied)" if res.replayed else "")
        if step.verify_applied:
            detail += "; " + await self.verify_applied(res.revision, step.verify_timeout)
        self._end(rec, "ok", detail)
        return res

    async def run_core_actions(self, step: CoreActions) -> None:
        rec = self._begin(step.name, step.kind)
        done = []
        for action, body in step.actions:
            try:
                await self.core_action(step.name, action, body)
                done.append(action)
            except ActivityError as e:
                done.append(f"{action} FAILED ({e.cause or e})")
        self._end(rec, "ok", ", ".join(done))

    async def run_notify(self, step: Notify) -> None:
        rec = self._begin(step.name, step.kind)
        await self.notify(step.text, page=step.page, severity=step.severity, event_action=step.event_action)
        self._end(rec, "ok")

    async def run_observe(self, step: Observe, values: dict[str, Any] | None = None) -> str:
        """Returns "ok", "breach" or "escalated" (a human escalated during a monitoring observation)."""
        rec = self._begin(step.name, step.kind)
        end = workflow.now() + step.duration
        streak = 0
        self._escalate_open = step.stop_on_escalate
        try:
            while True:
                if self._escalation is not None:
                    self._end(rec, "escalated", f"escalated by {self._escalation.actor}")
                    return "escalated"
                try:
                    health = await self.read_health(timedelta(seconds=2))
                    breaches = evaluate(step.checks, health, values or self.progress.snapshot)
                    check = CheckResult(at=workflow.now(), ok=not breaches, breaches=breaches)
                except ActivityError as e:
                    check = CheckResult(at=workflow.now(), ok=False, breaches=["health unreadable"], error=str(e.cause or e))
                self.progress.checks = [*self.progress.checks[-(MAX_CHECKS_KEPT - 1):], check]
                streak = streak + 1 if not check.ok else 0
                if streak >= step.consecutive and step.on_breach != "record":
                    self._end(rec, "breach", f"{streak} consecutive failed checks: {'; '.join(check.breaches)}")
                    return "breach"
                remaining = end - workflow.now()
                if remaining <= timedelta(0):
                    break
                try:
                    await workflow.wait_condition(lambda: self._escalation is not None,
                                                  timeout=min(step.interval, remaining))
                except asyncio.TimeoutError:
                    pass
        finally:
            self._escalate_open = False
        self._end(rec, "ok", f"{step.duration} observed, last check {'ok' if self.progress.checks[-1].ok else 'failed'}")
        return "ok"

    async def run_await(self, step: AwaitConfirmation) -> tuple[str, Decision | None]:
        """Wait for a decision. Returns (kind, decision); kind "timeout" when it proceeds/fails on time."""
        rec = self._begin(step.name, step.kind)
        self._decision = None
        since = workflow.now()
        self.progress.awaiting = Awaiting(step=step.name, expects=step.expects, min_role=step.min_role.value,
                                          since=since, deadline=since + step.timeout, prompt=step.prompt)
        try:
            while True:
                try:
                    await workflow.wait_condition(lambda: self._decision is not None, timeout=step.timeout)
                except asyncio.TimeoutError:
                    if step.on_timeout == "proceed":
                        self._end(rec, "timeout", f"no decision in {step.timeout}: proceeding")
                        return "timeout", None
                    if step.on_timeout == "fail":
                        self._end(rec, "timeout", f"no decision in {step.timeout}")
                        return "timeout", None
                    # re-page at the next escalation level and keep waiting
                    self.progress.page_level += 1
                    self.progress.awaiting.repages += 1
                    self.progress.awaiting.deadline = workflow.now() + step.timeout
                    await self.notify(f"UNANSWERED after {step.timeout}: {self.wid} waits for {step.expects} "
                                      f"({step.min_role.value}+). {step.prompt}", page=True, severity="critical")
                    continue
                kind, d = self._decision
                self._end(rec, kind, f"{kind} by {d.actor}" + (f": {d.reason}" if d.reason else ""))
                return kind, d
        finally:
            self.progress.awaiting = None
            self._decision = None

    # -- human decisions -----------------------------------------------------------------------
    def check_decision(self, kind: str, d: Decision) -> str | None:
        """Why this decision is refused now, or None. Pure: no state change, no I/O."""
        role = self.role_of(d.actor)
        if role is None:
            return f"{d.actor!r} is not an operator"
        if kind == "escalate" and self._escalate_open:
            return None if role.at_least(Role.ON_CALL) else f"{d.actor} is {role.value}; escalating needs on_call"
        if kind in self.extra_answers:
            return self.extra_answers[kind](kind, d)
        aw = self.progress.awaiting
        if aw is None:
            return f"{self.wid} is not waiting for a decision now (step: {self.progress.current_step}, status {self.progress.status})"
        if kind not in ANSWERS.get(aw.expects, ()):
            return f"{self.wid} waits for {aw.expects!r} at step {aw.step!r}, not {kind!r}"
        if not role.at_least(Role(aw.min_role)):
            return f"{d.actor} is {role.value}; step {aw.step!r} needs {aw.min_role} or above"
        if kind == "cancel" and not d.reason.strip():
            return "cancel needs a reason"
        if kind == "fix":
            if d.restore and not (d.reference and d.reference.strip()):
                return "fix needs --reference (the deployed fix: commit, release or ticket)"
            if d.restore and not d.tests_passed:
                return "fix needs --tests-passed: the manual restores only after fix + unit tests"
        if aw.expects == "level_choice" and d.level not in (2, 3):
            return "choose degradation level 2 or 3 (--level 2|3)"
        if aw.expects == "level_choice" and d.level == 3 and not role.at_least(Role.SUPER_ADMIN):
            return f"{d.actor} is {role.value}; level 3 needs super_admin"
        return None

    def accept(self, kind: str, d: Decision) -> DecisionAck:
        step = self.progress.current_step or ""
        if kind == "escalate" and self._escalate_open and self.progress.awaiting is None:
            self._escalation = d
        else:
            self._decision = (kind, d)
        self.progress.decisions.append(DecisionRecord(at=workflow.now(), kind=kind, actor=d.actor, accepted=True,
                                                      detail=d.reason))
        return DecisionAck(accepted=True, step=step, message=f"{kind} by {d.actor} accepted at step {step}")

    def refuse(self, kind: str, d: Decision, why: str) -> None:
        """A refused signal: recorded, ignored (Updates are refused by their validators instead)."""
        self.progress.decisions.append(DecisionRecord(at=workflow.now(), kind=kind, actor=d.actor, accepted=False,
                                                      detail=why))

    @property
    def escalation(self) -> Decision | None:
        return self._escalation
