"""IncidentWorkflow: one P0 alert (manual/alerts.py) from detection to resolution.

    immediate action (idempotent) -> page + chat -> wait for an acknowledgement (5 min; unanswered:
    escalate to the next level and keep waiting) | 10-min action SLA | further-step checklist |
    auto-recovery once the condition stayed clear (rules that allow it) | HL: still down at 5 min ->
    escalate and ask for degradation level 2 or 3 | asset mismatch: acknowledged -> decision-tree
    rollback as a child | condition clear + a human resolves -> PagerDuty resolve.

The workflow id is one per rule (and symbol), `incident-<rule>[-<symbol>]`: the monitor starts it
with id_conflict_policy=USE_EXISTING, so a rule that keeps firing signals its open incident instead
of opening a second one. The incident id (`<rule>[-<symbol>]-<start time>`) is per occurrence:
idempotency keys, change ids and PagerDuty dedup keys derive from it, so an incident that opens
again after a resolve acts and pages afresh, while a retried or replayed step never acts twice.

Every step runs through workflows/runner.py. The monitor's identity (`monitor`) takes the immediate
actions only (pre-approved moves); a human undo or a child rollback/degradation runs under the
human who asked for it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow

from workflows import metrics as wf_metrics
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from core import metrics as series
    from activities.monitor import IncidentOps
    from contracts.errors import invalid, not_permitted, refusal_error
    from contracts.changes import BreakGlass
    from manual import alerts, escalation, switches
    from contracts.roles import Role
    from manual.roles import MONITOR_IDENTITY
    from manual.drills import scaled_durations
    from manual.rollback import Durations, Scope, Severity
    from manual.steps import ApplySwitches, AwaitConfirmation, CoreActions
    from workflows.degradation import DegradationWorkflow, degrade_workflow_id
    from contracts.incidents import (
        INCIDENT_PREFIX,
        ActionRecord,
        ChecklistItemState,
        ConditionReport,
        Escalation,
        IncidentInput,
        IncidentResult,
        IncidentState,
        ResolveRequest,
        SlaClocks,
        TickRequest,
        UndoGuardInput,
        UndoGuardResult,
    )
    from contracts.progress import Decision, DecisionAck, Progress
    from workflows.models import DegradeInput, RollbackInput
    from workflows.rollback import RollbackWorkflow, rollback_workflow_id
    from contracts.paging import Channel, Delivery
    from workflows.alerting import PagingHandlers
    from workflows.base import PAGER_OUTBOX, StepFailed, patches_first
    from workflows.runner import Runner


def incident_id_for(workflow_id: str, start: datetime) -> str:
    base = workflow_id[len(INCIDENT_PREFIX):] if workflow_id.startswith(INCIDENT_PREFIX) else workflow_id
    return f"{base}-{start:%Y%m%dT%H%M%SZ}"


def _refuse(why: str) -> None:
    raise refusal_error(why)


@workflow.defn(name="IncidentWorkflow")
class IncidentWorkflow(PagingHandlers):
    @workflow.init
    def __init__(self, inp: IncidentInput) -> None:
        info = workflow.info()
        self.rule = alerts.get(inp.rule)
        t = inp.timings
        self.ack_sla = t.ack or alerts.SLA.ack
        self.action_sla = t.action or alerts.SLA.action
        self.page_after = t.page_after or alerts.SLA.page_after
        self.clear_hold = t.clear_hold or self.rule.recovery.clear_hold
        self.manual_after = t.manual_after or (self.rule.manual_after.after if self.rule.manual_after else None)
        # what the rollbacks and degradations it starts run with (a drill's: scaled like its own clocks)
        self.child_durations = scaled_durations(t.speed) if t.speed else Durations()
        self.incident_id = incident_id_for(info.workflow_id, info.workflow_start_time)
        self.r = Runner(info.workflow_id, "incident", requested_by=MONITOR_IDENTITY, drill=inp.drill,
                        incident=self.incident_id, key=self.incident_id)
        self.r.actor_kind = "service"  # immediate actions go out under the monitor's identity
        self.r.on_repage = self._on_repage
        self.r.on_delivery = self._on_delivery
        # A per-symbol rule's incidents are one storm to PagerDuty (workflows/pager.py): 200 symbols at once
        # page as one alert naming them all, within PagerDuty's per-key budget.
        self.r.group = self.rule.id if inp.symbol else None
        self.r.progress.level = self.rule.alert + (f" ({inp.symbol})" if inp.symbol else "")
        self.st = IncidentState(
            workflow_id=info.workflow_id, incident_id=self.incident_id, rule=self.rule.id, alert=self.rule.alert,
            symbol=inp.symbol, condition_since=workflow.now(), started_at=inp.started_at, detected_at=inp.detected_at,
            last_values=inp.values, detail=inp.detail, drill=inp.drill,
            checklist=[ChecklistItemState(id=f.id, title=f.title) for f in self.rule.further],
            recovery=(f"automatic {self.clear_hold} after the condition clears" if self.rule.recovery.mode == "auto"
                      else f"human only ({self.rule.recovery.role.value}+: `rollbackctl resolve ID --undo`)"),
        )
        self._wake = 0  # bumped by every signal and update: the main loop re-evaluates
        self._paged = False
        self._ready = False  # roster loaded and the acknowledgement awaited: human input may arrive
        self._immediate_done = False
        self._in_force: list[str] = []  # pause actions of this incident now in force (query `holds`)
        self._set_by_incident: dict[str, tuple[Any, Any]] = {}  # switch -> (before, set by the incident)
        self._undone = False
        self._recovery_tried = False
        self._reapply = False
        self._manual_asked = False
        self._level_choice: Decision | None = None
        self._resolve: ResolveRequest | None = None
        self._ack_task: asyncio.Task | None = None
        self.r.standing.update(tick=self._tick_refusal, escalate=self._escalate_refusal, resolve=self._resolve_refusal)

    # -- queries --------------------------------------------------------------------------------
    @workflow.query
    def state(self) -> IncidentState:
        self.st.sla.level = self.r.progress.page_level
        seen = next((a for a in self.r.progress.alerts if a.seen_by), None)
        sla = self.st.sla.model_copy(update={"seen_by": seen.seen_by, "seen_at": seen.seen_at}) if seen else self.st.sla
        return self.st.model_copy(update={"alerts": self.r.progress.alerts, "sla": sla,
                                          "paging_failures": self.r.progress.paging_failures})

    @workflow.query
    def sla(self) -> SlaClocks:
        self.st.sla.level = self.r.progress.page_level
        return self.st.sla

    @workflow.query
    def actions(self) -> list[ActionRecord]:
        return self.st.actions

    @workflow.query
    def checklist(self) -> list[ChecklistItemState]:
        return self.st.checklist

    @workflow.query
    def progress(self) -> Progress:
        """The runner's step view (same shape as rollbacks and degradations: `rollbackctl status`)."""
        return self.r.progress

    @workflow.query
    def holds(self) -> list[str]:
        """Trading-core pauses this incident holds in force (another incident's auto-recovery leaves them)."""
        return list(self._in_force)

    # -- monitor input ------------------------------------------------------------------------------
    @workflow.signal
    def condition(self, rep: ConditionReport) -> None:
        new = "firing" if rep.firing else "clear"
        if rep.values:
            self.st.last_values = rep.values
        if rep.detail:
            self.st.detail = rep.detail
        if new != self.st.condition:
            self.st.condition = new
            self.st.condition_since = workflow.now()
            if rep.firing and self._undone and self.st.status != "resolved":
                self._reapply = True  # fired again after its action was undone: take it again
        self._wake += 1

    # -- human input ----------------------------------------------------------------------------------
    def _role(self, actor: str) -> Role | None:
        return self.r.role_of(actor)

    def _check_ack(self, d: Decision) -> None:
        aw = self.r.progress.awaiting
        if aw is not None and aw.step == "second_approval":  # a resolve's undo under the two-person rule
            why = self.r.check_decision("confirm", d)
            if why:
                _refuse(why)
            return
        if self.st.sla.acked_at is not None:
            _refuse(f"{self.st.workflow_id} was acknowledged by {self.st.sla.acked_by} at {self.st.sla.acked_at:%H:%M:%S}")
        why = self.r.check_decision("confirm", d)
        if why:
            _refuse(why)

    @workflow.update
    def acknowledge(self, d: Decision) -> DecisionAck:
        self._wake += 1
        return self.r.accept("confirm", d)

    @acknowledge.validator
    def _v_acknowledge(self, d: Decision) -> None:
        self._check_ack(d)

    @workflow.update
    def confirm(self, d: Decision) -> DecisionAck:
        """The manual's word for it ("5-min confirm"): the same as acknowledge."""
        self._wake += 1
        return self.r.accept("confirm", d)

    @confirm.validator
    def _v_confirm(self, d: Decision) -> None:
        self._check_ack(d)

    @workflow.signal(name="acknowledge")
    def acknowledge_signal(self, d: Decision) -> None:
        """For the Web UI and `temporal workflow signal`: same checks; a refused one is recorded, ignored."""
        try:
            self._check_ack(d)
        except ApplicationError as e:
            self.st.refused.append(f"acknowledge from {d.actor}: {e.message}")
            self.r.refuse("confirm", d, e.message)
            return
        self.r.accept("confirm", d)
        self._wake += 1

    # Standing decisions (any time, not an awaited step's answer): the gate checks the operator and the
    # signature (signing on: for this incident, the step it is at, the kind, a fresh nonce), then the
    # rule below; the handler records it (progress.decisions) and spends the nonce.
    def _tick_refusal(self, kind: str, req: TickRequest) -> str | None:
        role = self._role(req.actor)
        if not role.at_least(Role.ON_CALL):
            return not_permitted(f"{req.actor} is {role.value}; the checklist needs on_call or above")
        ids = [i.id for i in self.st.checklist]
        if req.item not in ids:
            return invalid(f"no checklist item {req.item!r}; items: {', '.join(ids)}")
        step = next((f for f in self.rule.further if f.id == req.item), None)
        if step is not None and not role.at_least(step.role):
            return not_permitted(f"{req.actor} is {role.value}; {req.item!r} ({step.title}) is ticked by "
                                 f"{step.role.value} or above")
        if self.st.status == "resolved":
            return f"{self.st.workflow_id} is resolved"
        return None

    def _escalate_refusal(self, kind: str, d: Decision) -> str | None:
        role = self._role(d.actor)
        if not role.at_least(Role.ON_CALL):
            return not_permitted(f"{d.actor} is {role.value}; choosing a level needs on_call")
        if not self._manual_asked:
            return (f"{self.st.workflow_id} does not ask for a degradation level (only HL down past "
                    f"{self.manual_after} does); start one with `rollbackctl degrade`")
        if self._level_choice is not None:
            return f"level already chosen: {self.st.level_choice}"
        if d.level not in (2, 3):
            return invalid("choose degradation level 2 or 3 (--level 2|3)")
        if d.level == 3 and not role.at_least(Role.SUPER_ADMIN):
            return not_permitted(f"{d.actor} is {role.value}; level 3 needs super_admin")
        return None

    def _resolve_refusal(self, kind: str, req: ResolveRequest) -> str | None:
        role = self._role(req.actor)
        if not role.at_least(Role.ON_CALL):
            return not_permitted(f"{req.actor} is {role.value}; resolving needs on_call or above")
        if self._resolve is not None:
            return f"already being resolved by {self._resolve.actor}"
        if not self._ready:
            return "the incident is still taking its immediate action and paging; try again in a moment"
        if req.undo and not role.at_least(self.rule.recovery.role):
            return not_permitted(f"{req.actor} is {role.value}; undoing this rule's action needs "
                                 f"{self.rule.recovery.role.value}: {self.rule.recovery.why}")
        if self.st.condition == "firing":
            if not req.force:
                return (f"the monitor still reports {self.rule.alert} firing; resolve when it has cleared "
                        "(a super admin may --force with a reason)")
            if not role.at_least(Role.SUPER_ADMIN):
                return not_permitted("--force needs a super_admin and a --reason")
            if not req.reason.strip():
                return invalid("--force needs a super_admin and a --reason")
        return None

    def _check(self, kind: str, d: Decision) -> None:
        why = self.r.check_decision(kind, d)
        if why:
            _refuse(why)

    @workflow.update
    def tick(self, req: TickRequest) -> str:
        self.r.accept("tick", req, authorizes=False)
        item = next(i for i in self.st.checklist if i.id == req.item)
        item.done, item.by, item.at, item.note = req.done, req.actor, workflow.now(), req.note
        if req.done:
            self._acted(req.actor, item.title)
        self._wake += 1
        return f"{item.id} {'done' if req.done else 'reopened'} by {req.actor}"

    @tick.validator
    def _v_tick(self, req: TickRequest) -> None:
        self._check("tick", req)

    @workflow.update
    def escalate(self, d: Decision) -> DecisionAck:
        """HL still down after 5 minutes: the human's choice of degradation level 2 or 3."""
        self.r.accept("escalate", d, authorizes=False)  # the degradation it starts carries its own authority
        self._level_choice = d
        self.st.level_choice = f"level {d.level} by {d.actor}"
        for i in self.st.checklist:
            if i.id == "choose_level":
                i.done, i.by, i.at = True, d.actor, workflow.now()
        self._acted(d.actor, f"chose degradation level {d.level}")
        self._wake += 1
        return DecisionAck(accepted=True, step="level_choice",
                           message=f"degradation level {d.level} chosen by {d.actor}: starting it")

    @escalate.validator
    def _v_escalate(self, d: Decision) -> None:
        self._check("escalate", d)

    @workflow.update
    def resolve(self, req: ResolveRequest) -> str:
        # the signed resolve goes with the undo's change sets
        self.r.accept("resolve", req, authorizes=req.undo)
        self._resolve = req
        aw = self.r.progress.awaiting
        if aw is not None and aw.step == "acknowledge":  # resolving acknowledges too
            self.r.accept("confirm", Decision(actor=req.actor, reason="resolved"))
        self._acted(req.actor, "resolved")
        self._wake += 1
        return f"{self.st.workflow_id} resolving by {req.actor}" + (" with undo" if req.undo else "")

    @resolve.validator
    def _v_resolve(self, req: ResolveRequest) -> None:
        self._check("resolve", req)

    def _acted(self, actor: str, what: str) -> None:
        if self.st.sla.action_at is None:
            self.st.sla.action_at, self.st.sla.action_by, self.st.sla.action_what = workflow.now(), actor, what
            wf_metrics.seconds(series.INCIDENT_ACTION, self.st.sla.action_at - self.st.started_at,
                               drill=self.st.drill, rule=self.rule.id)

    def _on_delivery(self, d: Delivery) -> None:
        """paged_at once PagerDuty accepted the page (not when it was handed over)."""
        if (self.r.outbox and d.ok and d.channel is Channel.PAGERDUTY and d.event_action == "trigger"
                and self.st.sla.paged_at is None):
            self.st.sla.paged_at = d.at

    def _on_repage(self, level: int) -> None:
        now = workflow.now()
        if not self.st.sla.ack_breached:
            wf_metrics.count(series.SLA_BREACHES, drill=self.st.drill, rule=self.rule.id, sla="ack")
        self.st.sla.ack_breached = True
        self.st.sla.level = level
        self.st.sla.ack_due = now + self.ack_sla
        self.st.sla.escalations.append(Escalation(
            at=now, level=level, why=f"not acknowledged within {self.ack_sla}: paging level {level} "
                                     f"({escalation.get(level).name})"))

    # -- the incident -----------------------------------------------------------------------------------
    @workflow.run
    async def run(self, inp: IncidentInput) -> IncidentResult:
        self.r.outbox = workflow.patched(PAGER_OUTBOX)
        patches_first()
        roster = asyncio.create_task(self.r.load_roster())
        immediate = asyncio.create_task(self._take_actions("immediate"))
        try:
            await workflow.wait_condition(lambda: immediate.done(), timeout=self.page_after)
        except asyncio.TimeoutError:
            pass
        await self._page_opened(inp)
        self._ack_task = asyncio.create_task(self._await_ack())  # escalates even if etcd is slow for the roster
        await roster
        self._ready = self.st.ready = True
        await self._loop()
        if not immediate.done():  # resolved while the trading core never took the action: stop trying
            immediate.cancel()
        try:
            await immediate
        except (asyncio.CancelledError, FailureError):
            for a in self.st.actions:
                if a.status == "pending":
                    a.status, a.detail = "failed", "not taken: resolved before the trading core answered"
        await self._close()
        await self.r.drain()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return IncidentResult(incident_id=self.incident_id, rule=self.rule.id, symbol=inp.symbol,
                              status=self.st.status, resolved_by=self.st.resolved_by, actions=self.st.actions,
                              sla=self.st.sla)

    def _summary(self) -> str:
        vals = ", ".join(f"{k}={v}" for k, v in self.st.last_values.items())
        sym = f" [{self.st.symbol}]" if self.st.symbol else ""
        return f"P0 {self.rule.alert}{sym}: {self.st.detail or vals}"

    async def _page_opened(self, inp: IncidentInput) -> None:
        acts = "; ".join(f"{a.what}: {a.status}" + (f" ({a.detail})" if a.detail else "")
                         for a in self.st.actions) or "pending"
        pending = not self._immediate_done
        steps = " | ".join(f.title for f in self.rule.further)
        text = (f"{self._summary()}. Immediate action ({self.rule.manual_action}): {acts}"
                + (" — still retrying: the trading core has not answered" if pending else "")
                + f". Next: {steps}. Acknowledge within {self.ack_sla}: `rollbackctl ack {self.st.workflow_id} --as OP`.")
        now = workflow.now()
        sla = self.st.sla
        sla.ack_due, sla.action_due = now + self.ack_sla, now + self.action_sla
        if self.r.outbox:
            sla.page_submitted_at = now  # paged_at is set when PagerDuty accepts it (_on_delivery)
        else:
            sla.paged_at = now
        self._paged = True
        await self.r.notify(text, page=True, severity="critical", kind="opened", member=self.st.symbol,
                            group=self.r.group, asks="acknowledge")

    async def _await_ack(self) -> None:
        _, d = await self.r.run_await(AwaitConfirmation(
            name="acknowledge", expects="confirm", min_role=Role.ON_CALL, timeout=self.ack_sla,
            on_timeout="repage_and_wait",
            prompt=f"P0 {self.rule.alert}: acknowledge (`rollbackctl ack {self.st.workflow_id} --as OP`)"))
        sla = self.st.sla
        sla.acked_at, sla.acked_by = workflow.now(), d.actor
        wf_metrics.seconds(series.INCIDENT_ACK, sla.acked_at - self.st.started_at, drill=self.st.drill, rule=self.rule.id)
        if self.st.status == "open":
            self.st.status = "acknowledged"
        if self.r.outbox:  # every alert it opened, at every level paged
            await self.r.notify(f"{self.st.workflow_id} acknowledged by {d.actor}", page=True,
                                event_action="acknowledge", wait=False, kind="acknowledged")
        else:
            for lvl in range(1, self.r.progress.page_level + 1):  # every level paged so far
                await self.r.notify(f"{self.st.workflow_id} acknowledged by {d.actor}", page=True,
                                    event_action="acknowledge", level=lvl, wait=False)
        if self.rule.rollback is not None and self._resolve is None:  # a real acknowledgement, not a resolve
            await self._start_rollback(d.actor)
        self._wake += 1

    async def _loop(self) -> None:
        while self._resolve is None:
            now = workflow.now()
            sla = self.st.sla
            deadlines: list[datetime] = []
            # 10-minute action SLA
            if sla.action_at is None and sla.action_breached_at is None:
                if now >= sla.action_due:
                    sla.action_breached_at = now
                    wf_metrics.count(series.SLA_BREACHES, drill=self.st.drill, rule=self.rule.id, sla="action")
                    await self.r.notify(
                        f"ACTION SLA BREACHED: {self._summary()}: no action recorded {self.action_sla} after the "
                        f"page (acknowledged: {sla.acked_by or 'no'}). Tick the checklist "
                        f"(`rollbackctl tick {self.st.workflow_id} ITEM --as OP`) or resolve.",
                        page=True, severity="critical", kind="action_sla", member=self.st.symbol, group=self.r.group)
                    continue
                deadlines.append(sla.action_due)
            # HL: "if >5min -> manual"
            if self.manual_after is not None and not self._manual_asked and self.st.condition == "firing":
                due = self.st.started_at + self.manual_after
                if now >= due:
                    await self._ask_level()
                    continue
                deadlines.append(due)
            if self._level_choice is not None and not any(c.startswith("degrade-") for c in self.st.children):
                await self._start_degradation(self._level_choice)
                continue
            if self._reapply and self._immediate_done:
                self._reapply, self._undone = False, False
                await self.r.notify(f"{self._summary()}: fired again after recovery; taking the immediate action "
                                    "again (no further automatic recovery)", page=True, severity="critical",
                                    kind="refired", member=self.st.symbol, group=self.r.group)
                await self._take_actions("reapply")
                continue
            # auto-recovery: once, after the condition stayed clear for the hold time
            if (self.rule.recovery.mode == "auto" and not self._recovery_tried and self._immediate_done
                    and self.st.condition == "clear" and self._in_force):
                due = self.st.condition_since + self.clear_hold
                if now >= due:
                    await self._auto_recover()
                    continue
                deadlines.append(due)
            wake = self._wake
            timeout = (min(deadlines) - now) if deadlines else None
            try:
                await workflow.wait_condition(lambda: self._wake != wake, timeout=timeout)
            except asyncio.TimeoutError:
                pass

    # -- actions ------------------------------------------------------------------------------------------
    def _record(self, phase: str, what: str, status: str, detail: str = "", by: str = MONITOR_IDENTITY) -> ActionRecord:
        rec = ActionRecord(at=workflow.now(), phase=phase, what=what, status=status, detail=detail, by=by)
        self.st.actions.append(rec)
        return rec

    async def _take_actions(self, phase: str) -> None:
        """The rule's immediate action: switch moves and trading-core actions, each once (idempotent keys)."""
        reason = f"P0 {self.rule.alert}" + (f" [{self.st.symbol}]" if self.st.symbol else "") + \
                 f": {self.rule.manual_action} (incident {self.incident_id})"
        for m in self.rule.actions:
            if isinstance(m, alerts.SwitchMove):
                await self._switch_move(phase, m, reason)
        core = self.rule.core_moves
        if core:
            recs = [self._record(phase, f"core {m.action}", "pending") for m in core]
            done = await self.r.run_core_actions(
                CoreActions(name=phase, actions=tuple((m.action, m.body_for(self.st.symbol)) for m in core)))
            for m, rec, res in zip(core, recs, done):
                ok = res.ok
                rec.status, rec.detail, rec.at = ("ok" if ok else "failed"), ("" if ok else str(res)), workflow.now()
                if ok and m.undo and m.action not in self._in_force:
                    self._in_force.append(m.action)
        if phase == "immediate":
            self._immediate_done = True
            if self._paged:  # the page went out before the trading core answered
                await self.r.notify(f"{self._summary()}: immediate action now applied: "
                                    + "; ".join(f"{a.what}: {a.status}" for a in self.st.actions if a.phase == phase),
                                    page=False)
        self._wake += 1

    async def _switch_move(self, phase: str, m: alerts.SwitchMove, reason: str) -> None:
        sw = switches.get(m.switch)
        for attempt in range(2):
            snap = await self.r.take_snapshot()
            cur = snap.switches[m.switch].value
            if cur == m.value or (m.mode == "lower_to" and cur is not None and cur <= m.value):
                self._record(phase, f"switch {m.switch}", "skipped",
                             f"already {sw.render(cur)}" + (f" (at or below {sw.render(m.value)})" if m.mode == "lower_to" else ""))
                return
            step = ApplySwitches(name=f"{phase}_{m.switch}", changes={m.switch: m.value}, authority="preapproved",
                                 reason=reason, verify_timeout=timedelta(seconds=5))
            try:
                res = await self.r.run_apply(step, expected={m.switch: cur}, action="p0.immediate_action")
            except StepFailed as e:
                if e.conflict and attempt == 0:
                    continue  # changed between the read and the write: read again
                self._record(phase, f"switch {m.switch}", "failed", str(e))
                return
            self._set_by_incident[m.switch] = (cur, m.value)
            self._record(phase, f"switch {m.switch}", "ok",
                         f"{sw.render(cur)} -> {sw.render(m.value)} (audit {res.audit_id})")
            return

    async def _auto_recover(self, why: str = "") -> None:
        self._recovery_tried = True
        why = why or f"condition clear for {self.clear_hold}"
        undo = [m for m in self.rule.core_moves if m.undo and m.action in self._in_force]
        try:
            guard: UndoGuardResult = await workflow.execute_activity_method(
                IncidentOps.undo_guard, UndoGuardInput(workflow_id=self.st.workflow_id, actions=[m.action for m in undo]),
                start_to_close_timeout=timedelta(seconds=20),
                retry_policy=RetryPolicy(maximum_attempts=3))
        except FailureError as e:
            guard = UndoGuardResult(ok=False, reason=f"could not check who else holds it: {getattr(e, 'cause', None) or e}")
        if not guard.ok:
            self.st.recovery = f"withheld: {guard.reason}; left for a human (`rollbackctl resolve ID --undo`)"
            self._record("auto_recovery", ", ".join(f"core {m.undo}" for m in undo), "skipped", guard.reason)
            await self.r.notify(f"{self._summary()}: {why}, automatic recovery withheld: {guard.reason}", page=False)
            return
        await self._undo("auto_recovery", MONITOR_IDENTITY)
        self.st.recovery = f"done at {workflow.now():%H:%M:%S}: " + ", ".join(m.undo for m in undo)
        await self.r.notify(f"{self._summary()}: {why}; automatic recovery: "
                            + ", ".join(m.undo for m in undo) + " (taken once; resolve when satisfied)",
                            page=True, severity="info", update=True, kind="recovered")

    async def _undo(self, phase: str, actor: str) -> None:
        """Undo the immediate action: core actions by their `undo`, switches by compare-and-swap."""
        core = [m for m in reversed(self.rule.core_moves) if m.undo and m.action in self._in_force]
        if core:
            recs = [self._record(phase, f"core {m.undo}", "pending", by=actor) for m in core]
            done = await self.r.run_core_actions(
                CoreActions(name=phase, actions=tuple((m.undo, m.body_for(self.st.symbol)) for m in core)))
            for m, rec, res in zip(core, recs, done):
                ok = res.ok
                rec.status, rec.detail, rec.at = ("ok" if ok else "failed"), ("" if ok else str(res)), workflow.now()
                if ok:
                    self._in_force.remove(m.action)
        if phase == "human_undo":
            glass = await self._second_approval(actor)
            for name, (before, set_to) in list(self._set_by_incident.items()):
                sw = switches.get(name)
                step = ApplySwitches(name=f"{phase}_{name}", changes={name: before}, authority="owner",
                                     reason=f"undo P0 {self.rule.alert} (incident {self.incident_id}): "
                                            f"{name} back to {sw.render(before)}", verify_timeout=timedelta(seconds=5))
                try:
                    res = await self.r.run_apply(step, expected={name: set_to}, actor=actor, action="p0.undo",
                                                 break_glass=glass)
                    self._record(phase, f"switch {name}", "ok", f"{sw.render(set_to)} -> {sw.render(before)} "
                                                                f"(audit {res.audit_id})", by=actor)
                    del self._set_by_incident[name]
                except StepFailed as e:
                    status = "conflict" if e.conflict else "failed"
                    self._record(phase, f"switch {name}", status,
                                 ("changed by someone since the incident set it: left as is. " if status == "conflict"
                                  else "") + str(e), by=actor)
        self._undone = True

    async def _second_approval(self, actor: str) -> BreakGlass | None:
        """Two-person rule (signing on): an undo that re-enables a super admin's switch (e.g.
        `liquidation_enabled`) waits for a second super admin's signed approval, re-paging while nobody
        answers; a break-glass confirm by the resolver forces it alone (paged to every level)."""
        back = {name: before for name, (before, _) in self._set_by_incident.items()}
        if not back or self.r.two_person(back) < 2:
            return None
        _, ok = await self.r.run_await(AwaitConfirmation(
            name="second_approval", expects="confirm", min_role=Role.SUPER_ADMIN, timeout=self.ack_sla, approvals=2,
            prompt=f"{actor} resolves {self.st.workflow_id} and undoes " + ", ".join(
                f"{k}={switches.get(k).render(v)}" for k, v in back.items())
                   + ": a second super_admin must approve (`rollbackctl confirm ID --as OTHER`)"),
            approved_by=(actor,))
        glass = ok.glass() if ok is not None else None
        if glass is None:
            return None
        await self.r.page_everyone(f"BREAK-GLASS: {self.st.workflow_id}: undo of {', '.join(back)} by {ok.actor} "
                                   f"without a second approval: {ok.break_glass}")
        return glass

    async def _ask_level(self) -> None:
        self._manual_asked = True
        self.st.level_choice = "asked"
        level = self.r.progress.page_level + 1
        self.r.progress.page_level = level
        self._on_repage_level(level, f"{self.rule.alert} still firing {self.manual_after} after it began")
        prompt = self.rule.manual_after.prompt if self.rule.manual_after else "choose degradation level 2 or 3"
        await self.r.notify(f"{self._summary()}. {prompt} (`rollbackctl escalate {self.st.workflow_id} --level 2|3 "
                            "--as OP`)", page=True, severity="critical", kind="level_choice")

    def _on_repage_level(self, level: int, why: str) -> None:
        self.st.sla.level = level
        self.st.sla.escalations.append(Escalation(at=workflow.now(), level=level, why=why))

    async def _start_degradation(self, d: Decision) -> None:
        wid = degrade_workflow_id(d.level, self.incident_id)
        self.st.children.append(wid)
        await workflow.start_child_workflow(
            DegradationWorkflow.run,
            DegradeInput(level=d.level, incident_id=self.incident_id, requested_by=d.actor, drill=self.st.drill,
                         durations=self.child_durations,
                         reason=f"P0 {self.rule.alert}: {self.st.detail or 'still down'}; chosen by {d.actor}"
                                + (f": {d.reason}" if d.reason else "")),
            id=wid, parent_close_policy=workflow.ParentClosePolicy.ABANDON)
        await self.r.notify(f"{self.st.workflow_id}: {d.actor} chose degradation level {d.level}: started {wid}",
                            page=False)

    async def _start_rollback(self, actor: str) -> None:
        spec = self.rule.rollback
        wid = rollback_workflow_id(self.incident_id)
        self.st.children.append(wid)
        await workflow.start_child_workflow(
            RollbackWorkflow.run,
            RollbackInput(incident_id=self.incident_id, summary=self._summary()[:500], severity=Severity(spec.severity),
                          scope=Scope(spec.scope), requested_by=actor, drill=self.st.drill,
                          durations=self.child_durations,
                          reason=f"P0 {self.rule.alert} acknowledged by {actor}: {spec.why}"),
            id=wid, parent_close_policy=workflow.ParentClosePolicy.ABANDON)
        await self.r.notify(f"{self.st.workflow_id}: decision-tree rollback {wid} started on {actor}'s "
                            f"acknowledgement ({spec.severity}, {spec.scope}); cancel it there if it is not warranted",
                            page=False)

    async def _close(self) -> None:
        req = self._resolve
        ack = self._ack_task
        if ack is not None and not ack.done():  # resolving acknowledges: end the wait, let its notices go out
            await workflow.wait_condition(lambda: self.r.progress.awaiting is not None or ack.done())
            if self.r.progress.awaiting is not None and self.r.progress.awaiting.step == "acknowledge":
                self.r.accept("confirm", Decision(actor=req.actor, reason="resolved"))
        if ack is not None:
            await ack
        if req.undo:
            await self._undo("human_undo", req.actor)
        elif (self.rule.recovery.mode == "auto" and self._in_force and not self._recovery_tried
              and self.st.condition == "clear"):
            # resolved before the clear hold ran out: recover now (same guard, still once)
            await self._auto_recover(f"resolved by {req.actor} before the {self.clear_hold} clear hold ran out")
        self.st.status = "resolved"
        self.st.resolved_by, self.st.resolved_at = req.actor, workflow.now()
        self.r.progress.status = self.r.progress.result = "resolved"
        wf_metrics.count(series.WORKFLOWS_FINISHED, kind="incident", result="resolved", drill=self.st.drill)
        self.r.progress.detail = f"resolved by {req.actor}" + (f": {req.reason}" if req.reason else "")
        self.r.progress.current_step = None
        text = (f"RESOLVED {self._summary()} by {req.actor}" + (f": {req.reason}" if req.reason else "")
                + ("" if not self._in_force else f". Still in force: {', '.join(self._in_force)}"))
        if self.r.outbox:
            await self._close_alerts(text)
            return
        for lvl in range(1, self.r.progress.page_level + 1):
            await self.r.notify(text, page=True, severity="info", event_action="resolve", level=lvl)

    async def _close_alerts(self, text: str) -> None:
        """Resolve what this incident opened, or hand it on to the rollback/degradation it started that
        still runs (it continues the work: its end resolves them)."""
        for child in reversed(self.st.children):
            if await self.r.hand_on(child):
                await self.r.notify(f"{text}. Its open pages are handed on to {child}, which still runs.",
                                    page=False, kind="handed_on")
                return
        await self.r.notify(text, page=True, severity="info", event_action="resolve", kind="resolved")
        await self.r.close_alerts()
