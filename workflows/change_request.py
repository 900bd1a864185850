"""ChangeRequestWorkflow: one signed direct change (`switch set`, `operator add|rotate-key`), applied by
the worker, which alone holds etcd's write credentials.

request.apply (verify: current key, signature, nonce, revision read, permission; then apply in one
transaction) -> under the two-person rule: wait for a second owner's signed `confirm` (or a super
admin's break-glass), at most `approval_timeout`, then request.apply again with both approvals ->
applied | refused (saying why) | expired. A break-glass change is paged to every escalation level.

The CLI starts it with the id `change-<nonce>` and reports what it did; `rollbackctl status` and
`rollbackctl confirm` work on it like on any other workflow.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.requests import RequestActivities
    from contracts import errors
    from contracts.roles import Role
    from manual.steps import WITHDRAW, AwaitConfirmation
    from contracts.progress import Progress
    from contracts.requests import (
        SECOND_APPROVAL_STEP,
        ChangeRequestInput,
        ChangeRequestResult,
        RequestApply,
        RequestOutcome,
    )
    from workflows.alerting import PagingHandlers
    from workflows.base import PAGER_OUTBOX, Withdrawn, patches_first, root_cause
    from workflows.gate import decision_signal, decision_update
    from workflows.runner import Runner

PICKUP_DEADLINE = "change-pickup-deadline"  # patch: a request no worker ran in time expires, applying nothing
APPLY_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=5),
                          maximum_attempts=20, non_retryable_error_types=errors.SWITCH_NON_RETRYABLE)
NO_BREAK_GLASS = ("break-glass is given by the requester when submitting (`switch set ... --break-glass REASON`); "
                  "an approval is the second person")


@workflow.defn(name="ChangeRequestWorkflow")
class ChangeRequestWorkflow(PagingHandlers):
    @workflow.init
    def __init__(self, inp: ChangeRequestInput) -> None:
        self.inp = inp
        r = inp.proof.request
        self.r = Runner(workflow.info().workflow_id, "change_request", requested_by=r.actor, drill=False,
                        incident=workflow.info().workflow_id)
        self.r.progress.level = f"{r.action} {r.target}"

    @workflow.query
    def progress(self) -> Progress:
        return self.r.progress

    # The second approval: the gate's checks (role, signature, nonce, two-person rule, and this step's
    # "break-glass comes from the requester" rule), as an Update (refusable) and as a signal.
    confirm = decision_update("confirm")
    confirm_signal = decision_signal("confirm")
    withdraw = decision_update("withdraw")  # the requester (or a higher role) takes the request back

    async def _apply(self, approvals: list) -> RequestOutcome:
        return await workflow.execute_local_activity_method(
            RequestActivities.apply, RequestApply(proof=self.inp.proof, approvals=approvals),
            start_to_close_timeout=timedelta(seconds=15), retry_policy=APPLY_RETRY)

    async def _done(self, status: str, detail: str, **kw) -> ChangeRequestResult:
        self.r.progress.status = self.r.progress.result = status
        self.r.progress.detail = detail
        self.r.progress.current_step = None
        await self.r.drain()
        await self.r.close_alerts()
        await self.r.drain()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return ChangeRequestResult(workflow_id=self.r.wid, status=status, detail=detail, **kw)

    @workflow.run
    async def run(self, inp: ChangeRequestInput) -> ChangeRequestResult:
        self.r.outbox = workflow.patched(PAGER_OUTBOX)
        patches_first(PICKUP_DEADLINE)
        req = inp.proof.request
        late = workflow.now() - workflow.info().workflow_start_time
        if late > inp.pickup_deadline and workflow.patched(PICKUP_DEADLINE):
            # No worker ran it in time (an outage): the submitter was told it might land until the deadline;
            # after it, it never does.
            rec = self.r._begin("apply", "request")
            self.r._end(rec, "expired", f"picked up {late} after submission")
            return await self._done("expired", f"no worker picked the request up within {inp.pickup_deadline} of "
                                    f"its submission (it ran {late} later): nothing applied", approved_by=[req.actor])
        rec = self.r._begin("apply", "request")
        approvers: list[str] = [req.actor]
        try:
            out = await self._apply([])
            if out.status == "needs_approval":
                self.r._end(rec, "needs_approval", out.detail)
                await self.r.load_roster()
                await self.r.notify(f"{req.actor} asks {req.action} {req.target} = {req.values.get('value')!r} "
                                    f"({req.values.get('reason', '')}): {out.detail}. Approve with `rollbackctl confirm "
                                    f"{self.r.wid} --as OP`", page=True, severity="critical", kind="approval")
                kind, d = await self.r.run_await(AwaitConfirmation(
                    name=SECOND_APPROVAL_STEP, expects="confirm", min_role=Role(out.owner_role),
                    timeout=inp.approval_timeout, on_timeout="fail", approvals=2, no_break_glass=NO_BREAK_GLASS,
                    exits=(WITHDRAW,),
                    prompt=f"{req.actor} asks {req.action} {req.target} = {req.values.get('value')!r}."),
                    approved_by=(req.actor,))
                if d is None:
                    return await self._done("expired", f"no second approval within {inp.approval_timeout}: nothing applied",
                                      approved_by=approvers)
                approvers = [req.actor, *(p.request.actor for p in self.r.proofs)]
                rec = self.r._begin("apply_approved", "request")
                out = await self._apply(list(self.r.proofs))
                if out.status != "applied":
                    raise ApplicationError(f"the approvals do not satisfy the two-person rule: {out.detail}",
                                           type=errors.PERMISSION_DENIED, non_retryable=True)
            self.r._end(rec, "ok", out.detail)
        except Withdrawn as w:
            return await self._done("withdrawn", f"{w}: nothing applied", approved_by=approvers)
        except (FailureError, ApplicationError) as e:
            cause = root_cause(e)
            msg = str(cause.message if isinstance(cause, ApplicationError) else cause)
            self.r._end(rec, "refused", msg)
            return await self._done("refused", msg, refusal_type=getattr(cause, "type", None), approved_by=approvers)
        glass = out.break_glass
        if glass:
            await self.r.page_everyone(f"BREAK-GLASS by {req.actor}: {req.action} {req.target} = "
                                       f"{req.values.get('value')!r} applied without a second approval: {glass}")
        return await self._done("applied", out.detail, outcome=out, approved_by=approvers)
