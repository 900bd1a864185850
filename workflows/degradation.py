"""DegradationWorkflow: the manual's Degradation Levels 1-3, each applied as one transaction.

checklist -> level's switch set (+ the trading-core actions of Level 2) -> verify applied ->
observe -> confirm -> restore decision (owner roles of every re-enabled switch) -> undo core
actions -> restore the snapshot (compare-and-swap against what this workflow set).

With signing on, the start must carry the requester's signature, and Level 3 (and a restore that
re-enables a super-admin switch) waits for a second super admin's signed approval (two-person
rule; `not_applied` when none comes within confirm_sla), unless a super admin breaks glass: then it
is applied, paged to every escalation level and marked in the audit record.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow

from workflows import metrics as wf_metrics

with workflow.unsafe.imports_passed_through():
    from core import metrics as series
    from manual import degradation, rollback, switches
    from manual import degradation_plan as plan
    from contracts.changes import BreakGlass
    from contracts.progress import Progress, RunResult
    from workflows.models import DegradeInput
    from workflows.alerting import PagingHandlers
    from manual.steps import ApplySwitches
    from workflows.base import (CANCEL_HANDLED, DEGRADATION_5PCT, PAGER_OUTBOX, RESTORE_ONLY_CHANGES, StartRefused,
                                StepFailed, Withdrawn, patches_first)
    from workflows.gate import decision_signal, decision_update
    from workflows.runner import Runner


def degrade_workflow_id(level: int, incident_id: str) -> str:
    return f"degrade-{level}-{incident_id}"


@workflow.defn(name="DegradationWorkflow")
class DegradationWorkflow(PagingHandlers):
    @workflow.init
    def __init__(self, inp: DegradeInput) -> None:
        self.inp = inp
        self.level = degradation.get(inp.level)
        self.r = Runner(workflow.info().workflow_id, "degradation", requested_by=inp.requested_by, drill=inp.drill,
                        incident=inp.incident_id)
        self.r.progress.level = f"degradation level {inp.level}: {self.level.name}"
        self._not_undone: list[str] = []  # trading-core controls the restore could not undo
        self._held: dict = {}  # what this degradation's applied change sets set (said if it is cancelled)
        self._core_held: list[str] = []  # its trading-core controls in force (said if it is cancelled)

    @workflow.query
    def progress(self) -> Progress:
        return self.r.progress

    # Human input: each an Update validated by the decision gate (workflows/gate.py)
    confirm = decision_update("confirm")
    fix = decision_update("fix")
    withdraw = decision_update("withdraw")  # the way out of its waits (second approval, confirm, fix)

    confirm_signal = decision_signal("confirm")  # the Web UI's way in: refused ones recorded, ignored

    @workflow.run
    async def run(self, inp: DegradeInput) -> RunResult:
        self.r.outbox = workflow.patched(PAGER_OUTBOX)
        self.r.flip_first = workflow.patched("flip-first")
        patches_first(CANCEL_HANDLED, RESTORE_ONLY_CHANGES, DEGRADATION_5PCT, "undo-failures-paged")
        await self.r.load_roster()
        try:
            refused = self.r.accept_start("degrade.start", inp.proof, inp.signed_values())
            if refused:
                raise StartRefused(refused)
            status = await self._run(inp)
        except asyncio.CancelledError:
            if not workflow.patched(CANCEL_HANDLED):
                raise
            await self.r.cancelled_from_outside(self._held, self._core_held)
            raise  # Temporal records it CANCELED
        except Withdrawn as w:
            status = "withdrawn"
            await self.r.withdrawn(w, self._held, self._core_held)
        except StepFailed as e:
            status = ("refused" if isinstance(e, StartRefused)
                      else "restore_blocked" if e.conflict else "failed")
            held = ", ".join(f"{k}={switches.get(k).render(v)}" for k, v in self._held.items())
            self.r.progress.detail = str(e) + (f". Still as this degradation set them, not restored: {held}"
                                               if held else "")
            await self.r.notify(f"{self.r.wid} stopped: {self.r.progress.detail}", page=True, severity="critical",
                                kind="stopped")
        self.r.progress.status = self.r.progress.result = status
        wf_metrics.count(series.WORKFLOWS_FINISHED, kind="degradation", result=status, drill=self.r.drill)
        self.r.progress.current_step = None
        await self.r.drain()
        left = (self.r.progress.detail if status in ("failed", "restore_blocked", "restore_failed") or self._not_undone
                or (status == "withdrawn" and (self._held or self._core_held)) else None)
        await self.r.close_alerts(left_open=left)
        await self.r.drain()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return RunResult(workflow_id=self.r.wid, status=status, detail=self.r.progress.detail,
                         level=self.r.progress.level, applied=self.r.progress.applied)

    async def _restore_stages(self, lvl, snap: dict, restore_to: dict, changes: dict, fix, d) -> str | None:
        """The restore as a rollback's (manual/rollback.restore_stages): where internalization comes back,
        everything at 5% of orders first, observed, then the rest. A breach at 5% puts the level's values
        back (pre-approved), pages, and returns "restore_failed"; None when restored."""
        current = {**{k: snap.get(k) for k in restore_to}, **changes}
        stages = rollback.restore_stages(snap, restore_to)
        for name, values in stages:
            if len(stages) == 1:
                name = "restore"  # no 5% stage: the one change set keeps its name (and change id) as before
            step = plan.restore_step(lvl, values, fix.reference).model_copy(update={"name": name})
            await self.r.run_apply(step, values=values, expected={k: current.get(k, snap.get(k)) for k in values},
                                   approved_by=fix.actor, break_glass=fix.glass())
            current.update(values)
            self._held = {k: v for k, v in current.items() if snap.get(k) != v}
            if name != "restore_5pct":
                continue
            res = await self.r.run_observe(rollback.restore_observe_step(d))
            if res in ("breach", "no_traffic"):
                # only the level's own switches (pre-approved moves); the 5% traffic share stays, harmless
                # with internalization off again, and is said
                back = {k: changes[k] for k in values if k in changes}
                await self.r.run_apply(ApplySwitches(
                    name="re_degrade", changes=back, authority="preapproved",
                    reason=f"5% restore from degradation level {lvl.level} failed its checks: level {lvl.level} "
                           "values back"), values=back, expected={k: current[k] for k in back})
                current.update(back)
                self._held = {k: v for k, v in current.items() if snap.get(k) != v}
                if (actions := plan.actions_step(lvl)) is not None:  # its trading-core controls were lifted
                    await self.r.run_core_actions(actions.model_copy(update={"name": f"re_{actions.name}"}))
                    self._core_held = [a.action for a in lvl.core_actions]
                stays = ", ".join(f"{k}={switches.get(k).render(v)}" for k, v in values.items() if k not in back)
                why = rollback.RESTORE_5PCT_FAILED[res]
                retry = rollback.RETRY_WHEN_FLOWING if res == "no_traffic" else ""
                self.r.progress.detail = (f"5% restore {why}: degradation level {lvl.level} values back in force"
                                          + (f"; {stays} stays until the next fix's restore" if stays else "") + retry)
                await self.r.notify(f"{self.r.wid}: 5% restore {'failed its checks' if res == 'breach' else why}; "
                                    f"degradation level {lvl.level} is back in force{retry}", page=True,
                                    severity="critical", kind="restore_failed")
                return "restore_failed"
        return None

    async def _run(self, inp: DegradeInput) -> str:
        d, lvl = inp.durations, self.level
        changes = dict(lvl.switch_set)
        outcome = await self.r.run_checklist(plan.checklist_step(), required=lvl.permission, changes=changes)
        if outcome == "role_needs_approval":
            raise StepFailed(f"degradation level {lvl.level} needs {lvl.permission.value}; "
                             f"{inp.requested_by} is {self.r.roster.get(inp.requested_by)}")
        glass = None
        if self.r.two_person(changes) > 1:
            if inp.break_glass:
                glass = BreakGlass(by=inp.requested_by, reason=inp.break_glass)
            else:
                _, ok = await self.r.run_await(plan.second_approval_step(lvl, d, inp.requested_by),
                                               approved_by=(inp.requested_by,))
                if ok is None:
                    self.r.progress.detail = (f"no second {lvl.permission.value} approved level {lvl.level} within "
                                              f"{d.confirm_sla}: nothing applied")
                    await self.r.notify(f"{self.r.wid}: {self.r.progress.detail}", page=True, severity="critical",
                                        kind="not_applied")
                    return "not_applied"
                glass = ok.glass()
        await self.r.run_apply(plan.apply_step(lvl, inp.reason), break_glass=glass)
        self._held = dict(changes)
        if glass is not None:
            await self.r.page_everyone(f"BREAK-GLASS: {self.r.wid}: degradation level {lvl.level} applied by "
                                       f"{glass.by} without a second approval: {glass.reason}")
        if (actions := plan.actions_step(lvl)) is not None:
            await self.r.run_core_actions(actions)
            self._core_held = [a.action for a in lvl.core_actions]
        await self.r.notify(f"{self.r.wid}: degradation level {lvl.level} ({lvl.name}) in force. Available: "
                            + "; ".join(lvl.available), page=True, severity="critical", kind="in_force")
        await self.r.run_observe(plan.observe_step(d))
        await self.r.run_await(plan.confirm_step(lvl, d))

        snap = self.r.snapshot.values()
        restore_to = {k: snap[k] for k in changes}
        reenabled = [k for k in changes if snap[k] != changes[k]]
        if not reenabled:
            self.r.progress.detail = "nothing to restore"
            return "closed_without_restore"
        if workflow.patched(RESTORE_ONLY_CHANGES):
            # only what the level changed goes back (Level 1 from the defaults leaves global_betting_enabled
            # false -> false: a risk manager's fix must not carry a super admin's switch), and `fix` demands
            # the role the store will demand of that change set
            restore_to = {k: restore_to[k] for k in reenabled}
            changes = {k: changes[k] for k in reenabled}
            fix_step = rollback.fix_step(d, rollback.change_sets_role([restore_to]))
        else:
            fix_step = rollback.fix_step(d, rollback.restore_role(reenabled))
        _, fix = await self.r.run_await(fix_step.model_copy(update={"approvals": self.r.two_person(restore_to)}))
        if not fix.restore:
            self.r.progress.detail = f"closed without restore by {fix.actor}: {fix.reason}"
            return "closed_without_restore"
        not_undone: list[str] = []
        if (undo := plan.undo_step(lvl)) is not None:
            done = await self.r.run_core_actions(undo)
            undone_of = plan.undone_by(lvl)
            failed = [a for a in done if not a.ok]
            not_undone = [str(a) for a in failed]
            self._core_held = [undone_of.get(a.action, str(a)) for a in failed]
        if workflow.patched(DEGRADATION_5PCT):
            failed = await self._restore_stages(lvl, snap, restore_to, changes, fix, d)
            if failed:
                return failed
        else:
            await self.r.run_apply(plan.restore_step(lvl, restore_to, fix.reference), values=restore_to,
                                   expected=changes, approved_by=fix.actor, break_glass=fix.glass())
        self._held = {}
        if fix.break_glass:
            await self.r.page_everyone(f"BREAK-GLASS: {self.r.wid}: restore from degradation level {lvl.level} by "
                                       f"{fix.actor} without a second approval: {fix.break_glass}")
        self._not_undone = not_undone if self.r.outbox else []
        if not_undone and workflow.patched("undo-failures-paged"):
            # The switches are back, but the core still holds Level N's controls (HL opens, large
            # withdrawals paused): say so and keep the page open instead of resolving it.
            left = "; ".join(not_undone)
            await self.r.notify(f"{self.r.wid}: switches restored from degradation level {lvl.level}, but the trading "
                                f"core did not undo: {left}. Undo these by hand.", page=True, severity="critical",
                                kind="left_in_force")
            self.r.progress.detail = (f"restored after fix {fix.reference} by {fix.actor}; trading-core actions NOT "
                                      f"undone: {left}")
            return "restored"
        await self.r.notify(f"{self.r.wid}: restored from degradation level {lvl.level}", page=True, severity="info",
                            event_action="resolve")
        self.r.progress.detail = f"restored after fix {fix.reference} by {fix.actor}"
        return "restored"
