"""EmergencyWorkflow: the follow-up of a move the emergency lane applied while Temporal was down.

The worker opens one per emergency change once Temporal answers again (activities/emergency.py,
id = the change id `emergency-<nonce>`). It reads what was done back from the audit, pages it
(critical: a change nobody's workflow watched), and waits for an on-call's acknowledgement,
re-paging every 5 minutes (the manual's acknowledge SLA) until someone answers. The change stays in
force: the page says how to restore it. `rollbackctl status` and `confirm` work on it like on any
other workflow.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.emergency import EmergencyActivities
    from contracts.emergency import EmergencyFollowUpInput, EmergencyFollowUpResult, EmergencyRecord
    from contracts.progress import Progress
    from contracts.roles import Role
    from manual import escalation
    from manual.emergency import render_change, render_changes
    from manual.steps import AwaitConfirmation
    from workflows.alerting import PagingHandlers
    from workflows.base import PAGER_OUTBOX, patches_first
    from workflows.gate import decision_signal, decision_update
    from workflows.runner import Runner

ACK_STEP = "acknowledge"
READ_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))


def restore_hint(rec: EmergencyRecord) -> str:
    cmds = [f"`rollbackctl switch set {c.switch} {render_change(c)[0]} --as OP --reason ...`"
            for c in rec.changes if c.old != c.new]
    paused = [a.split(":", 1)[0] for a in rec.core_actions if ": FAILED" not in a and ": NOT SENT" not in a]
    return ("To restore what it changed: " + "; ".join(cmds)
            + (f"; and the trading core's {', '.join(paused)} (resume each)" if paused else "") + ".")


@workflow.defn(name="EmergencyWorkflow")
class EmergencyWorkflow(PagingHandlers):
    @workflow.init
    def __init__(self, inp: EmergencyFollowUpInput) -> None:
        self.inp = inp
        self.r = Runner(workflow.info().workflow_id, "emergency", requested_by="emergency-lane", drill=False,
                        incident=workflow.info().workflow_id)
        self.r.progress.level = "emergency move (applied while Temporal was down)"

    @workflow.query
    def progress(self) -> Progress:
        return self.r.progress

    confirm = decision_update("confirm")  # an on-call acknowledges it
    confirm_signal = decision_signal("confirm")

    async def _done(self, status: str, detail: str, **kw) -> EmergencyFollowUpResult:
        self.r.progress.status = self.r.progress.result = status
        self.r.progress.detail = detail
        self.r.progress.current_step = None
        self.r.show()
        await self.r.drain()
        await self.r.close_alerts()
        await self.r.drain()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return EmergencyFollowUpResult(workflow_id=self.r.wid, status=status, detail=detail, **kw)

    @workflow.run
    async def run(self, inp: EmergencyFollowUpInput) -> EmergencyFollowUpResult:
        self.r.outbox = workflow.patched(PAGER_OUTBOX)
        patches_first()
        rec_step = self.r._begin("record", "emergency")
        rec: EmergencyRecord | None = await workflow.execute_activity_method(
            EmergencyActivities.record, inp, start_to_close_timeout=timedelta(seconds=15), retry_policy=READ_RETRY)
        if rec is None:
            self.r._end(rec_step, "missing", "no audit record for this change id")
            return await self._done("missing", f"no emergency change {inp.change_id} in the audit: nothing to follow up")
        self.r.requested_by = rec.actor
        what = render_changes(rec.changes)
        core = f"; trading core: {', '.join(rec.core_actions)}" if rec.core_actions else ""
        self.r._end(rec_step, "ok", f"audit {rec.audit_id}: {what}{core}")
        await self.r.load_roster()
        text = (f"EMERGENCY LANE: {rec.actor} applied {what}{core} at {rec.at:%Y-%m-%d %H:%M:%S} UTC while Temporal was "
                f"unreachable (audit {rec.audit_id}, signed with key {rec.key_id or '?'}; {rec.reason}). It stays in "
                f"force. Acknowledge: `rollbackctl confirm {self.r.wid} --as OP`. {restore_hint(rec)}")
        await self.r.notify(text, page=True, severity="critical", kind="emergency")
        kind, d = await self.r.run_await(AwaitConfirmation(
            name=ACK_STEP, expects="confirm", min_role=Role.ON_CALL, timeout=escalation.ACK_WITHIN,
            on_timeout="repage_and_wait", prompt=f"acknowledge the emergency move {what} (it stays in force)"))
        who = d.actor if d is not None else None
        return await self._done("acknowledged", f"{what} acknowledged by {who}; it stays in force. {restore_hint(rec)}",
                                acknowledged_by=who, record=rec.model_dump(mode="json"))
