"""The decision gate: how every workflow that waits for a human waits (`run_await`: deadline,
re-page, reminders, the two-person rule, roster refresh) and judges a decision (`check_decision`, pure:
the Updates' validators; `accept`: the handlers). Part of `Runner` (workflows/runner.py).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from contracts.errors import Refusal, invalid, not_permitted, refusal_error
    from manual import approvals
    from contracts.roles import Role
    from core import identity
    from manual.steps import AwaitConfirmation
    from contracts.progress import (MAX_REFUSALS_KEPT, Awaiting, Decision, DecisionAck, DecisionRecord, Exit,
                                    RefusedAttempt)
from workflows.base import ROSTER_REFRESH, ROSTER_REFRESH_PATCH, TWO_PERSON, ANSWERS, EXITS, Withdrawn



def decision_update(kind: str) -> Any:
    """The Update `kind` of a workflow whose Runner is `self.r`: its validator is the gate's
    `check_decision` (pure; a refusal carries its error kind), its handler the gate's `accept`.
    In a workflow class: `confirm = decision_update("confirm")`."""

    def handler(self, d: Decision) -> DecisionAck:
        return self.r.accept(kind, d)

    def validator(self, d: Decision) -> None:
        why = self.r.check_decision(kind, d)
        if why:
            raise refusal_error(why)

    handler.__name__ = handler.__qualname__ = kind
    validator.__name__ = validator.__qualname__ = f"_validate_{kind}"
    update = workflow.update(name=kind)(handler)
    update.validator(validator)
    return update


def decision_signal(kind: str) -> Any:
    """The signal `kind` (the Web UI's and `temporal workflow signal`'s way in): the same checks as the
    Update; a refused one is recorded in progress.decisions and ignored (a signal cannot be refused)."""

    def handler(self, d: Decision) -> None:
        why = self.r.check_decision(kind, d)
        if why:
            self.r.refuse(kind, d, why)
        else:
            self.r.accept(kind, d)

    handler.__name__ = handler.__qualname__ = f"{kind}_signal"
    return workflow.signal(name=kind)(handler)

class DecisionGate:
    """Awaiting, validating and accepting human decisions (Updates) and signed starts."""

    def two_person(self, values: dict[str, Any]) -> int:
        """How many different operators must approve a step leading to `values` (two-person rule)."""
        if not self.signing or not approvals.two_person_changes(values):
            return 1
        return 2 if workflow.patched(TWO_PERSON) else 1

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
                           retired=self.retired.get(self.requested_by, ()),
                           passkeys=self.passkeys.get(self.requested_by, ()), workflow_id=self.wid, action=action,
                           target=self.wid, values=values)
        except identity.Refused as e:
            hint = " (start it with the rollbackctl CLI, which signs)" if e.kind is identity.Refusal.UNSIGNED else ""
            return f"start of {self.wid} by {self.requested_by} {e}{hint}"
        self.used_nonces.append(proof.request.nonce)
        self.proofs.append(proof)
        return None

    def _still_needed(self, aw: Awaiting) -> list[str]:
        """Operators who could still approve `aw` (role, a key when signing on, not yet approved)."""
        need = Role(aw.min_role)
        return sorted(n for n, r in self.roster.items()
                      if Role(r).at_least(need) and n not in aw.approved_by
                      and (not self.signing or n in self.keys or self.passkeys.get(n)))

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
        aw = self.progress.awaiting
        summary = (f"{aw.step}: waiting for {aw.expects} from {aw.min_role}+" if aw is not None else "waiting for a decision")
        if not refresh:
            await workflow.wait_condition(lambda: self._decision is not None, timeout=timeout, timeout_summary=summary)
            return
        deadline = workflow.now() + timeout
        while True:
            left = deadline - workflow.now()
            if left <= timedelta(0):
                raise asyncio.TimeoutError()
            try:
                await workflow.wait_condition(lambda: self._decision is not None, timeout=min(left, ROSTER_REFRESH),
                                              timeout_summary=summary)
                return
            except asyncio.TimeoutError:
                if workflow.now() >= deadline:
                    raise
                await self.load_roster(local=False)
                if self.progress.awaiting is not None:
                    self.progress.awaiting.still_needed = self._still_needed(self.progress.awaiting)

    def answers(self, kind: str) -> bool:
        """Whether a decision of `kind` answers the step awaited now (else it is a standing decision:
        pause, tick, resolve... judged by the workflow's own rule in `standing`, never taken as the answer)."""
        aw = self.progress.awaiting
        return aw is not None and (kind in ANSWERS.get(aw.expects, ()) or self.exit_of(kind) is not None)

    def exit_of(self, kind: str) -> Exit | None:
        """The awaited step's exit of `kind` (withdraw, stay), if it offers one."""
        aw = self.progress.awaiting
        return next((e for e in aw.exits if e.kind == kind), None) if aw is not None else None

    def open_await(self, name: str, expects: str, min_role: Role, *, since: datetime, deadline: datetime | None,
                   prompt: str, approvals: int = 1, approved_by: tuple[str, ...] = (),
                   no_break_glass: str = "", exits: tuple[Exit, ...] = (),
                   on_timeout: str = "repage_and_wait") -> Awaiting:
        """Start awaiting a human (what `status`, the pages and the validators see); no decision yet."""
        self._decision = None
        aw = self.progress.awaiting = Awaiting(step=name, expects=expects, min_role=min_role.value, since=since,
                                               deadline=deadline, prompt=prompt, approvals_needed=approvals,
                                               approved_by=list(approved_by), no_break_glass=no_break_glass,
                                               exits=list(exits), on_timeout=on_timeout)
        if self.current_alert is not None:
            aw.alerts.append(self.current_alert)  # the latest page asked for it
        if approvals > 1:
            aw.still_needed = self._still_needed(aw)
            aw.prompt = self._approval_prompt(aw, prompt)
        self.show()
        return aw

    def close_await(self) -> None:
        self.progress.awaiting = None
        self._decision = None
        self.show()

    async def unanswered(self, aw: Awaiting, *, asks: str, prompt: str, waited: str, deadline: datetime | None,
                         severity: str = "critical") -> None:
        """Nobody answered `aw` in time: a reminder in chat if someone acknowledged the page in PagerDuty
        (nobody else is paged until PagerDuty says the acknowledgement timed out), else a re-page at the
        next escalation level. `asks`: what is awaited from whom, for the message."""
        aw.deadline = deadline
        if self.outbox and aw.seen_by is not None:
            aw.reminders += 1
            self.show()
            await self.notify(f"STILL WAITING ({aw.reminders}) for {asks} at {self.wid}: seen in PagerDuty by "
                              f"{aw.seen_by} at {aw.seen_at:%H:%M:%S}, no signed decision yet. {prompt}", page=False,
                              kind="reminder")
            return
        self.progress.page_level += 1
        if self.on_repage is not None:
            self.on_repage(self.progress.page_level)
        aw.repages += 1
        self.show()
        await self.notify(f"UNANSWERED after {waited}: {self.wid} waits for {asks}. {prompt}", page=True,
                          severity=severity, kind="repage", group=self.group)

    async def run_await(self, step: AwaitConfirmation, approved_by: tuple[str, ...] = ()) -> tuple[str, Decision | None]:
        """Wait for a decision. Returns (kind, decision); kind "timeout" when it proceeds/fails on time.

        `step.approvals == 2` (two-person rule): the step ends when a second, different operator of
        `step.min_role` approves (`approved_by`: who approved already, e.g. the signed requester), or a
        super admin's break-glass decision forces it.
        """
        rec = self._begin(step.name, step.kind)
        since = workflow.now()
        aw = self.open_await(step.name, step.expects, step.min_role, since=since, deadline=since + step.timeout,
                             prompt=step.prompt, approvals=step.approvals, approved_by=approved_by,
                             no_break_glass=step.no_break_glass, exits=step.exits, on_timeout=step.on_timeout)
        # Patch "roster-refresh": with signing on, keys are re-read while a human is awaited.
        refresh = self.signing and workflow.patched(ROSTER_REFRESH_PATCH)
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
                    await self.unanswered(aw, asks=f"{step.expects} ({step.min_role.value}+)", prompt=step.prompt,
                                          waited=str(step.timeout), deadline=workflow.now() + step.timeout)
                    continue
                kind, d = self._decision
                if self.exit_of(kind) is not None:  # a way out: no approvals to gather
                    self._end(rec, kind, f"{kind} by {d.actor}: {d.reason}")
                    if kind == "withdraw":
                        raise Withdrawn(step.name, d)
                    return kind, d
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
            self.close_await()

    @staticmethod
    def _counts_as_approval(kind: str, d: Decision) -> bool:
        """A decision that changes nothing (`fix --no-restore`) needs no second person."""
        return not (kind == "fix" and not d.restore)

    def signature_refusal(self, kind: str, d: Decision) -> str | None:
        """Why this decision's signature is refused (signing on), or None. Pure."""
        try:
            identity.check(d.proof(), actor=d.actor, public_key=self.keys.get(d.actor),
                           retired=self.retired.get(d.actor, ()), passkeys=self.passkeys.get(d.actor, ()),
                           workflow_id=self.wid, action=kind,
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
        if self._decision is not None and self.answers(kind):
            # Two decisions in the same workflow task (e.g. proceed and cancel at once): the first one
            # accepted wins; the later one must be refused, not acknowledged and then overwritten.
            k, prev = self._decision
            return (f"{k} by {prev.actor} was already accepted at step {self.progress.awaiting.step!r}; "
                    f"this {kind} by {d.actor} is not applied")
        if self.signing:
            why = self.signature_refusal(kind, d)
            if why:
                return why
        if d.break_glass is not None and kind not in EXITS:  # (an exit refuses it itself)
            aw = self.progress.awaiting
            if aw is not None and aw.no_break_glass:
                return invalid(aw.no_break_glass)
            if aw is None or aw.approvals_needed < 2:
                return invalid("--break-glass forces a two-person approval alone; this step does not need two")
            if not role.at_least(Role.SUPER_ADMIN):
                return not_permitted(f"{d.actor} is {role.value}; break-glass needs a super_admin")
            if not d.break_glass.strip():
                return invalid("--break-glass needs a reason")
        if kind == "escalate" and self._escalate_open:
            return None if role.at_least(Role.ON_CALL) else not_permitted(f"{d.actor} is {role.value}; escalating needs on_call")
        if kind in self.standing:
            return self.standing[kind](kind, d)
        aw = self.progress.awaiting
        if aw is None:
            return f"{self.wid} is not waiting for a decision now (step: {self.progress.current_step}, status {self.progress.status})"
        if kind in EXITS:
            return self._exit_refusal(kind, d, role)
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

    def _exit_refusal(self, kind: str, d: Decision, role: Role) -> str | None:
        """Why an exit (withdraw, stay) from `d.actor` is refused at the step awaited now, or None."""
        aw = self.progress.awaiting
        ex = self.exit_of(kind)
        if ex is None:
            offered = ", ".join(e.kind for e in aw.exits) or "none: answer it"
            return f"step {aw.step!r} of {self.wid} offers no {kind!r} (its exits: {offered}); it waits for {aw.expects!r}"
        if d.break_glass is not None:
            return invalid(f"{kind} needs no break-glass: it is a way out, not an approval")
        if ex.min_role is not None:
            if not role.at_least(Role(ex.min_role)):
                return not_permitted(f"{d.actor} is {role.value}; {kind} at step {aw.step!r} needs {ex.min_role} or above")
        else:
            starter = self.role_of(self.requested_by)
            if not (d.actor == self.requested_by or role.at_least(Role(aw.min_role))
                    or (starter is not None and role.rank > starter.rank)):
                return not_permitted(f"{d.actor} is {role.value}; {kind} is for its starter {self.requested_by}, a role "
                                     f"above theirs, or a {aw.min_role} (who could answer step {aw.step!r})")
        if not d.reason.strip():
            return invalid(f"{kind} needs a --reason (it is paged and recorded)")
        return None

    def accept(self, kind: str, d: Decision, *, authorizes: bool = True) -> DecisionAck:
        """Take a checked decision: the awaited step's answer (what `run_await` returns), an escalation
        out of an observation, or a standing decision (recorded; its workflow acts on it). Its nonce is
        spent; its signed request goes with the next change sets when it `authorizes` them."""
        step = self.progress.current_step or ""
        if kind == "escalate" and self._escalate_open and self.progress.awaiting is None:
            self._escalation = d
        elif self.answers(kind):
            self._decision = (kind, d)
        proof = d.proof() if self.signing else None
        if proof is not None:
            self.used_nonces.append(proof.request.nonce)
            if authorizes:
                self.proofs.append(proof)
        self.progress.decisions.append(DecisionRecord(at=workflow.now(), kind=kind, actor=d.actor, accepted=True,
                                                      detail=d.reason, key_id=d.key_id if proof else None,
                                                      break_glass=d.break_glass))
        return DecisionAck(accepted=True, step=step, message=f"{kind} by {d.actor} accepted at step {step}")

    def record_refused(self, a: RefusedAttempt) -> None:
        """An Update its validator refused, as the CLI reports it (Temporal records nothing of it): kept in
        the decisions, marked as reported, at most MAX_REFUSALS_KEPT per run."""
        mark = "(reported by the CLI)"
        if sum(1 for r in self.progress.decisions if r.detail.endswith(mark)) >= MAX_REFUSALS_KEPT:
            return
        self.progress.decisions.append(DecisionRecord(at=workflow.now(), kind=a.kind, actor=a.actor, accepted=False,
                                                      detail=f"refused: {a.why} {mark}"))

    def refuse(self, kind: str, d: Decision, why: str) -> None:
        """A refused signal: recorded, ignored (Updates are refused by their validators instead)."""
        self.progress.decisions.append(DecisionRecord(at=workflow.now(), kind=kind, actor=d.actor, accepted=False,
                                                      detail=why))

    @property
    def escalation(self) -> Decision | None:
        return self._escalation
