"""CanaryWorkflow: a Phase 2 or Phase 3 canary (manual/canary.py), stage by stage, for days.

start (= the plan's approval: the starter holds the owner role of every switch it touches)
  -> snapshot "Phase 1"
  -> (signing on) a plan under the two-person rule waits for a second owner's signed approval, then
     snapshots Phase 1 again (what is in force once it is approved)
  -> for each stage: apply its profile (one transaction, authority "plan", approved_by the starter,
     source this workflow) -> observe its days (health checks at the stage's interval; a breach rolls
     back automatically) -> its gate (automatic, or wait for a risk manager's `promote`, still checking)
  -> passed; or rolled back to the snapshot (one transaction, "canary rollback" in its reason) + page.

Humans steer it with Updates (refused by their validators when the role or the moment is wrong):
pause / resume (stage time frozen while paused; checks go on), promote (end the current stage's
wait now; also passes its gate), abort (roll back now), extend (lengthen the current stage). A
rollback workflow pauses it with the `pause_for_rollback` signal: nothing promotes over a rollback,
and the canary does not act on breaches while that rollback owns the switches.

History stays bounded: after a health check, once the run's history reaches `history_limit` events
(default 2000), the workflow continues as new, carrying its state (CanaryState), the observation
clock included.

Signed start (signing on, patch "signed-canary-start"): the start must carry the requester's
signature for this workflow id ("canary.start"), checked before anything is read or written. If
any change set the canary may write falls under the two-person rule (a stage profile, e.g. Phase 3's
`global_betting_enabled=true`, or the rollback to the Phase 1 snapshot, which may re-enable a
super-admin switch), the start waits for a second, different operator of the plan's owner role
(`rollbackctl confirm <id> --as OTHER`, signed) for `approval_timeout`, else ends `not_started` with
nothing applied; or the super admin who starts it breaks glass (applied, paged to every level, marked
in the audit record of each change set under the rule). The signed requests (start, approval,
decisions) ride with every change set and are re-checked by the worker; they and the nonces are
carried across continue-as-new, the nonces owned by "<workflow id>/<first run id>" in etcd.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow

from workflows import metrics as wf_metrics
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from core import metrics as series
    from contracts import errors
    from contracts.errors import invalid, not_permitted, refusal_error
    from contracts.changes import BreakGlass
    from activities.switch_activities import CanaryClaim, SwitchActivities
    from manual import approvals, canary, switches
    from manual.canary import human
    from contracts.roles import Role
    from manual.steps import ApplySwitches, AwaitConfirmation
    from workflows.canary_models import (
        KEEP_DECISIONS,
        KEEP_RECORDS,
        START_APPROVAL,
        CanaryDecision,
        CanaryInput,
        CanaryResult,
        CanaryState,
        CanaryStatus,
        StageRecord,
    )
    from contracts.progress import Decision, DecisionAck, DecisionRecord, Progress
    from workflows.alerting import PagingHandlers
    from workflows.base import PAGER_OUTBOX, StepFailed, patches_first
    from workflows.runner import ObserveClock, Runner

SEQ_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=5),
                        non_retryable_error_types=errors.SWITCH_NON_RETRYABLE)
KINDS = ("pause", "resume", "promote", "abort", "extend")
NEEDS = canary.DECISION_ROLES  # who may make each decision: the manual's table
MAX_EXTEND = timedelta(days=30)
FINAL = ("passed", "rolled_back", "aborted", "refused", "not_started", "failed", "rollback_incomplete")
SIGNED_START = "signed-canary-start"  # patch: the signed start and the two-person rule
# patch: the worker (not the starter's CLI, whose etcd user is read-only) moves the phase's counter to n
SEQ_BY_WORKER = "canary-seq-by-worker"


def _render(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={switches.get(k).render(v)}" for k, v in values.items())


@workflow.defn(name="CanaryWorkflow")
class CanaryWorkflow(PagingHandlers):
    @workflow.init
    def __init__(self, inp: CanaryInput) -> None:
        self.inp = inp
        plan = inp.plan or canary.plan_for(inp.phase)
        self.plan = plan.scaled(inp.time_scale) if inp.time_scale != 1 else plan
        wid = workflow.info().workflow_id
        self.r = Runner(wid, "canary", requested_by=inp.requested_by, drill=inp.drill, incident=wid)
        self.st: CanaryState = inp.carry or CanaryState()
        if self.st.progress is not None:
            self.r.progress = self.st.progress
        self.r.roster = dict(self.st.roster)
        self.r.snapshot = self.st.snapshot
        # the signed requests behind the change sets, and the nonces seen (carried across continue-as-new)
        self.r.proofs = list(self.st.proofs)
        self.r.used_nonces = list(self.st.used_nonces)
        for k in KINDS:
            self.r.standing[k] = self._refusal
        self._tasks: list[asyncio.Task] = []
        self.r.progress.level = self._level()

    # -- views --------------------------------------------------------------------------------------
    @property
    def wid(self) -> str:
        return self.r.wid

    def _stage(self):
        return self.plan.stages[min(self.st.stage, len(self.plan.stages) - 1)]

    def _level(self) -> str:
        s = self._stage()
        return f"{self.plan.phase} stage {s.number}/{len(self.plan.stages)}: {s.name}"

    @workflow.query
    def progress(self) -> Progress:
        return self.r.progress

    @workflow.query
    def status(self) -> CanaryStatus:
        st, p, s = self.st, self.r.progress, self._stage()
        c = st.clock
        now = workflow.now()
        out = CanaryStatus(
            workflow_id=self.wid, phase=self.plan.phase, title=self.plan.title, status=self._status_word(),
            run=st.runs, stages=len(self.plan.stages), part=st.part, failed_in_a_row=c.streak if c else 0,
            paused=st.paused, paused_by=st.paused_by, pause_reason=st.pause_reason, waiting_for=self._why_waiting(),
            recent_checks=p.checks[-10:], stage_log=st.stages, extensions=st.extensions,
            time_scale=self.plan.time_scale, result=p.result, detail=p.detail, drill=p.drill)
        if p.result is None and not self._awaiting_approval():  # nothing applied before the start is approved
            out.stage, out.stage_name, out.stage_days = s.number, s.name, s.days
            out.check_interval = s.observe.interval
        if c is not None and p.result is None:
            out.stage_duration = c.duration
            out.time_left = c.left(now)
            out.observed = c.duration - out.time_left
            out.next_check_at = c.next_check_at
        return out

    def _status_word(self) -> str:
        p = self.r.progress
        if p.result is not None:
            return p.result
        if p.status == "rolling_back":
            return "rolling_back"
        if self._awaiting_approval():
            return "awaiting_approval"
        if self.st.paused:
            return "paused"
        if self.st.part == "gate":
            return "waiting_gate"
        return "running"

    def _why_waiting(self) -> str:
        st, p, s = self.st, self.r.progress, self._stage()
        if p.result is not None:
            return f"finished: {p.result}" + (f" ({p.detail})" if p.detail else "")
        if p.status == "rolling_back":
            return "rolling back to the Phase 1 snapshot"
        if self._awaiting_approval():
            aw = p.awaiting
            return f"{aw.prompt} Waiting until {aw.deadline:%Y-%m-%d %H:%M}Z."
        left = human(st.clock.left(workflow.now())) if st.clock else "-"
        if st.paused:
            extra = (f"; breaches are recorded, not acted on, while {st.paused_for_rollback} owns the switches"
                     if st.paused_for_rollback else "")
            return (f"paused by {st.paused_by} ({st.pause_reason or 'no reason given'}): stage {s.number} time "
                    f"frozen with {left} left; checks go on{extra}. `resume` needs {NEEDS['resume'].value}")
        if st.part == "gate" and s.gate is not None:
            return (f"gate after stage {s.number} ({s.name}): waiting for a {s.gate.min_role.value} to promote "
                    f"(since {st.gate_since:%Y-%m-%d %H:%M}Z); checks go on. {s.gate.prompt}")
        if st.part == "observe":
            after = (f"then the gate: a {s.gate.min_role.value} promotes" if s.gate else
                     "then the next stage automatically" if s.number < len(self.plan.stages) else
                     "then the canary passes")
            return (f"observing stage {s.number} ({s.name}): {left} left, a check every "
                    f"{human(s.observe.interval)}, {s.observe.consecutive} failed in a row roll back; {after}")
        return f"starting stage {s.number} ({s.name})"

    def _awaiting_approval(self) -> bool:
        aw = self.r.progress.awaiting
        return aw is not None and aw.step == START_APPROVAL

    # -- human input ----------------------------------------------------------------------------------
    def _refusal(self, kind: str, d: Decision) -> str | None:
        """Why `kind` from `d.actor` is refused now (pure: validators call it; no state change)."""
        st, p, s = self.st, self.r.progress, self._stage()
        role = self.r.role_of(d.actor)
        if role is None:
            return not_permitted(f"{d.actor!r} is not an operator")
        need = NEEDS[kind]
        if kind == "promote" and st.part == "gate" and s.gate is not None and s.gate.min_role.rank > need.rank:
            need = s.gate.min_role
        if not role.at_least(need):
            return not_permitted(f"{d.actor} is {role.value}; {kind} needs {need.value} or above")
        if p.result is not None or st.part == "done":
            return f"{self.wid} has finished ({p.result}): nothing to {kind}"
        if p.status == "rolling_back" or st.abort is not None:
            return f"{self.wid} is rolling back: nothing to {kind}"
        if self._awaiting_approval():
            return (f"{self.wid} has not started: its start waits for a second {p.awaiting.min_role}'s approval "
                    f"(`rollbackctl confirm {self.wid} --as OTHER`); nothing is applied, and nothing will be if none "
                    f"comes by {p.awaiting.deadline:%Y-%m-%d %H:%M}Z: nothing to {kind}")
        if kind == "pause" and st.paused:
            return f"{self.wid} is already paused by {st.paused_by}"
        if kind == "resume":
            if not st.paused:
                return f"{self.wid} is not paused"
            if st.paused_for_rollback and not d.reason.strip():
                return invalid(f"{st.paused_for_rollback} paused this canary: resuming over it needs a --reason")
        if kind == "promote":
            if st.paused:
                return f"{self.wid} is paused: resume it before promoting"
            if st.part not in ("observe", "gate"):
                return f"{self.wid} is not in a stage's wait (part {st.part})"
        if kind == "abort" and not d.reason.strip():
            return invalid("abort needs a --reason (it is written in the rollback's audit record)")
        if kind == "extend":
            if st.part != "observe":
                return (f"{self.wid} is at stage {s.number}'s gate: it already waits for a promote; extend lengthens "
                        "a stage's observation" if st.part == "gate" else f"{self.wid} is not observing a stage")
            by = getattr(d, "extend_by", None)
            if by is None or by <= timedelta(0):
                return invalid("extend needs a positive --by (e.g. 12h)")
            if by > MAX_EXTEND:
                return invalid(f"extend by at most {human(MAX_EXTEND)} at a time")
        return None

    def _validate(self, kind: str, d: Decision) -> None:
        why = self.r.check_decision(kind, d)
        if why:
            raise refusal_error(why)

    def _set_paused(self, paused: bool, by: str | None = None, reason: str = "") -> None:
        st, now = self.st, workflow.now()
        if st.clock is not None:
            st.clock.tick(now)  # count the time up to now before freezing (or not count the pause)
            st.clock.paused = paused
            st.clock.touch()
        st.paused = paused
        if paused:
            st.paused_by, st.pause_reason, st.paused_since = by, reason, now
        else:
            st.paused_by, st.pause_reason, st.paused_since = None, "", None
            st.paused_for_rollback = None
            if st.clock is not None:
                st.clock.armed = True

    @workflow.update
    def pause(self, d: CanaryDecision) -> DecisionAck:
        ack = self.r.accept("pause", d)
        self._set_paused(True, d.actor, d.reason)
        return ack

    @pause.validator
    def _v_pause(self, d: CanaryDecision) -> None:
        self._validate("pause", d)

    @workflow.update
    def resume(self, d: CanaryDecision) -> DecisionAck:
        ack = self.r.accept("resume", d)
        self._set_paused(False)
        return ack

    @resume.validator
    def _v_resume(self, d: CanaryDecision) -> None:
        self._validate("resume", d)

    @workflow.update
    def promote(self, d: CanaryDecision) -> DecisionAck:
        ack = self.r.accept("promote", d)
        self.st.promoted_by = d.actor
        if self.st.clock is not None:
            self.st.clock.stop = "promoted"
            self.st.clock.touch()
        return ack

    @promote.validator
    def _v_promote(self, d: CanaryDecision) -> None:
        self._validate("promote", d)

    @workflow.update
    def abort(self, d: CanaryDecision) -> DecisionAck:
        ack = self.r.accept("abort", d)
        self.st.abort = d
        if self.st.clock is not None:
            self.st.clock.stop = "aborted"
            self.st.clock.touch()
        return ack

    @abort.validator
    def _v_abort(self, d: CanaryDecision) -> None:
        self._validate("abort", d)

    @workflow.update
    def extend(self, d: CanaryDecision) -> DecisionAck:
        ack = self.r.accept("extend", d)
        c = self.st.clock
        c.duration += d.extend_by
        c.touch()
        self.st.extensions.append(f"stage {self._stage().number} +{human(d.extend_by)} by {d.actor}"
                                  + (f": {d.reason}" if d.reason else ""))
        return ack

    @extend.validator
    def _v_extend(self, d: CanaryDecision) -> None:
        self._validate("extend", d)

    @workflow.update
    def confirm(self, d: CanaryDecision) -> DecisionAck:
        """The second approval of a start under the two-person rule (`rollbackctl confirm <id>`)."""
        return self.r.accept("confirm", d)

    @confirm.validator
    def _v_confirm(self, d: CanaryDecision) -> None:
        self._validate("confirm", d)

    @workflow.signal
    def pause_for_rollback(self, rollback_workflow_id: str) -> None:
        """A rollback started (activity ops.pause_canaries): hold, and leave the switches to it."""
        st = self.st
        if self.r.progress.result is not None or self.r.progress.status == "rolling_back":
            return
        self.r.progress.decisions.append(DecisionRecord(at=workflow.now(), kind="pause_for_rollback",
                                                        actor=rollback_workflow_id, accepted=True))
        if not st.paused:
            self._set_paused(True, rollback_workflow_id, "a rollback is running: nothing promotes over it")
        st.paused_for_rollback = rollback_workflow_id
        if st.clock is not None:
            st.clock.armed = False
            st.clock.touch()
        self._tasks.append(asyncio.create_task(self.r.notify(
            f"{self.wid} paused: {rollback_workflow_id} is running. Stage time frozen; `rollbackctl canary resume "
            f"{self.wid} --as OP --reason ...` or `abort` when it is over.", page=False)))

    # -- the run ----------------------------------------------------------------------------------------
    @workflow.run
    async def run(self, inp: CanaryInput) -> CanaryResult:
        st, r = self.st, self.r
        r.outbox = workflow.patched(PAGER_OUTBOX)
        patches_first(SEQ_BY_WORKER, SIGNED_START)
        await r.load_roster()
        st.roster = dict(r.roster)
        if inp.carry is None and inp.seq is not None and workflow.patched(SEQ_BY_WORKER):
            await self._claim_seq(inp.seq)
        if inp.carry is None:
            st.started_at = workflow.now()
            # Signing on: the start is signed, and the two-person rule applies (histories from before
            # this patch replay without it; with signing off there is nothing to check).
            signed = r.signing and workflow.patched(SIGNED_START)
            refused = ((r.accept_start("canary.start", inp.proof, inp.signed_values()) if signed else None)
                       or self._approval_refusal() or (self._glass_refusal() if signed else None))
            if refused:
                return await self._finish("refused", refused)
            r.snapshot = st.snapshot = await r.take_snapshot()
            if signed:
                st.start_approvers = [inp.requested_by]
                waited, not_started = await self._second_approval()
                if not_started:
                    return await self._finish("not_started", not_started)
                if waited:  # Phase 1 is what is in force once the start is approved: look again
                    r.snapshot = st.snapshot = await r.take_snapshot()
            r.progress.snapshot_revision = st.snapshot.revision
            r.progress.snapshot = st.config = st.snapshot.values()
            await r.notify(
                f"{self.wid}: {self.plan.title} started by {inp.requested_by}{self._approvals_note()}"
                f"{self.plan.scale_note()}: "
                f"{len(self.plan.stages)} stages over {human(self.plan.total)}. Phase 1 snapshot at etcd revision "
                f"{st.snapshot.revision}." + (f" Reason: {inp.reason}" if inp.reason else ""), page=False, wait=False)
        try:
            outcome = await self._stages()
        except StepFailed as e:
            outcome = "failed"
            r.progress.detail = str(e)
            await r.notify(f"{self.wid} stopped: {e}", page=True, severity="critical", kind="stopped")
        if outcome == "continue_as_new":
            await self._drain()
            await workflow.wait_condition(workflow.all_handlers_finished)
            # The next run goes on under the start verified here: its proofs ride in the carried state.
            workflow.continue_as_new(CanaryInput(
                phase=inp.phase, requested_by=inp.requested_by, reason=inp.reason, plan=self.plan, time_scale=1.0,
                drill=inp.drill, history_limit=inp.history_limit, carry=self._carry()))
        return await self._finish(outcome, r.progress.detail)

    async def _claim_seq(self, n: int) -> None:
        """`canary-<phase>-<n>` exists (Temporal created it: ids are unique): the phase's counter says so, so
        the next start looks at n first. Only the worker writes it (and checks n against this workflow's id)."""
        await workflow.execute_activity_method(
            SwitchActivities.claim_canary_seq, CanaryClaim(phase=self.inp.phase, n=n),
            start_to_close_timeout=timedelta(seconds=10), retry_policy=SEQ_RETRY)

    def _approval_refusal(self) -> str | None:
        who, plan = self.inp.requested_by, self.plan
        if plan.phase != self.inp.phase:
            return f"the plan is for {plan.phase}, not {self.inp.phase}"
        role = self.r.role_of(who)
        need = plan.owner_role()
        if role is None:
            return f"{who!r} is not an operator"
        if not role.at_least(need):
            owned = [k for k in plan.touched() if switches.get(k).permission is need]
            return (f"{who} is {role.value}; starting {plan.phase} approves its plan, which changes "
                    f"{', '.join(owned)} (owned by {need.value}): it needs a {need.value}")
        return None

    def _glass_refusal(self) -> str | None:
        bg, who = self.inp.break_glass, self.inp.requested_by
        if bg is None:
            return None
        if not bg.strip():
            return "--break-glass needs a reason"
        role = self.r.role_of(who)
        if role is not Role.SUPER_ADMIN:
            return f"{who} is {role.value if role else 'not an operator'}; break-glass needs a super_admin"
        return None

    def _two_person_names(self) -> list[str]:
        """The switches under the two-person rule among every change set this canary may write: each
        stage's profile and the rollback to the Phase 1 snapshot (which may re-enable a super-admin
        switch). One approval of the start covers them all, the automatic rollback included."""
        snap = self.st.snapshot.values()
        restore = {k: snap[k] for k in self.plan.touched() if snap.get(k) is not None}
        sets = [*(s.profile for s in self.plan.stages), restore]
        if max(self.r.two_person(v) for v in sets) < 2:
            return []
        return sorted({n for v in sets for n in approvals.two_person_changes(v)})

    async def _second_approval(self) -> tuple[bool, str | None]:
        """Signing on, after the snapshot: the two-person rule for the start. Returns (whether it waited
        for a second approval, why it does not start: None when it may go on; nothing has been written).
        Once two owners approved (or glass was broken) any change set of the canary is covered."""
        st, r, inp, plan = self.st, self.r, self.inp, self.plan
        names = self._two_person_names()
        if not names:
            return False, None
        if inp.break_glass is not None:
            st.break_glass = BreakGlass(by=inp.requested_by, reason=inp.break_glass)
            await r.page_everyone(f"BREAK-GLASS: {self.wid}: {plan.title} started by {inp.requested_by} without a "
                                  f"second approval ({', '.join(names)}: two-person rule): {inp.break_glass}")
            return False, None
        need = plan.owner_role()
        prompt = (f"{plan.title} started by {inp.requested_by}: its change sets set {', '.join(names)} (two-person "
                  f"rule): a second {need.value} approves the start with `rollbackctl confirm {self.wid} --as OTHER`. "
                  "Nothing is applied until then.")
        await r.notify(f"{self.wid}: {prompt} (within {human(inp.approval_timeout)})", page=True, severity="warning",
                       wait=False, kind="second_approval")
        _, ok = await r.run_await(AwaitConfirmation(
            name=START_APPROVAL, expects="confirm", min_role=need, timeout=inp.approval_timeout, on_timeout="fail",
            approvals=2, prompt=prompt), approved_by=(inp.requested_by,))
        if ok is None:
            why = (f"no second {need.value} approved the start within {human(inp.approval_timeout)}: nothing "
                   "applied; start it again")
            await r.notify(f"{self.wid} NOT STARTED: {why}", page=True, severity="warning", kind="not_started")
            return True, why
        if ok.break_glass:
            st.break_glass = ok.glass()
            await r.page_everyone(f"BREAK-GLASS: {self.wid}: {plan.title} started by {inp.requested_by}, forced by "
                                  f"{ok.actor} without a second approval: {ok.break_glass}")
        else:
            st.start_approvers = [inp.requested_by, ok.actor]
        return True, None

    def _approvals_note(self) -> str:
        st = self.st
        if st.break_glass is not None:
            return f" [BREAK-GLASS by {st.break_glass.by}: no second approval]"
        if len(st.start_approvers) > 1:
            return f", approved by {' and '.join(st.start_approvers[1:])} (two-person rule)"
        return ""

    def _glass_for(self, values: dict[str, Any]) -> BreakGlass | None:
        """The start's break-glass, on the change sets it let through (those under the two-person rule)."""
        bg = self.st.break_glass
        return bg if bg is not None and approvals.two_person_changes(values) else None

    def _carry(self) -> CanaryState:
        st, p = self.st, self.r.progress
        p.history = p.history[-KEEP_RECORDS:]
        p.decisions = p.decisions[-KEEP_DECISIONS:]
        st.progress = p
        st.roster = dict(self.r.roster)
        st.proofs = list(self.r.proofs)
        st.used_nonces = list(self.r.used_nonces)
        st.runs += 1
        return st

    async def _drain(self) -> None:
        await self.r.drain()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()

    async def _stages(self) -> str:
        st, r, plan = self.st, self.r, self.plan
        while st.stage < len(plan.stages):
            stage = plan.stages[st.stage]
            if st.part == "apply":
                if st.paused:  # a pause across a stage boundary holds the next stage back
                    r.progress.current_step = f"s{stage.number}_hold"
                    await workflow.wait_condition(lambda: not st.paused or st.abort is not None)
                if st.abort is not None:
                    return await self._abort()
                st.stages.append(StageRecord(stage=stage.number, name=stage.name, started_at=workflow.now()))
                r.progress.level = self._level()
                if stage.apply is not None:
                    try:
                        st.stages[-1].applied = await self._apply_stage(stage)
                    except StepFailed as e:
                        return await self._rollback(f"stage {stage.number} ({stage.name}) profile not applied: {e}",
                                                    "failed")
                if st.abort is not None:  # arrived while the profile was being applied
                    return await self._abort()
                st.part = "observe"
                st.clock = ObserveClock(duration=stage.observe.duration, max_history=self.inp.history_limit,
                                        paused=st.paused, armed=st.paused_for_rollback is None)
                await r.notify(f"{self.wid}: stage {stage.number}/{len(plan.stages)} {stage.name} (days {stage.days}) "
                               f"started for {human(stage.duration)}" + (f": {_render(stage.profile)}" if stage.profile
                                                                        else " (no switch change)"),
                               page=False, wait=False)
            if st.part == "observe":
                res = await r.run_observe(stage.observe, values=st.config, clock=st.clock)
                if res != "ok" and res != "promoted":
                    return await self._after_observe(res, stage)
                if res == "promoted":
                    self._stage_done("promoted", f"promoted by {st.promoted_by} with {human(st.clock.left())} left")
                elif stage.gate is not None:
                    st.part = "gate"
                    st.gate_since = workflow.now()
                    st.clock.duration = st.clock.observed + stage.gate.timeout
                    await r.notify(f"{self.wid}: stage {stage.number} ({stage.name}) passed its checks; waiting for a "
                                   f"{stage.gate.min_role.value}. {stage.gate.prompt}", page=True, severity="info",
                                   kind="gate")
                else:
                    self._stage_done("passed", f"{human(stage.duration)} observed, checks passed")
            if st.part == "gate":
                # The gate: awaiting a promote while the stage's checks go on (a breach rolls back); no
                # answer within the gate's timeout re-pages (or reminds whoever saw the page) and waits on.
                gate = stage.gate
                aw = r.progress.awaiting
                if aw is None or aw.step != gate.name:  # (carried across continue-as-new: keep its pages)
                    aw = r.open_await(gate.name, "promote", gate.min_role, since=st.gate_since, deadline=None,
                                      prompt=gate.prompt)
                while True:
                    aw.deadline = workflow.now() + st.clock.left()
                    res = await r.run_observe(stage.observe.model_copy(update={"name": gate.name}), values=st.config,
                                              clock=st.clock)
                    if res != "ok":
                        break
                    st.clock.duration += gate.timeout
                    await r.unanswered(aw, asks=f"a {gate.min_role.value} to promote", prompt=gate.prompt,
                                       waited=human(workflow.now() - st.gate_since), severity="warning",
                                       deadline=workflow.now() + st.clock.left())
                if res == "continue_as_new":
                    return res  # still awaited: the next run carries the awaiting on
                r.close_await()
                if res != "promoted":
                    return await self._after_observe(res, stage)
                self._stage_done("promoted", f"gate passed: promoted by {st.promoted_by}")
            st.stage += 1
            st.part = "apply"
            st.clock, st.promoted_by, st.gate_since = None, None, None
        st.part = "done"
        return "passed"

    async def _after_observe(self, res: str, stage) -> str:
        if res == "continue_as_new":
            return res
        if res == "aborted":
            return await self._abort()
        # "breach": the observation's record says which checks failed
        detail = self.r.progress.history[-1].detail if self.r.progress.history else res
        return await self._rollback(f"stage {stage.number} ({stage.name}): {detail}", "rolled_back")

    def _stage_done(self, outcome: str, detail: str) -> None:
        rec = self.st.stages[-1] if self.st.stages else None
        if rec is not None and rec.outcome is None:
            rec.ended_at, rec.outcome, rec.detail = workflow.now(), outcome, detail

    async def _apply_stage(self, stage):
        st, step = self.st, stage.apply
        who = " and ".join(st.start_approvers) if len(st.start_approvers) > 1 else self.inp.requested_by
        reason = (f"{step.reason} of {self.wid}: plan approved by {who} at its start"
                  + (" (break-glass)" if st.break_glass is not None else "") + self.plan.scale_note())
        parsed = {k: switches.get(k).parse(v) for k, v in step.changes.items()}
        res = await self.r.run_apply(step.model_copy(update={"reason": reason}), approved_by=self.inp.requested_by,
                                     break_glass=self._glass_for(parsed))
        st.config = {**st.config, **parsed}
        st.set_by_canary = {**st.set_by_canary, **parsed}
        return res

    async def _abort(self) -> str:
        a = self.st.abort
        return await self._rollback(f"aborted by {a.actor}: {a.reason}", "aborted", by=a)

    async def _rollback(self, why: str, outcome: str, by: CanaryDecision | None = None) -> str:
        """Back to the Phase 1 snapshot, in one transaction: every switch this canary set and that still
        holds its value. A switch someone else changed since is left as they set it (and named in the page)."""
        st, r = self.st, self.r
        r.progress.status = "rolling_back"
        r.progress.awaiting = None
        self._stage_done(outcome, why)
        snap0 = st.snapshot.values()
        kept: list[str] = []
        restored: dict[str, Any] = {}
        for attempt in range(3):
            now_snap = await r.take_snapshot()
            cur = now_snap.values()
            restore, kept = {}, []
            for k, mine in st.set_by_canary.items():
                if cur.get(k) == snap0.get(k):
                    continue
                if cur.get(k) != mine:
                    kept.append(f"{k}={switches.get(k).render(cur.get(k))} (set by "
                                f"{now_snap.switches[k].updated_by} since; left as is)")
                    continue
                restore[k] = snap0[k]
            if not restore:
                break
            step = ApplySwitches(
                name="canary_rollback", changes=restore, authority="plan",
                reason=(f"canary rollback of {self.wid} ({self.plan.phase}): {why}; back to the Phase 1 snapshot "
                        f"(etcd revision {st.snapshot.revision})" + self.plan.scale_note())[:1900])
            try:
                await r.run_apply(step, values=restore, expected={k: cur[k] for k in restore},
                                  approved_by=self.inp.requested_by, actor=by.actor if by else None,
                                  break_glass=self._glass_for(restore))
                restored = restore
                break
            except StepFailed as e:
                if e.conflict and attempt < 2:
                    continue  # someone wrote in between: look again
                r.progress.detail = f"{why}; ROLLBACK FAILED: {e}"
                await r.notify(f"{self.wid}: canary rollback FAILED ({e}). {why}. Restore Phase 1 by hand "
                               f"(snapshot at etcd revision {st.snapshot.revision}).", page=True, severity="critical",
                               kind="rollback_failed")
                return "rollback_incomplete"
        st.config = {**st.config, **restored}
        r.progress.detail = why + (f"; left as set by others: {'; '.join(kept)}" if kept else "")
        await r.notify(f"{self.wid} ROLLED BACK to Phase 1 ({outcome}): {why}. Restored: "
                       f"{_render(restored) or 'nothing to restore'}" + (f". Left as is: {'; '.join(kept)}" if kept else ""),
                       page=True, severity="critical", kind="rolled_back")
        return outcome

    async def _finish(self, status: str, detail: str = "") -> CanaryResult:
        st, r = self.st, self.r
        r.progress.status = r.progress.result = status
        wf_metrics.count(series.WORKFLOWS_FINISHED, kind="canary", result=status, drill=self.r.drill)
        r.progress.detail = detail or r.progress.detail
        r.progress.current_step = None
        r.progress.awaiting = None
        st.part = "done"
        if status == "passed":
            last = self.plan.stages[-1]
            await r.notify(f"{self.wid}: {self.plan.title} PASSED all {len(self.plan.stages)} stages; the "
                           f"configuration stays at stage {last.number} ({last.name}).", page=False)
        elif status == "refused":
            await r.notify(f"{self.wid} refused: {detail}", page=False)
        await self._drain()
        await r.close_alerts(left_open=r.progress.detail if status in ("failed", "rollback_incomplete") else None)
        await self._drain()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return CanaryResult(workflow_id=self.wid, phase=self.plan.phase, status=status, detail=r.progress.detail,
                            stages=st.stages, applied=r.progress.applied, runs=st.runs)
