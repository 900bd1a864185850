"""What workflows show and take from people: decisions, the awaited step, progress and results.

Pure pydantic, no I/O: the workflows fill them in, the CLI (and any other client) reads them through
queries and sends decisions through Updates.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from contracts.changes import BreakGlass, ChangeSetResult
from contracts.paging import AlertRecord, PagingFailure
from core.identity import Proof, SignedRequest

# Decision fields that carry the signature itself rather than the decision's content.
_SIGNATURE_FIELDS = frozenset({"actor", "signature", "nonce", "action", "workflow_id", "step", "key_id",
                               "authenticator_data", "client_data"})


def ui_summary(text: str) -> str:
    """One line for Temporal's Web UI (a workflow's summary in its list, an activity's or timer's on its
    timeline): at most 200 bytes (docs.temporal.io/develop/python/enriching-ui)."""
    return text.encode()[:200].decode(errors="ignore")


class Decision(BaseModel):
    """Every human input to a workflow: one payload with the actor in it, signed by the CLI.

    The signature binds the decision's content to (action, workflow id, step awaited, nonce):
    core/identity.py. Unsigned (signature None) when signing is off, or from the Web UI.
    """

    actor: str = Field(min_length=1, max_length=64)
    reason: str = ""
    reference: str | None = None  # fix: the deployed fix (commit, release, ticket)
    tests_passed: bool = False  # fix: the fix's tests passed
    restore: bool = True  # fix: restore through the 5% canary (false: close without restore)
    level: int | None = None  # escalate / level choice: degradation level 2 or 3
    break_glass: str | None = None  # a super admin forces a two-person step alone (the reason; audited, paged)
    signature: str | None = None
    nonce: str | None = None
    # What the signature is bound to (set by the CLI when it signs)
    action: str | None = None  # the decision kind: confirm, fix, escalate, ...
    workflow_id: str | None = None
    step: str | None = None  # the step the workflow waited at
    key_id: str | None = None
    # A passkey's assertion (the console): what the authenticator signed besides the request (core/identity.py)
    authenticator_data: str | None = None
    client_data: str | None = None

    def signed_values(self) -> dict[str, Any]:
        """The decision's content as signed: every field not at its default, the signature fields aside."""
        return self.model_dump(mode="json", exclude_defaults=True, exclude=set(_SIGNATURE_FIELDS))

    def signed_request(self) -> SignedRequest:
        return SignedRequest(action=self.action or "-", actor=self.actor, target=self.workflow_id or "-",
                             values=self.signed_values(), workflow_id=self.workflow_id, step=self.step,
                             nonce=self.nonce or "")

    def signed(self, private_key: Any, kind: str, workflow_id: str, step: str) -> Decision:
        """This decision signed as the CLI sends it: for decision `kind` at `step` of `workflow_id`, new nonce."""
        from core import identity

        d = self.model_copy(update={"action": kind, "workflow_id": workflow_id, "step": step,
                                    "nonce": identity.new_nonce()})
        proof = identity.sign(private_key, d.signed_request())
        return d.model_copy(update={"signature": proof.signature, "key_id": proof.key_id})

    def glass(self) -> BreakGlass | None:
        """This decision's break-glass, as the audit records it (None when it is not one)."""
        return BreakGlass(by=self.actor, reason=self.break_glass) if self.break_glass else None

    def proof(self) -> Proof | None:
        """The signed request this decision carries (None: unsigned; a malformed one fails as a bad signature)."""
        if self.signature is None:
            return None
        try:
            req = self.signed_request()
        except ValueError:  # a malformed nonce: the signature cannot be for this decision
            req = SignedRequest(action=self.action or "-", actor=self.actor, target="-", nonce="malformed-nonce-0000")
        return Proof(request=req, key_id=self.key_id or "-", signature=self.signature,
                     authenticator_data=self.authenticator_data, client_data=self.client_data)


class DecisionAck(BaseModel):
    accepted: bool
    step: str
    message: str


class StepRecord(BaseModel):
    index: int
    name: str
    kind: str
    started_at: datetime
    ended_at: datetime | None = None
    outcome: str | None = None
    detail: str = ""


class Exit(BaseModel):
    """A way out of a wait other than its answer (on-call trust: no wait without an exit).

    `withdraw`: end the workflow here; what it changed stays as it is and is said and paged. Allowed to
    its starter, anyone of a higher role than the starter's, and anyone who could answer the step.
    `stay`: at a proposed escalation, stay at the current level and go on (allowed from `min_role`).
    Every exit needs a reason; it is signed and recorded like any decision."""

    kind: Literal["withdraw", "stay"]
    min_role: str | None = None  # None: the withdraw rule above
    means: str


class Awaiting(BaseModel):
    step: str
    expects: str
    min_role: str
    since: datetime
    deadline: datetime | None
    prompt: str
    repages: int = 0
    # Two-person rule: how many different operators must approve, who has, who may still
    approvals_needed: int = 1
    approved_by: list[str] = []
    still_needed: list[str] = []
    no_break_glass: str = ""  # why break-glass is refused at this step (empty: allowed where two must approve)
    exits: list[Exit] = []  # ways out other than the answer
    on_timeout: str = "repage_and_wait"  # what the deadline brings: a re-page, "proceed" or "fail"
    # Paging: the alerts that asked for this decision; an acknowledgement of one of them in PagerDuty
    # (seen_by) stops the re-pages (reminders go to chat) until PagerDuty says it is unacknowledged.
    alerts: list[str] = []
    seen_by: str | None = None
    seen_at: datetime | None = None
    reminders: int = 0


