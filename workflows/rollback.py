"""RollbackWorkflow: the manual's Rollback Decision Tree, step by step.

severity -> level -> checklist -> change set -> verify applied -> observe 5 min (a breach escalates
one level) -> human confirmation (re-page every 10 min) -> fix deployed -> restore through the 5%
canary -> full. Every step is built from manual/rollback.py and run by workflows/runner.py.

With signing on: the start carries the requester's signature (checked once the roster is in, before
any change); Level 3 and a restore that re-enables a super-admin switch need two different super
admins' signed approvals (the requester's signed start counts as one), or one super admin's
break-glass (applied, paged to every escalation level, marked in the audit record).
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import workflow

from workflows import metrics as wf_metrics

with workflow.unsafe.imports_passed_through():
    from core import metrics as series
    from manual import degradation, rollback, switches
    from manual.rollback import Scope, Severity
    from contracts.roles import Role
    from contracts.changes import BreakGlass
    from manual.steps import ApplySwitches, CoreActions
    from contracts.progress import Decision, Progress, RunResult
    from workflows.models import RollbackInput
    from workflows.alerting import PagingHandlers
    from workflows.gate import decision_signal, decision_update
    from workflows.base import (CANCEL_HANDLED, PAGER_OUTBOX, RESTORE_ONLY_CHANGES, StartRefused, StepFailed, Withdrawn,
                                patches_first)
    from workflows.runner import Runner


def rollback_workflow_id(incident_id: str) -> str:
    return f"rollback-{incident_id}"


# Outcomes after which a person must still act: the last page stays open in PagerDuty (said in the ledger).
NEEDS_HUMAN = ("failed", "restore_blocked", "restore_failed")


@workflow.defn(name="RollbackWorkflow")
class RollbackWorkflow(PagingHandlers):
    @workflow.init
    def __init__(self, inp: RollbackInput) -> None:
        self.inp = inp
        self.r = Runner(workflow.info().workflow_id, "rollback", requested_by=inp.requested_by, drill=inp.drill,
                        incident=inp.incident_id)
        self.r.progress.level = inp.scope.value
        self.scope: Scope = inp.scope
        self.set_by_rollback: dict[str, Any] = {}  # what this rollback wrote last, per switch
        self.orders_paused = False  # HL down at the checklist: new orders paused at the trading core
        self.applied: dict[str, Any] = {}  # what its rollback change sets applied (the values a re-rollback goes back to)
        self.stages: list[tuple[str, dict[str, Any]]] | None = None  # the restore's change sets (RESTORE_ONLY_CHANGES)
        self.approver: str | None = None  # a super admin who approved Level 3 for an on-call requester
        self.human_chose_level = False  # HL down: a human picked the level; breaches are reported, not escalated
        self.glass: BreakGlass | None = None  # a super admin forced a two-person step alone
        # HL down: the trading-core controls this rollback put in force, (action, its undo), in order
        # (patch "hl-down-core-actions": new orders paused, and Level 2's own controls when chosen).
        self.core_in_force: list[tuple[str, str]] = []

    # -- queries and human input ---------------------------------------------------------------
    @workflow.query
    def progress(self) -> Progress:
        return self.r.progress

    # Human input: each an Update validated by the decision gate (workflows/gate.py)
    confirm = decision_update("confirm")
    proceed = decision_update("proceed")
    cancel = decision_update("cancel")
    fix = decision_update("fix")
    escalate = decision_update("escalate")
    withdraw = decision_update("withdraw")  # the way out of any wait but the data window (which has cancel)
    stay = decision_update("stay")  # at a proposed Level 3: stay at the current level

    confirm_signal = decision_signal("confirm")  # the Web UI's way in: refused ones recorded, ignored

    # -- the tree ----------------------------------------------------------------------------------
    @workflow.run
    async def run(self, inp: RollbackInput) -> RunResult:
        d = inp.durations
        self.r.outbox = workflow.patched(PAGER_OUTBOX)
        self.r.flip_first = workflow.patched("flip-first")
        patches_first(CANCEL_HANDLED, RESTORE_ONLY_CHANGES, "hl-down-core-actions")
        if inp.severity is not Severity.CRITICAL or not self.r.flip_first:
            await self.r.load_roster()  # validators need it while the window/monitoring waits
        # (critical: the checklist loads it beside the snapshot, so nothing delays the flip)
        try:
            if self.r.roster:
                self._check_start()
            status = await self._tree(inp, d)
        except asyncio.CancelledError:
            if not workflow.patched(CANCEL_HANDLED):
                raise
            await self.r.cancelled_from_outside(self.set_by_rollback, self._core_held())
            raise  # Temporal records it CANCELED; `status` says so (rollbackctl/cli/workflow_cmds.py)
        except Withdrawn as w:
            status = "withdrawn"
            await self.r.withdrawn(w, self.set_by_rollback, self._core_held())
        except StepFailed as e:
            status = ("refused" if isinstance(e, StartRefused)
                      else "restore_blocked" if e.conflict else "failed")
            self.r.progress.detail = str(e) + self._still_off()
            await self.r.notify(f"{self.r.wid} stopped: {self.r.progress.detail}", page=True, severity="critical",
                                kind="stopped")
        self.r.progress.status = status
        self.r.progress.result = status
        wf_metrics.count(series.WORKFLOWS_FINISHED, kind="rollback", result=status, drill=self.r.drill)
        self.r.progress.current_step = None
        await self.r.drain()
        left = (self.r.progress.detail if status in NEEDS_HUMAN or self.core_in_force
                or (status == "withdrawn" and (self.set_by_rollback or self._core_held())) else None)
        await self.r.close_alerts(left_open=left)
        await self.r.drain()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return RunResult(workflow_id=self.r.wid, status=status, detail=self.r.progress.detail,
                         level=self.scope.value, applied=self.r.progress.applied, escalations=self.r.progress.escalations)

    async def _tree(self, inp: RollbackInput, d: rollback.Durations) -> str:
        # [Severity Assessment]
        if inp.severity is Severity.NON_CRITICAL:
            notify, monitor = rollback.monitor_steps(d)
            await self.r.run_notify(notify)
            if await self.r.run_observe(monitor) != "escalated":
                self.r.progress.detail = "non-critical: observed, no config change"
                return "monitored"
            esc = self.r.escalation
            self.r.progress.escalations.append(f"escalated to a rollback by {esc.actor}: {esc.reason}")
        elif inp.severity is Severity.DATA:
            kind, dec = await self.r.run_await(rollback.window_step(d))
            if kind == "cancel":
                self.r.progress.detail = f"cancelled by {dec.actor}: {dec.reason}"
                await self.r.notify(f"{self.r.wid} cancelled by {dec.actor}: {dec.reason}", page=False)
                return "cancelled"

        # [Rollback Level] + checklist
        changes = rollback.target_changes(self.scope, inp.switch)
        critical = inp.severity is not Severity.DATA
        outcome = await self.r.run_checklist(rollback.checklist_step(changes, critical),
                                             required=rollback.required_role(self.scope), changes=changes)
        self._check_start()
        if outcome == "role_needs_approval":
            await self.r.notify(f"{self.r.wid}: level {self.scope.value} needs a super admin's confirmation", page=True,
                                severity="critical", kind="approval")
            _, ok = await self.r.run_await(rollback.super_admin_approval_step(d, self.r.two_person(changes)))
            self.approver = ok.actor
            self._glass(ok)
        elif outcome == "ok" and self.r.two_person(changes) > 1:
            await self._second_approval(inp.requested_by, inp.break_glass, d)
        elif outcome == "hl_down":
            # HL itself is down: HL_MODE would strand every order. Pause new orders (the P0 move), page, ask.
            await self.r.run_core_actions(CoreActions(name="pause_new_orders", actions=(("pause_new_orders", {}),)))
            self.orders_paused = True  # in force from here (core_in_force has it once a level is chosen)
            await self.r.notify(f"{self.r.wid}: HL is down, HL_MODE not applied; new orders paused. "
                                "Choose degradation level 2 or 3.", page=True, severity="critical", kind="level_choice")
            _, dec = await self.r.run_await(rollback.level_choice_step(d))
            lvl = degradation.get(dec.level)
            self.human_chose_level = True
            if workflow.patched("hl-down-core-actions"):
                self.core_in_force.append(("pause_new_orders", "resume_new_orders"))
                if lvl.core_actions:  # Level 2 is its switches and its core controls, as DegradationWorkflow applies it
                    await self.r.run_core_actions(CoreActions(
                        name=f"level_{lvl.level}_actions", actions=tuple((a.action, a.body) for a in lvl.core_actions)))
                    self.core_in_force += [(a.action, a.undo) for a in lvl.core_actions if a.undo]
            if dec.level == 3:
                self.approver = dec.actor
                if self.r.two_person(dict(lvl.switch_set)) > 1:
                    await self._second_approval(dec.actor, None, d)
            self.scope = Scope.FULL if dec.level == 3 else self.scope
            changes = dict(lvl.switch_set)
            self.r.progress.level = f"degradation level {dec.level}"
            self.r.progress.escalations.append(f"HL down: {dec.actor} chose degradation level {dec.level}")

        # [Execute Rollback] change + observe (a breach escalates one level) ...
        await self._apply(changes, "apply")
        while True:
            observe = rollback.observe_step(d, name="observe")
            if self.human_chose_level:
                observe = observe.model_copy(update={"on_breach": "record"})
            if await self.r.run_observe(observe) != "breach":
                break
            nxt = rollback.NEXT_SCOPE[self.scope]
            if nxt is None:
                self.r.progress.escalations.append("breach at full system: nothing further to escalate to")
                await self.r.notify(f"{self.r.wid}: still breaching at Level 3; human action needed", page=True,
                                    severity="critical", kind="still_breaching")
                break
            self.r.progress.escalations.append(f"breach: {self.scope.value} -> {nxt.value}")
            await self.r.notify(f"{self.r.wid}: health breach, escalating {self.scope.value} -> {nxt.value}",
                                page=True, severity="critical", kind="escalation")
            if rollback.required_role(nxt) is Role.SUPER_ADMIN:
                kind, ok = await self.r.run_await(rollback.approve_level_3_step(
                    d, self.scope, self.r.two_person(rollback.target_changes(nxt, inp.switch))))
                if kind == "stay":
                    self.r.progress.escalations.append(f"stayed at {self.scope.value} by {ok.actor}: {ok.reason}")
                    await self.r.notify(f"{self.r.wid}: {ok.actor} chose to stay at {self.scope.value} instead of "
                                        f"Level 3 ({ok.reason}); the breach persists: confirmation next",
                                        page=True, severity="warning", kind="stayed")
                    break
                self.approver = ok.actor
                self._glass(ok)
            self.scope = nxt
            self.r.progress.level = nxt.value
            changes = rollback.target_changes(nxt, inp.switch)
            await self._apply(changes, f"apply_{nxt.value}")

        # ... + confirm
        await self.r.run_await(rollback.confirm_step(d, self.scope))

        # [Fix & Restart] fix + tests -> 5% canary -> full
        restore_to = {k: self.r.snapshot.switches[k].value for k in self.set_by_rollback}
        reenabled = [k for k, v in restore_to.items() if v != self.set_by_rollback[k]]
        if not reenabled:
            self.r.progress.detail = "nothing to restore: the rollback left every switch at its snapshot value"
            await self._core_left_in_force()
            return "closed_without_restore"
        if workflow.patched(RESTORE_ONLY_CHANGES):
            # Each restore change set carries only the switches it changes, and `fix` demands the role the
            # store will demand of those sets (before: unchanged switches rode along, so an accepted fix
            # could be refused at the write, e.g. a risk manager's with global_betting_enabled false -> false).
            restore_to = {k: restore_to[k] for k in reenabled}
            self.stages = rollback.restore_stages(self.r.snapshot.values(), restore_to)
            fix_step = rollback.fix_step(d, rollback.change_sets_role([cs for _, cs in self.stages]))
        else:
            fix_step = rollback.fix_step(d, rollback.restore_role(reenabled))
        _, fix = await self.r.run_await(fix_step.model_copy(update={"approvals": self.r.two_person(restore_to)}))
        if not fix.restore:
            self.r.progress.detail = f"closed without restore by {fix.actor}: {fix.reason}"
            await self._core_left_in_force()
            return "closed_without_restore"
        if self.core_in_force:  # orders must flow again before the 5% canary can observe anything
            done = await self.r.run_core_actions(CoreActions(
                name="undo_core_actions", actions=tuple((undo, {}) for _, undo in reversed(self.core_in_force))))
            self.core_in_force = [pair for pair, res in zip(reversed(self.core_in_force), done) if not res.ok]
        status = await self._restore(restore_to, fix, d)
        await self._core_left_in_force()
        return status

    def _still_off(self) -> str:
        """What this rollback set that is not back at its pre-incident value (said when it stops early)."""
        if self.r.snapshot is None:
            return ""
        snap = self.r.snapshot.values()
        off = {k: v for k, v in self.set_by_rollback.items() if snap.get(k) != v}
        if not off:
            return ""
        return (". Not restored (as this rollback set them, unless changed since as said above): "
                + ", ".join(f"{k}={switches.get(k).render(v)} (was {switches.get(k).render(snap.get(k))})"
                            for k, v in off.items()))

    def _core_held(self) -> list[str]:
        """The trading-core controls this rollback holds in force now (said when it ends early)."""
        held = [a for a, _ in self.core_in_force]
        return held if not self.orders_paused or "pause_new_orders" in held else ["pause_new_orders", *held]

    async def _core_left_in_force(self) -> None:
        """Trading-core controls this rollback took and did not undo: said in the result and paged, never silent."""
        if not self.core_in_force:
            return
        left = ", ".join(action for action, _ in self.core_in_force)
        undo = ", ".join(undo for _, undo in self.core_in_force)
        self.r.progress.detail += f"; trading-core controls still in force: {left} (undo: {undo})"
        await self.r.notify(f"{self.r.wid}: ended with trading-core controls still in force: {left}. Undo them by "
                            f"hand when safe ({undo}).", page=True, severity="critical", kind="left_in_force")

    def _check_start(self) -> None:
        refused = self.r.accept_start("rollback.start", self.inp.proof, self.inp.signed_values())
        if refused:
            raise StartRefused(refused)

    def _glass(self, d: Decision) -> None:
        self.glass = d.glass() or self.glass

    async def _second_approval(self, first: str, break_glass: str | None, d: rollback.Durations) -> None:
        """Two-person rule: `first` asked for Level 3; a different super admin must approve (or `first` broke glass)."""
        if break_glass:
            self.glass = BreakGlass(by=first, reason=break_glass)
            return
        await self.r.notify(f"{self.r.wid}: {first} asks for Level 3 (maintenance mode); a second super admin must "
                            "approve", page=True, severity="critical", kind="second_approval")
        _, ok = await self.r.run_await(rollback.second_approval_step(d, first), approved_by=(first,))
        self.approver = ok.actor
        self._glass(ok)

    async def _apply(self, changes: dict[str, Any], name: str) -> None:
        step = rollback.apply_step(changes, name, self.scope)
        glass, self.glass = self.glass, None
        if self.approver and self.approver != self.inp.requested_by:
            # Level 3 for an on-call requester: applied under the approving super admin.
            step = step.model_copy(update={"authority": "plan", "reason": f"{step.reason} (approved by {self.approver})"})
            await self.r.run_apply(step, approved_by=self.approver, break_glass=glass)
        else:
            await self.r.run_apply(step, break_glass=glass)
        if glass is not None:
            await self.r.page_everyone(f"BREAK-GLASS: {self.r.wid}: {name} ({', '.join(changes)}) applied by "
                                       f"{glass.by} without a second approval: {glass.reason}")
        self.set_by_rollback.update(changes)
        self.applied.update(changes)

    async def _restore(self, restore_to: dict[str, Any], fix: Decision, d: rollback.Durations) -> str:
        glass = fix.glass()
        if glass is not None:
            await self.r.page_everyone(f"BREAK-GLASS: {self.r.wid}: restore by {fix.actor} without a second "
                                       f"approval: {glass.reason}")
        if self.stages is not None:
            return await self._restore_stages(fix, glass, d)
        snap = self.r.snapshot.values()
        expected = dict(self.set_by_rollback)
        pct = rollback.RESTORE_CANARY_SWITCH
        if rollback.internalization_returns(snap, restore_to) and (snap.get(pct) or 0) > rollback.RESTORE_CANARY_VALUE:
            stage1 = {**restore_to, pct: rollback.RESTORE_CANARY_VALUE}
            exp1 = {**expected, pct: expected.get(pct, snap.get(pct))}
            await self.r.run_apply(self._restore_step("restore_5pct", stage1, fix), values=stage1, expected=exp1,
                                   approved_by=fix.actor, break_glass=glass)
            self.set_by_rollback.update(stage1)
            res = await self.r.run_observe(rollback.restore_observe_step(d))
            if res in ("breach", "no_traffic"):
                back = {k: v for k, v in expected.items()}
                await self.r.run_apply(self._restore_step("re_rollback", back, fix, authority="preapproved"),
                                       values=back, expected=dict(self.set_by_rollback))
                return await self._restore_failed(res)
            expected = dict(self.set_by_rollback)
            restore_to = {**restore_to, pct: snap.get(pct)}
        await self.r.run_apply(self._restore_step("restore_full", restore_to, fix), values=restore_to,
                               expected={k: expected[k] for k in restore_to if k in expected}, approved_by=fix.actor,
                               break_glass=glass)
        await self.r.notify(f"{self.r.wid}: restored to the pre-incident configuration (fix {fix.reference})",
                            page=True, severity="info", event_action="resolve")
        self.r.progress.detail = f"restored after fix {fix.reference} by {fix.actor}"
        return "restored"

    async def _restore_stages(self, fix: Decision, glass: BreakGlass | None, d: rollback.Durations) -> str:
        """The restore as manual/rollback.py's `restore_stages` plans it (patch RESTORE_ONLY_CHANGES)."""
        assert self.stages is not None
        for name, values in self.stages:
            expected = {k: self.set_by_rollback[k] for k in values if k in self.set_by_rollback}
            await self.r.run_apply(self._restore_step(name, values, fix), values=values, expected=expected,
                                   approved_by=fix.actor, break_glass=glass)
            self.set_by_rollback.update(values)
            if name != "restore_5pct":
                continue
            res = await self.r.run_observe(rollback.restore_observe_step(d))
            if res in ("breach", "no_traffic"):
                back = rollback.only_changes(self.applied, self.set_by_rollback)
                await self.r.run_apply(self._restore_step("re_rollback", back, fix, authority="preapproved"),
                                       values=back, expected={k: self.set_by_rollback[k] for k in back})
                self.set_by_rollback.update(back)
                return await self._restore_failed(res)
        await self.r.notify(f"{self.r.wid}: restored to the pre-incident configuration (fix {fix.reference})",
                            page=True, severity="info", event_action="resolve")
        self.r.progress.detail = f"restored after fix {fix.reference} by {fix.actor}"
        return "restored"

    async def _restore_failed(self, res: str) -> str:
        """The 5% stage did not pass (its checks breached, or no live traffic to verify): rolled back again, paged."""
        self.r.progress.detail = (f"5% restore {rollback.RESTORE_5PCT_FAILED[res]}: rolled back again"
                                  + (rollback.RETRY_WHEN_FLOWING if res == "no_traffic" else ""))
        text = (f"{self.r.wid}: 5% restore failed its checks; rolled back again" if res == "breach"
                else f"{self.r.wid}: {self.r.progress.detail}")
        await self.r.notify(text, page=True, severity="critical", kind="restore_failed")
        return "restore_failed"

    def _restore_step(self, name: str, values: dict[str, Any], fix: Decision, authority: str = "plan") -> ApplySwitches:
        return ApplySwitches(
            name=name, changes=values, authority=authority,
            reason=f"{name.replace('_', ' ')} after fix {fix.reference}: "
                   + ", ".join(f"{k}={switches.get(k).render(v)}" for k, v in values.items()),
        )
