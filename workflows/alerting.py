"""Paging and chat for a Runner: notices through the pager workflow (patch pager-outbox) or directly
(older histories), the ledger of the alerts it opened, and the pager's answers.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.switch_activities import SwitchActivities
    from contracts.changes import SeenRecord
    from activities.pager_client import PagerClient
    from activities.paging import ChatInput, PageInput, PagingActivities
    from contracts.paging import (
        EVENT_SIGNAL,
        OPEN_STATUSES,
        OUTCOME_SIGNAL,
        TAKE_ALERTS_SIGNAL,
        AlertEvent,
        AlertRecord,
        AlertStatus,
        Channel,
        Delivery,
        Notice,
        PagingFailure,
        owner_of,
    )
    from manual import escalation, switches
    from contracts.progress import REFUSED_SIGNAL, DecisionRecord, RefusedAttempt
from workflows.base import (ACK_AFTER_STORM, CLOSE_WAIT, MAX_CHECKS_KEPT, NOTIFY_RETRY, SUBMIT_RETRY, SWITCH_RETRY,
                            Withdrawn, root_cause)


class Alerting:
    """Notify, page, acknowledge and resolve; the alert ledger in `progress.alerts`."""

    async def page_everyone(self, text: str) -> None:
        """A break-glass: every escalation level is paged, under its own dedup key (never merged)."""
        await asyncio.gather(*(self.notify(text, page=True, severity="critical", level=lv.level, dedup="break-glass",
                                           kind="break_glass")
                               for lv in escalation.LEVELS))

    async def notify(self, text: str, *, page: bool, severity: str = "warning", event_action: str = "trigger",
                     wait: bool = True, level: int | None = None, dedup: str | None = None, kind: str = "notice",
                     update: bool = False, group: str | None = None, member: str | None = None,
                     asks: str | None = None) -> None:
        """Chat always; a PagerDuty event too when `page`. With wait=False it runs beside the caller.

        `level`: the escalation level to address (default the current one); an acknowledge or resolve
        acts on every open alert (of that level, when given). Through the pager (patch PAGER_OUTBOX) a
        trigger page opens an alert of its own, so it notifies someone, unless `update`: then it is
        appended to the latest open alert and wakes nobody (a status update). `kind`, `group`, `member`:
        what the notice is and which storm it belongs to (workflows/pager.py). `asks`: the step whose
        decision it asks for, when it is sent just before that wait opens (else: the wait open now, if any);
        the page then links to the decision in the console.
        """
        if not self.outbox:
            await self._notify_direct(text, page=page, severity=severity, event_action=event_action, wait=wait,
                                      level=level, dedup=dedup)
            return
        if wait:
            await self._submit(text, page, severity, event_action, level, kind, update, group, member, asks)
        else:
            self._background.append(asyncio.create_task(
                self._submit(text, page, severity, event_action, level, kind, update, group, member, asks)))

    def _notice_id(self) -> str:
        """Unique across runs (continue-as-new) and the same on replay: the workflow's seeded uuid4 alone
        (never the run id or workflow id, which a replay of an exported history need not reproduce)."""
        self._notices += 1
        return f"n-{workflow.uuid4().hex}"

    def alert_key(self, level: int, topic: str | None = None) -> str:
        """`<workflow id>/[<key base>:]<topic>:L<level>`: the owner first (PagerDuty webhooks are routed
        by it), a topic of its own per alert unless one is named."""
        topic = topic or f"p{len(self.progress.alerts) + 1}"
        base = "" if self.key_base == self.wid else f"{self.key_base}:"
        return f"{self.wid}/{base}{topic}:L{level}"[:255]

    def open_alerts(self, level: int | None = None) -> list[AlertRecord]:
        return [a for a in self.progress.alerts if a.status in OPEN_STATUSES and (level is None or a.level == level)]

    def _alert(self, dedup_key: str | None) -> AlertRecord | None:
        """The ledger's alert for this dedup key (its owner prefix aside: a replay may run under another id)."""
        if dedup_key is None:
            return None
        exact = next((a for a in reversed(self.progress.alerts) if a.dedup_key == dedup_key), None)
        if exact is not None or dedup_key.startswith("pager/") or "/" not in dedup_key:
            return exact
        rest = dedup_key.split("/", 1)[1]
        return next((a for a in reversed(self.progress.alerts)
                     if "/" in a.dedup_key and a.dedup_key.split("/", 1)[1] == rest), None)

    async def _submit(self, text: str, page: bool, severity: str, event_action: str, level: int | None, kind: str,
                      update: bool, group: str | None, member: str | None, asks: str | None = None) -> None:
        prefix = "[DRILL] " if self.drill else ""
        lvl = level or self.progress.page_level
        now = workflow.now()
        step = asks or (self.progress.awaiting.step if self.progress.awaiting is not None else None)
        waits = {"step": step} if step else {}  # a decision is asked for: the console links to it
        common = dict(owner=self.wid, severity=severity, drill=self.drill, kind=kind,
                      fields={"workflow": self.wid, "incident": self.incident, **waits},
                      custom_details={"workflow_id": self.wid, "incident": self.incident, "drill": self.drill,
                                      **({"decision_step": step} if step else {})})
        notices: list[Notice] = []
        if event_action == "trigger":
            key = None
            target = next(iter(reversed(self.open_alerts())), None) if update and page else None
            if target is not None:
                key, lvl = target.dedup_key, target.level
            elif page:
                key = self.alert_key(lvl)
            n = Notice(id=self._notice_id(), text=f"{prefix}{text}", page=page, event_action="trigger", level=lvl,
                       dedup_key=key, group=group, member=member, urgent=page and severity == "critical",
                       submitted_at=now, **common)
            if page and target is None:
                self.progress.alerts.append(AlertRecord(dedup_key=key, level=lvl, kind=kind, summary=text[:240],
                                                        opened_at=now, notice_id=n.id, group=group))
                self.current_alert = key
                if self.progress.awaiting is not None:
                    self.progress.awaiting.alerts.append(key)
            notices.append(n)
        else:
            # each alert once: not one an earlier acknowledge/resolve of this workflow is still on its way to
            targets = [a for a in self.open_alerts(level) if f"{event_action}:{a.dedup_key}" not in self._acting
                       and not (event_action == "acknowledge" and a.status is AlertStatus.ACKNOWLEDGED)]
            self._acting.update(f"{event_action}:{a.dedup_key}" for a in targets)
            held = [a for a in targets if a.status is AlertStatus.SUBMITTED and a.group is not None]
            if held and workflow.patched(ACK_AFTER_STORM):
                # a storm's member not paged yet (the pager holds a storm for its siblings): its alert will be
                # the storm's, under another key; sent under this one, PagerDuty would drop it
                targets = [a for a in targets if a not in held]
                self._background.append(asyncio.create_task(self._after_storm(held, f"{prefix}{text}",
                                                                              event_action, common)))
            for i, a in enumerate(targets):
                n = Notice(id=self._notice_id(), text=f"{prefix}{text}", page=True, event_action=event_action,
                           level=a.level, dedup_key=a.dedup_key, chat=i == 0 and a.level == lvl, submitted_at=now,
                           **common)
                self._pending[n.id] = a.dedup_key
                notices.append(n)
            if not any(n.chat for n in notices):
                notices.append(Notice(id=self._notice_id(), text=f"{prefix}{text}", level=lvl, submitted_at=now,
                                      **common))
        if not await self._hand_over(notices):
            return
        triggers = [n for n in notices if n.page and n.event_action == "trigger"]
        if triggers:
            self._background.append(asyncio.create_task(self._watch(triggers)))

    async def _hand_over(self, notices: list[Notice]) -> bool:
        """To the pager; when it cannot be reached, sent directly (False)."""
        try:
            await workflow.execute_activity_method(
                PagerClient.submit, notices, start_to_close_timeout=timedelta(seconds=10),
                schedule_to_close_timeout=timedelta(minutes=2), retry_policy=SUBMIT_RETRY)
        except FailureError as e:
            why = f"the pager could not be reached ({root_cause(e)})"
            await self._send_directly(notices, why)
            return False
        return True

    async def _after_storm(self, held: list[AlertRecord], text: str, event_action: str, common: dict) -> None:
        """An acknowledge or resolve of alerts whose trigger the pager still holds in a storm: once each went out
        (the ledger then has the storm's key) or failed (nothing to act on), sent under the key PagerDuty knows.
        Every wait has an exit: past `confirm_within` the trigger is sent directly (_watch) and so is this."""
        try:
            await workflow.wait_condition(lambda: all(a.status is not AlertStatus.SUBMITTED for a in held),
                                          timeout=self.limits.confirm_within)
        except asyncio.TimeoutError:
            pass
        now = workflow.now()
        notices = []
        for a in held:
            if a.status is AlertStatus.FAILED:
                continue
            n = Notice(id=self._notice_id(), text=text, page=True, event_action=event_action, level=a.level,
                       dedup_key=a.dedup_key, chat=False, submitted_at=now, **common)
            self._pending[n.id] = a.dedup_key
            notices.append(n)
        if notices:
            await self._hand_over(notices)

    async def _watch(self, notices: list[Notice]) -> None:
        """Every wait has an exit: a page the pager has not confirmed within `confirm_within` is sent
        directly (and the failure recorded), so a broken pager can delay a page, never swallow it."""
        def confirmed() -> bool:
            return all((a := self._by_notice(n.id)) is None or a.status is not AlertStatus.SUBMITTED for n in notices)

        try:
            await workflow.wait_condition(confirmed, timeout=self.limits.confirm_within)
        except asyncio.TimeoutError:
            late = [n for n in notices if (a := self._by_notice(n.id)) is not None and a.status is AlertStatus.SUBMITTED]
            await self._send_directly(late, f"the pager did not confirm within {self.limits.confirm_within}")

    def _by_notice(self, notice_id: str) -> AlertRecord | None:
        return next((a for a in self.progress.alerts if a.notice_id == notice_id), None)

    async def _send_directly(self, notices: list[Notice], why: str) -> None:
        for n in notices:
            self._fail(Channel.PAGERDUTY if n.page else Channel.SLACK, n.level, n.id, why, ["sent directly"])
            calls = []
            if n.chat:
                calls.append(workflow.execute_activity_method(
                    PagingActivities.chat, ChatInput(text=n.text, escalation_level=n.level, fields=n.fields,
                                                     drill=n.drill),
                    start_to_close_timeout=timedelta(seconds=10), retry_policy=NOTIFY_RETRY))
            if n.page and n.dedup_key:
                calls.append(workflow.execute_activity_method(
                    PagingActivities.page, PageInput(event_action=n.event_action, dedup_key=n.dedup_key,
                                                     summary=n.text[:1000], severity=n.severity,
                                                     escalation_level=n.level, custom_details=n.custom_details,
                                                     drill=n.drill),
                    start_to_close_timeout=timedelta(seconds=10), retry_policy=NOTIFY_RETRY))
            results = await asyncio.gather(*calls, return_exceptions=True)
            page_ok = n.page and n.dedup_key and not isinstance(results[-1], BaseException)
            if n.page and n.dedup_key:
                self.on_deliveries([Delivery(notice_id=n.id, channel=Channel.PAGERDUTY, level=n.level,
                                             event_action=n.event_action, ok=bool(page_ok), at=workflow.now(),
                                             dedup_key=n.dedup_key,
                                             error="" if page_ok else str(root_cause(results[-1])))])

    def _fail(self, channel: Channel, level: int, notice_id: str, why: str, rerouted: list[str]) -> None:
        self.progress.paging_failures.append(PagingFailure(at=workflow.now(), notice_id=notice_id, channel=channel,
                                                           level=level, why=why[:500], rerouted=rerouted))
        del self.progress.paging_failures[:-MAX_CHECKS_KEPT]
        self.log("paging failed (%s level %d): %s; rerouted to %s", channel.value, level, why,
                 ", ".join(rerouted) or "nothing")

    def on_deliveries(self, deliveries: list[Delivery]) -> None:
        """The pager's outcome for notices of this workflow (signal `paging_outcome`)."""
        for d in deliveries:
            if d.channel is Channel.PAGERDUTY:
                if d.event_action == "trigger":
                    a = self._by_notice(d.notice_id)
                    if a is not None:
                        if d.ok:
                            if a.status is AlertStatus.SUBMITTED:
                                a.status = AlertStatus.OPEN
                            a.delivered_at = a.delivered_at or d.at
                            if d.dedup_key and d.dedup_key.startswith("pager/") and d.dedup_key != a.dedup_key:
                                # a storm's shared alert: this notice went out as part of it
                                aw = self.progress.awaiting
                                if aw is not None and a.dedup_key in aw.alerts:
                                    aw.alerts.append(d.dedup_key)
                                if self.current_alert == a.dedup_key:
                                    self.current_alert = d.dedup_key
                                a.dedup_key = d.dedup_key
                        elif a.status is AlertStatus.SUBMITTED:
                            a.status, a.why = AlertStatus.FAILED, d.error[:300]
                else:
                    key = self._pending.pop(d.notice_id, None)
                    a = self._alert(key)
                    if a is not None and d.ok:
                        if d.event_action == "resolve":
                            a.status, a.resolved_at = AlertStatus.RESOLVED, d.at
                        elif a.status in (AlertStatus.OPEN, AlertStatus.SUBMITTED):
                            a.status, a.acked_at = AlertStatus.ACKNOWLEDGED, d.at
            if not d.ok:
                self._fail(d.channel, d.level, d.notice_id, d.error or "failed", d.rerouted)
            if self.on_delivery is not None:
                self.on_delivery(d)

    async def on_alert_event(self, ev: AlertEvent) -> None:
        """PagerDuty says a person acted on one of this workflow's alerts (v3 webhook, via the pager).
        An acknowledgement is recorded as *seen* (who, when; in the audit trail too): it stops re-paging
        for the decision that alert asked for, and is never the signed decision itself."""
        a = self._alert(ev.dedup_key)
        if a is None:
            self.log("PagerDuty %s for %s: not an alert of this workflow; ignored", ev.event_type, ev.dedup_key)
            return
        aw = self.progress.awaiting
        if ev.event_type == "acknowledged":
            a.seen_by, a.seen_at = ev.by or "someone in PagerDuty", ev.at
            if a.status in (AlertStatus.OPEN, AlertStatus.SUBMITTED):
                a.status, a.acked_at = AlertStatus.ACKNOWLEDGED, ev.at
            if aw is not None and a.dedup_key in aw.alerts:
                aw.seen_by, aw.seen_at = a.seen_by, ev.at
        elif ev.event_type in ("unacknowledged", "reopened"):
            a.status = AlertStatus.OPEN
            if aw is not None and a.dedup_key in aw.alerts:
                aw.seen_by, aw.seen_at = None, None  # its acknowledgement timed out: re-paging resumes
        elif ev.event_type == "resolved":
            a.status, a.resolved_at = AlertStatus.RESOLVED, ev.at
        self.progress.decisions.append(DecisionRecord(
            at=workflow.now(), kind=f"pagerduty.{ev.event_type}", actor=ev.by or "pagerduty", accepted=False,
            detail=f"seen in PagerDuty ({a.dedup_key}); not a signed decision"))
        try:
            await workflow.execute_activity_method(
                SwitchActivities.record_seen,
                SeenRecord(event_id=ev.event_id, event=ev.event_type, by=ev.by, at=ev.at.isoformat(),
                           dedup_key=ev.dedup_key, source=self.wid, incident=self.incident,
                           awaiting=aw.step if aw is not None else None),
                start_to_close_timeout=timedelta(seconds=10), retry_policy=SWITCH_RETRY)
        except FailureError as e:
            self.log("could not record PagerDuty %s in the audit trail: %s", ev.event_type, root_cause(e))

    def take_alerts(self, recs: list[AlertRecord]) -> None:
        """Alerts handed on by the workflow this one continues: resolved when this one ends."""
        known = {a.dedup_key for a in self.progress.alerts}
        for r in recs:
            if r.dedup_key not in known:
                self.progress.alerts.append(r.model_copy(update={"handed_to": None,
                                                                 "why": f"handed on by {owner_of(r.dedup_key)}"}))

    async def hand_on(self, to_workflow: str) -> bool:
        """Give this workflow's open alerts to `to_workflow` (which continues its work); False if it has ended."""
        recs = self.open_alerts()
        if not recs:
            return False
        try:
            await workflow.get_external_workflow_handle(to_workflow).signal(TAKE_ALERTS_SIGNAL, recs)
        except (FailureError, ApplicationError):
            return False
        for a in recs:
            a.status, a.handed_to, a.why = AlertStatus.HANDED_ON, to_workflow, f"handed on to {to_workflow}"
        return True

    async def cancelled_from_outside(self, held: dict[str, Any], core_in_force: list[str]) -> None:
        """Temporal's "Request Cancellation" (the Web UI's button) ended this workflow between its own steps:
        nothing is restored (that needs a fix and its approvals), so say what stays, page it, and leave that
        page open for a human (patch CANCEL_HANDLED; before, the workflow just vanished, silent)."""
        step = self.progress.current_step or "-"
        stays = ", ".join(f"{k}={switches.get(k).render(v)}" for k, v in held.items()) or "no switch changed by it"
        self.progress.detail = (f"cancelled in Temporal at step {step}: nothing restored; the switches stay as it left "
                                f"them ({stays})" + (f"; trading-core controls still in force: {', '.join(core_in_force)}"
                                                     if core_in_force else "")
                                + ". Decide by hand: `rollbackctl switch list`, `rollbackctl audit`.")
        self.progress.status = self.progress.result = "cancelled"
        self.progress.awaiting = None
        self.progress.current_step = None
        await self.notify(f"{self.wid} CANCELLED from Temporal: {self.progress.detail}", page=True, severity="critical",
                          kind="cancelled")
        await self.drain()
        await self.close_alerts(left_open=self.progress.detail)
        await self.drain()

    async def withdrawn(self, w: Withdrawn, held: dict[str, Any], core_in_force: list[str]) -> None:
        """An operator withdrew this workflow at a wait (its `withdraw` exit): nothing more is applied and
        nothing is restored; say what stays and page it (an info page when it changed nothing)."""
        d = w.decision
        stays = ", ".join(f"{k}={switches.get(k).render(v)}" for k, v in held.items())
        left = (f"the switches stay as it set them ({stays})" if stays else "it changed no switch") + (
            f"; trading-core controls still in force: {', '.join(core_in_force)}" if core_in_force else "")
        self.progress.detail = (f"withdrawn by {d.actor} at step {w.step}: {d.reason}. Nothing restored: {left}"
                                + (". Decide by hand: `rollbackctl switch list`, `rollbackctl audit`."
                                   if stays or core_in_force else "."))
        changed = bool(stays or core_in_force)
        await self.notify(f"{self.wid} WITHDRAWN: {self.progress.detail}", page=True,
                          severity="critical" if changed else "info", kind="withdrawn")

    async def close_alerts(self, left_open: str | None = None) -> None:
        """At the end: resolve every alert still open, but for `left_open` (why a human must still act:
        the latest alert stays open in PagerDuty, said in the ledger). Waits briefly to hear them resolved."""
        if not self.outbox:
            return
        opened = self.open_alerts()
        if left_open and opened:
            keep = max(opened, key=lambda a: a.opened_at)
            keep.status, keep.why = AlertStatus.LEFT_OPEN, left_open[:300]
        if not self.open_alerts():
            return
        await self.notify(f"{self.wid} ended: {self.progress.result or self.progress.status}"
                          + (f" ({left_open})" if left_open else ""), page=True, severity="info",
                          event_action="resolve", kind="closed")
        try:
            await workflow.wait_condition(lambda: not [a for a in self.open_alerts()], timeout=CLOSE_WAIT)
        except asyncio.TimeoutError:
            for a in self.open_alerts():
                a.why = f"resolve sent; PagerDuty had not confirmed it within {CLOSE_WAIT}"

    async def _notify_direct(self, text: str, *, page: bool, severity: str = "warning", event_action: str = "trigger",
                             wait: bool = True, level: int | None = None, dedup: str | None = None) -> None:
        """Before patch PAGER_OUTBOX: chat and page straight from the workflow (recorded histories)."""
        prefix = "[DRILL] " if self.drill else ""
        level = level or self.progress.page_level

        async def send() -> None:
            try:
                # By name, results read as dicts: histories recorded before the pager outbox hold the
                # answers of older paging activities, which today's ChatResult / PageResult do not decode
                # (a method reference would impose its return type; the SDK ignores result_type then).
                calls = [workflow.execute_activity(
                    "paging.chat", ChatInput(text=f"{prefix}{text}", escalation_level=level, drill=self.drill,
                                                     fields={"workflow": self.wid, "incident": self.incident}),
                    result_type=dict, start_to_close_timeout=timedelta(seconds=10), retry_policy=NOTIFY_RETRY)]
                if page:
                    calls.append(workflow.execute_activity(
                        "paging.page", PageInput(
                            event_action=event_action,
                            dedup_key=f"{self.key_base}:L{level}" + (f":{dedup}" if dedup else ""),
                            summary=f"{prefix}{text}"[:1000], severity=severity, source="rollbackctl",
                            escalation_level=level, drill=self.drill,
                            custom_details={"workflow_id": self.wid, "incident": self.incident, "drill": self.drill}),
                        result_type=dict, start_to_close_timeout=timedelta(seconds=10), retry_policy=NOTIFY_RETRY))
                await asyncio.gather(*calls)
            except FailureError as e:
                self.log("notification failed: %s", e)

        if wait:
            await send()
        else:
            self._background.append(asyncio.create_task(send()))

    async def drain(self) -> None:
        """Let background notifications finish before the workflow returns."""
        self.show()  # (its end: status and result as set)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
            self._background.clear()


class PagingHandlers:
    """The pager's answers, for every workflow that pages (its Runner is `self.r`): deliveries, what
    PagerDuty says of its alerts, and alerts handed on by the workflow this one continues."""

    r: Alerting

    @workflow.signal(name=OUTCOME_SIGNAL)
    def paging_outcome(self, deliveries: list[Delivery]) -> None:
        self.r.on_deliveries(deliveries)

    @workflow.signal(name=EVENT_SIGNAL)
    async def paging_event(self, ev: AlertEvent) -> None:
        await self.r.on_alert_event(ev)

    @workflow.signal(name=TAKE_ALERTS_SIGNAL)
    def take_alerts(self, recs: list[AlertRecord]) -> None:
        self.r.take_alerts(recs)

    @workflow.signal(name=REFUSED_SIGNAL)
    def refused_attempt(self, a: RefusedAttempt) -> None:
        """The CLI's report of an Update this workflow's validator refused (workflows/gate.py record_refused)."""
        self.r.record_refused(a)