class ChecklistResult(BaseModel):
    id: str
    title: str
    status: Literal["ok", "failed", "skipped", "not_applicable"]
    detail: str = ""
    at: datetime


class CheckResult(BaseModel):
    at: datetime
    ok: bool
    breaches: list[str] = []
    error: str | None = None
    readings: list[str] = []  # each check's value against its limit, e.g. "error_rate=0.002 (<= 0.01) ok"


# CLI -> workflow: an Update its validator refused. Temporal keeps no trace of a rejected Update, so the CLI
# says so, and the workflow's record (its progress, a drill's report) shows who tried what and why it was no.
REFUSED_SIGNAL = "refused_attempt"
MAX_REFUSALS_KEPT = 50  # per run: reported refusals past this are dropped (a script looping on a refusal)


class RefusedAttempt(BaseModel):
    kind: str = Field(min_length=1, max_length=40)  # the Update: confirm, ack, promote, ...
    actor: str = Field(min_length=1, max_length=64)
    why: str = Field(default="", max_length=500)  # the validator's one line


class DecisionRecord(BaseModel):
    at: datetime
    kind: str
    actor: str
    accepted: bool
    detail: str = ""
    key_id: str | None = None  # signed with this key
    break_glass: str | None = None


class Progress(BaseModel):
    workflow_id: str
    kind: str
    drill: bool = False  # a practice run (`--drill`, `rollbackctl drill start`): every view says [DRILL]
    status: str = "running"
    current_step: str | None = None
    history: list[StepRecord] = []
    awaiting: Awaiting | None = None
    checklist: list[ChecklistResult] = []
    snapshot_revision: int | None = None
    snapshot: dict[str, Any] = {}
    applied: list[ChangeSetResult] = []
    checks: list[CheckResult] = []  # the most recent ones
    decisions: list[DecisionRecord] = []
    level: str | None = None
    escalations: list[str] = []
    page_level: int = 1
    result: str | None = None
    detail: str = ""
    roster_at: datetime | None = None  # when the roles and keys the validators check against were read
    # A running observation: when it ends at this pace (None: none running, or paused) and the next check
    observing_until: datetime | None = None
    next_check_at: datetime | None = None
    # Paging (patch "pager-outbox"): every alert this workflow opened and what became of it, and every
    # page or message that failed (with where it went instead).
    alerts: list[AlertRecord] = []
    paging_failures: list[PagingFailure] = []

    def decision_step(self) -> str:
        """The step a decision sent now is bound to when signed: the one awaited, else the current one."""
        return (self.awaiting.step if self.awaiting is not None else self.current_step) or "-"

    def details(self) -> str:
        """Where it is, in Temporal markdown: the workflow's current details, which the Web UI shows on its
        page (and `temporal workflow describe`), so the timeline reads like the runbook."""
        head = (("**[DRILL]** " if self.drill else "") + f"**{self.kind}** · status **{self.status}**"
                + (f" · level {self.level}" if self.level else ""))
        lines = [head]
        if self.result:
            lines.append(f"Result: **{self.result}**" + (f": {self.detail}" if self.detail else ""))
        elif self.current_step:
            step = next((h for h in reversed(self.history) if h.name == self.current_step), None)
            since = f" since {step.started_at:%H:%M:%S} UTC" if step is not None else ""
            lines.append(f"Step: **{self.current_step}**{since}")
        aw = self.awaiting
        if aw is not None:
            until = f" until {aw.deadline:%Y-%m-%d %H:%M:%S} UTC" if aw.deadline else ""
            paged = f" (re-paged {aw.repages}x)" if aw.repages else ""
            lines.append(f"Waiting for **{aw.expects}** from {aw.min_role} or above{until}{paged}: {aw.prompt}")
            if aw.approvals_needed > 1:
                lines.append(f"Approved by: {', '.join(aw.approved_by) or 'nobody yet'}; still needed: one of "
                             f"{', '.join(aw.still_needed) or 'nobody'}")
            for e in aw.exits:
                lines.append(f"Or **{e.kind}**" + (f" ({e.min_role} or above)" if e.min_role else "") + f": {e.means}")
            if aw.seen_by:
                lines.append(f"Seen in PagerDuty by {aw.seen_by} (not a decision)")
        if self.observing_until is not None and self.result is None:
            nxt = f"; next check {self.next_check_at:%H:%M:%S} UTC" if self.next_check_at else ""
            lines.append(f"Observing until {self.observing_until:%H:%M:%S} UTC{nxt}")
        if self.checks and self.result is None:
            c = self.checks[-1]
            lines.append(f"Last health check {c.at:%H:%M:%S} UTC: " + ("ok" if c.ok else "; ".join(c.breaches)))
        for e in self.escalations[-3:]:
            lines.append(f"Escalation: {e}")
        return "\n\n".join(lines)


class RunResult(BaseModel):
    workflow_id: str
    status: str  # restored | closed_without_restore | monitored | cancelled | restore_blocked | restore_failed | failed
    # | refused (the start request's signature) | not_applied (no second approval in time)
    # | withdrawn (an operator took a wait's withdraw exit)
    detail: str = ""
    level: str | None = None
    applied: list[ChangeSetResult] = []
    escalations: list[str] = []
