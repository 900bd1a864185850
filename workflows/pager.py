"""PagerWorkflow: the one outbox every page and chat message leaves through (id `pager-<task queue>`).

Workflows hand it notices (signal `submit`, sent by the `paging.submit` activity as signal-with-start,
so a pager that ended is started again); it decides when and how each goes out and reports back:

- **Budgets.** PagerDuty ingests about 120 events a minute per routing key over the last 60 s and
  drops the rest with 429; Slack takes about one message a second per webhook (contracts/paging.py).
  Sends wait in a queue for a free slot of their (channel, level): urgent ones (critical triggers)
  first, then in arrival order, and never two events of one alert out of order.
- **Storms.** Notices carrying a `group` (a rule family, e.g. `order_deviation`) of the same `kind` at
  the same level are one storm: the first waits `group_hold` for its siblings, then one PagerDuty
  trigger names every member (custom_details.members) and Slack gets digests; newcomers are named by
  one update every `group_update_every` (a trigger on the same dedup key: appended, it wakes nobody
  twice). The storm's alert is acknowledged with its first member and resolved with its last.
- **Failures routed around.** A send PagerDuty or Slack refuses for good (or that fails every retry)
  goes out at once on the other channel and at the next level, and its owner hears of it.
- **Outcomes.** Each owner gets `paging_outcome` (list[Delivery]) for its notices, and `paging_event`
  for what PagerDuty says of its alerts (v3 webhooks: acknowledged / unacknowledged / resolved in the
  app), which the receiver (`rollbackctl paging serve`) signals here as `alert_event`.

It runs for ever, continuing as new when its history grows (state in PagerState). Queries: `queue`
(what waits, storms, counts) and `alerts`.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.paging import NON_RETRYABLE, ChatInput, PageInput, PagingActivities
    from contracts.paging import (
        EVENT_SIGNAL,
        OUTCOME_SIGNAL,
        AlertEvent,
        AlertIndex,
        Channel,
        Delivery,
        Group,
        GroupMember,
        Notice,
        PagerInput,
        PagerLimits,
        PagerState,
        QueueView,
        Send,
        owner_of,
    )

# One attempt per activity: the pager retries itself, re-queued under the budget, because PagerDuty
# counts every call (a retry inside the activity would spend budget the pager cannot see, and collide
# with the next send). PagerDuty suggests retrying a 429 "a moment later ... 30 seconds apart".
ONE_ATTEMPT = RetryPolicy(maximum_attempts=1)
MAX_ATTEMPTS = 6
BACKOFF = {Channel.PAGERDUTY: [5, 10, 20, 30, 30], Channel.SLACK: [1, 2, 4, 8, 16]}  # seconds, per retry
# Arrival jitter: a send started at t may reach the service a little later than the next one's window
# assumes; the window is kept this much longer than the service's.
MARGIN = {Channel.PAGERDUTY: timedelta(seconds=1), Channel.SLACK: timedelta(milliseconds=250)}
SEND_TIMEOUT = timedelta(seconds=20)
CONTINUE_AT = 6000  # history events
KEEP_SEEN = 5000
KEEP_ALERTS = 3000
DIGEST_MAX = 2600  # characters of one Slack digest (the chat activity's section holds 3000)
SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2, "critical": 3}


def _bucket(channel: Channel, level: int) -> str:
    return f"{channel.value} L{level}"


def _cause(e: BaseException) -> BaseException:
    while isinstance(e, (ActivityError,)) and e.cause is not None:
        e = e.cause
    return e


@workflow.defn(name="PagerWorkflow")
class PagerWorkflow:
    @workflow.init
    def __init__(self, inp: PagerInput) -> None:
        self.limits: PagerLimits = inp.limits
        self.st: PagerState = inp.carry or PagerState()
        self._wake = 0
        self._inflight: dict[str, str | None] = {}  # send id -> its alert's dedup key
        self._reporting: list[asyncio.Task] = []
        self._draining = False

    # -- input -------------------------------------------------------------------------------------
    @workflow.signal
    def submit(self, notices: list[Notice]) -> None:
        now = workflow.now()
        for n in notices:
            if n.id in self.st.seen_notices:
                continue  # a retried submit
            self.st.seen_notices.append(n.id)
            self._count("notices")
            self._accept(n, now)
        del self.st.seen_notices[:-KEEP_SEEN]
        self._wake += 1

    @workflow.signal
    def alert_event(self, ev: AlertEvent) -> None:
        """PagerDuty said something happened to an alert (the webhook receiver): tell who opened it."""
        if ev.event_id in self.st.seen_events:
            return
        self.st.seen_events.append(ev.event_id)
        del self.st.seen_events[:-KEEP_SEEN]
        owners: list[str] = []
        group = next((g for g in self.st.groups.values() if g.dedup_key == ev.dedup_key), None)
        if group is not None:
            owners = [m.owner for m in group.members if not m.resolved and m.owner]
            if ev.event_type == "acknowledged":
                group.status = "acknowledged"
            elif ev.event_type == "resolved":
                group.status = "resolved"
        else:
            idx = self.st.alerts.get(ev.dedup_key)
            owners = list(idx.owners) if idx is not None else [o for o in [owner_of(ev.dedup_key)] if o]
        idx = self.st.alerts.get(ev.dedup_key)
        if idx is not None:
            idx.status = {"acknowledged": "acknowledged", "resolved": "resolved"}.get(ev.event_type, "open")
        if not owners:
            self._unknown(ev)
            return
        self._count(f"pagerduty {ev.event_type}")
        self._reporting.append(asyncio.create_task(self._forward(owners, ev)))

    def _unknown(self, ev: AlertEvent) -> None:
        self._count("unknown_events")
        workflow.logger.warning("PagerDuty %s for %s: no running workflow here opened that alert; ignored",
                                ev.event_type, ev.dedup_key)

    async def _forward(self, owners: list[str], ev: AlertEvent) -> None:
        told = await self._tell(owners, EVENT_SIGNAL, ev)
        if told:
            self._count("events_forwarded")
        else:
            self._unknown(ev)

    # -- views --------------------------------------------------------------------------------------
    @workflow.query
    def queue(self) -> QueueView:
        now = workflow.now()
        waiting: dict[str, int] = {}
        for s in self.st.queue:
            waiting[_bucket(s.channel, s.level)] = waiting.get(_bucket(s.channel, s.level), 0) + 1
        oldest = min((s.queued_at for s in self.st.queue), default=now)
        groups = [{"group": g.group, "kind": g.kind, "level": g.level, "status": g.status,
                   "members": len(g.members), "named": sum(1 for m in g.members if m.named_pd or m.named_slack),
                   "dedup_key": g.dedup_key}
                  for g in self.st.groups.values() if g.status != "resolved"]
        stats = self.st.stats
        return QueueView(
            waiting=waiting, in_flight=len(self._inflight), oldest_waiting_s=(now - oldest).total_seconds(),
            groups=groups,
            sent={k[5:]: v for k, v in stats.items() if k.startswith("sent ")},
            failed={k[7:]: v for k, v in stats.items() if k.startswith("failed ")},
            rerouted=stats.get("rerouted", 0), throttled=stats.get("throttled", 0),
            unknown_events=stats.get("unknown_events", 0), events_forwarded=stats.get("events_forwarded", 0),
            runs=self.st.runs)

    @workflow.query
    def alerts(self) -> list[AlertIndex]:
        return list(self.st.alerts.values())

    # -- the loop -------------------------------------------------------------------------------------
    @workflow.run
    async def run(self, inp: PagerInput) -> None:
        while True:
            now = workflow.now()
            if not self._draining:
                flush_at = self._flush_groups(now)
                next_at = self._dispatch(now)
                if flush_at is not None:
                    next_at = flush_at if next_at is None else min(next_at, flush_at)
                if (workflow.info().get_current_history_length() >= CONTINUE_AT
                        or workflow.info().is_continue_as_new_suggested()):
                    self._draining = True
            else:
                next_at = None
            if self._draining and not self._inflight:
                break
            wake = self._wake
            timeout = max(next_at - now, timedelta(milliseconds=10)) if next_at is not None else None
            try:
                await workflow.wait_condition(lambda: self._wake != wake, timeout=timeout)
            except asyncio.TimeoutError:
                pass
        while any(not t.done() for t in self._reporting):
            await asyncio.gather(*self._reporting, return_exceptions=True)
        await workflow.wait_condition(workflow.all_handlers_finished)
        self.st.runs += 1
        workflow.continue_as_new(PagerInput(limits=self.limits, carry=self.st))

    # -- accepting notices ------------------------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        self.st.stats[key] = self.st.stats.get(key, 0) + n

    def _enqueue(self, s: Send) -> None:
        self.st.queue.append(s)

    def _send_for(self, n: Notice, channel: Channel, now: datetime, **kw: Any) -> Send:
        return Send(id=f"{n.id}:{channel.value}", channel=channel, level=n.level, event_action=n.event_action,
                    text=n.text[:3000], severity=n.severity, dedup_key=n.dedup_key, fields=n.fields,
                    custom_details=n.custom_details, notice_ids=[n.id], owners=[n.owner], urgent=n.urgent,
                    queued_at=now, page=n.page, drill=n.drill, **kw)

    def _group_of_key(self, dedup_key: str | None) -> Group | None:
        if dedup_key is None:
            return None
        return next((g for g in self.st.groups.values() if g.dedup_key == dedup_key and g.status != "resolved"), None)

    def _accept(self, n: Notice, now: datetime) -> None:
        if n.group and n.event_action == "trigger":
            self._join_group(n, now)
            return
        g = self._group_of_key(n.dedup_key) if n.page else None
        if g is not None:  # an acknowledgement or resolve of a storm's shared alert
            self._group_followup(g, n, now)
            if n.event_action != "trigger" and n.chat:
                self._enqueue(self._send_for(n, Channel.SLACK, now))
            return
        if n.chat:
            self._enqueue(self._send_for(n, Channel.SLACK, now))
        if n.page:
            if not n.dedup_key:
                self._report_now([Delivery(notice_id=n.id, channel=Channel.PAGERDUTY, level=n.level,
                                           event_action=n.event_action, ok=False, at=now, permanent=True,
                                           error="a page needs a dedup_key")], {n.id: n.owner})
                return
            self._enqueue(self._send_for(n, Channel.PAGERDUTY, now))

    def _join_group(self, n: Notice, now: datetime) -> None:
        key = f"{n.group}|{n.kind}|L{n.level}|{'drill' if n.drill else 'live'}"
        g = self.st.groups.get(key)
        if g is None or g.status == "resolved" or all(m.resolved for m in g.members):
            self.st.group_seq += 1
            g = Group(key=key, group=n.group, kind=n.kind, level=n.level, drill=n.drill,
                      dedup_key=f"pager/{n.group}-{n.kind}-{self.st.group_seq}:L{n.level}"[:255], opened_at=now,
                      flush_at=now + self.limits.group_hold)
            self.st.groups[key] = g
        g.members.append(GroupMember(notice_id=n.id, owner=n.owner, label=n.member or n.owner or n.id,
                                     text=n.text[:600], page=n.page))
        g.page = g.page or n.page
        if SEVERITY_RANK[n.severity] > SEVERITY_RANK[g.severity]:
            g.severity = n.severity

    def _group_followup(self, g: Group, n: Notice, now: datetime) -> None:
        """A member acknowledges or resolves the storm's alert: the first ack acknowledges it, the last
        resolve resolves it; the others are done at once (the alert stays for the other members)."""
        ok_now = Delivery(notice_id=n.id, channel=Channel.PAGERDUTY, level=n.level, event_action=n.event_action,
                          ok=True, at=now, dedup_key=g.dedup_key, grouped_with=len(g.members) - 1)
        if n.event_action == "resolve":
            for m in g.members:
                if m.owner == n.owner:
                    m.resolved = True
            if all(m.resolved for m in g.members):
                g.status = "resolved"
                self._enqueue(self._send_for(n, Channel.PAGERDUTY, now, group_key=g.key).model_copy(
                    update={"dedup_key": g.dedup_key}))
                return
            self._report_now([ok_now], {n.id: n.owner})
        elif n.event_action == "acknowledge":
            if g.status in ("open", "collecting"):
                g.status = "acknowledged"
                self._enqueue(self._send_for(n, Channel.PAGERDUTY, now, group_key=g.key).model_copy(
                    update={"dedup_key": g.dedup_key}))
                return
            self._report_now([ok_now], {n.id: n.owner})

    def _flush_groups(self, now: datetime) -> datetime | None:
        """Send what each storm has not named yet (once its hold or update interval is over); returns
        when the next storm flush is due, if any waits."""
        due: datetime | None = None
        for g in self.st.groups.values():
            if g.status == "resolved":
                continue
            new_pd = [m for m in g.members if g.page and m.page and not m.named_pd and not m.resolved]
            new_chat = [m for m in g.members if not m.named_slack and not m.resolved]
            if not new_pd and not new_chat:
                continue
            if any(s.group_key == g.key for s in self.st.queue) or any(
                    sid.startswith(g.dedup_key) for sid in self._inflight):
                continue  # the last flush is still waiting for budget or on its way: woken when it is done
            if now < g.flush_at:
                due = g.flush_at if due is None else min(due, g.flush_at)
                continue
            g.flush_at = now + self.limits.group_update_every
            labels = [m.label for m in g.members if not m.resolved]
            drill = "[DRILL] " if g.drill else ""
            if new_pd:
                shown = ", ".join(labels[:25]) + (f" and {len(labels) - 25} more" if len(labels) > 25 else "")
                summary = (f"{drill}{g.group} storm: {len(labels)} {g.kind} ({shown}). First: "
                           f"{g.members[0].text}")[:1000]
                self._enqueue(Send(
                    id=f"{g.dedup_key}:{len(self.st.queue)}:{now.isoformat()}", channel=Channel.PAGERDUTY,
                    level=g.level, text=summary, severity=g.severity, dedup_key=g.dedup_key,
                    custom_details={"members": labels, "new": [m.label for m in new_pd],
                                    "incidents": sorted({m.owner for m in g.members if m.owner}),
                                    "storm": g.group, "kind": g.kind},
                    notice_ids=[m.notice_id for m in new_pd], owners=[m.owner for m in new_pd],
                    urgent=g.severity == "critical", queued_at=now, group_key=g.key, page=True, drill=g.drill))
            chunk: list[GroupMember] = []
            size = 0
            chunks: list[list[GroupMember]] = []
            for m in new_chat:
                line = len(m.label) + min(len(m.text), 200) + 6
                if chunk and size + line > DIGEST_MAX:
                    chunks.append(chunk)
                    chunk, size = [], 0
                chunk.append(m)
                size += line
            if chunk:
                chunks.append(chunk)
            for i, c in enumerate(chunks):
                text = (f"{drill}{g.group} storm, {g.kind}: {len(labels)} in all"
                        + (f" (part {i + 1}/{len(chunks)})" if len(chunks) > 1 else "") + "\n"
                        + "\n".join(f"• {m.label}: {m.text[:200]}" for m in c))
                self._enqueue(Send(
                    id=f"{g.dedup_key}:slack:{now.isoformat()}:{i}", channel=Channel.SLACK, level=g.level, text=text,
                    severity=g.severity, notice_ids=[m.notice_id for m in c], owners=[m.owner for m in c],
                    urgent=g.severity == "critical", queued_at=now, group_key=g.key, drill=g.drill,
                    fields={"storm": g.group, "members": str(len(labels))}))
        return due

    # -- sending ------------------------------------------------------------------------------------------
    def _window(self, channel: Channel) -> tuple[int, timedelta]:
        if channel is Channel.PAGERDUTY:
            return self.limits.pagerduty_per_min, timedelta(seconds=60) + MARGIN[channel]
        per_s = self.limits.slack_per_s
        if per_s >= 1:
            return int(per_s), timedelta(seconds=1) + MARGIN[channel]
        return 1, timedelta(seconds=1 / per_s) + MARGIN[channel]

    def _slot(self, s: Send, now: datetime) -> datetime | None:
        """None if `s` may start now (and then its slot is taken), else when a slot of its bucket frees."""
        n, w = self._window(s.channel)
        key = _bucket(s.channel, s.level)
        times = [t for t in self.st.sent_at.get(key, []) if t > now - w]
        self.st.sent_at[key] = times
        if len(times) < n:
            times.append(now)
            return None
        return times[-n] + w

    def _dispatch(self, now: datetime) -> datetime | None:
        next_at: datetime | None = None
        busy = {k for k in self._inflight.values() if k}
        started: list[Send] = []
        for s in sorted(self.st.queue, key=lambda s: (not s.urgent, s.queued_at)):
            if s.dedup_key and s.dedup_key in busy:
                continue  # an earlier event of the same alert goes first
            if s.not_before is not None and s.not_before > now:  # a retry, waiting for its time
                next_at = s.not_before if next_at is None else min(next_at, s.not_before)
                if s.dedup_key:
                    busy.add(s.dedup_key)
                continue
            free_at = self._slot(s, now)
            if free_at is not None:
                if not s.throttled:
                    s.throttled = True
                    self._count("throttled")
                next_at = free_at if next_at is None else min(next_at, free_at)
                if s.dedup_key:
                    busy.add(s.dedup_key)
                continue
            started.append(s)
            if s.dedup_key:
                busy.add(s.dedup_key)
        for s in started:
            self.st.queue.remove(s)
            self._inflight[s.id] = s.dedup_key
            self._reporting.append(asyncio.create_task(self._run_send(s)))
        return next_at

    async def _run_send(self, s: Send) -> None:
        ok, status, error, permanent, retry_after = False, None, "", False, None
        try:
            if s.channel is Channel.PAGERDUTY:
                res = await workflow.execute_activity_method(
                    PagingActivities.page,
                    PageInput(event_action=s.event_action, dedup_key=s.dedup_key or s.id[:255], summary=s.text[:1024],
                              severity=s.severity, escalation_level=s.level, custom_details=s.custom_details,
                              links=s.links, drill=s.drill),
                    start_to_close_timeout=SEND_TIMEOUT, retry_policy=ONE_ATTEMPT)
                status = res.http_status
            else:
                res = await workflow.execute_activity_method(
                    PagingActivities.chat, ChatInput(text=s.text, escalation_level=s.level, fields=s.fields,
                                                     drill=s.drill),
                    start_to_close_timeout=SEND_TIMEOUT, retry_policy=ONE_ATTEMPT)
                status = res.http_status
            ok = True
        except FailureError as e:
            cause = _cause(e)
            error = str(cause.message if isinstance(cause, ApplicationError) else cause)
            permanent = isinstance(cause, ApplicationError) and cause.type in NON_RETRYABLE
            if isinstance(cause, ApplicationError):
                retry_after = cause.next_retry_delay
                if isinstance(cause.details, (list, tuple)) and cause.details:
                    d = cause.details[0]
                    status = d.get("status") if isinstance(d, dict) else None
        finally:
            self._inflight.pop(s.id, None)
            self._wake += 1
        s.attempts += 1
        if not ok and not permanent and s.attempts < MAX_ATTEMPTS:
            # Retry under the budget: back in the queue, not before Retry-After (or the backoff).
            wait = retry_after or timedelta(seconds=BACKOFF[s.channel][min(s.attempts, MAX_ATTEMPTS) - 1])
            s.not_before, s.last_error = workflow.now() + wait, error[:300]
            self._count(f"retried {_bucket(s.channel, s.level)}")
            self._enqueue(s)
            return
        await self._after(s, ok, status, error, permanent)

    async def _after(self, s: Send, ok: bool, status: int | None, error: str, permanent: bool) -> None:
        now = workflow.now()
        b = _bucket(s.channel, s.level)
        rerouted: list[str] = []
        if ok:
            self._count(f"sent {b}")
            self._record_alert(s, now)
            self._mark_group(s)
        else:
            self._count(f"failed {b}")
            rerouted = self._reroute(s, error, now)
            workflow.logger.warning("%s %s failed (%s): %s; rerouted to %s", b, s.event_action, status, error,
                                    ", ".join(rerouted) or "nothing")
        deliveries = [Delivery(notice_id=nid, channel=s.channel, level=s.level, event_action=s.event_action, ok=ok,
                               at=now, dedup_key=s.dedup_key if s.channel is Channel.PAGERDUTY else None,
                               http_status=status, error=error, permanent=permanent, rerouted=rerouted,
                               grouped_with=max(0, len(s.notice_ids) - 1) if s.group_key else 0)
                      for nid in s.notice_ids]
        await self._report(deliveries, dict(zip(s.notice_ids, s.owners)))

    def _record_alert(self, s: Send, now: datetime) -> None:
        if s.channel is not Channel.PAGERDUTY or not s.dedup_key:
            return
        idx = self.st.alerts.get(s.dedup_key)
        if s.event_action == "trigger":
            owners = sorted({o for o in s.owners if o} | (set(idx.owners) if idx else set()))
            if idx is None or idx.status == "resolved":
                self.st.alerts[s.dedup_key] = AlertIndex(dedup_key=s.dedup_key, level=s.level, owners=owners,
                                                         opened_at=now, group_key=s.group_key)
            else:
                idx.owners = owners
        elif idx is not None:
            idx.status = "acknowledged" if s.event_action == "acknowledge" else "resolved"
        extra = len(self.st.alerts) - KEEP_ALERTS
        if extra > 0:  # forget the oldest resolved alerts first, then the oldest
            order = sorted(self.st.alerts.values(), key=lambda a: (a.status != "resolved", a.opened_at))
            for a in order[:extra]:
                del self.st.alerts[a.dedup_key]

    def _mark_group(self, s: Send) -> None:
        if s.group_key is None or s.event_action != "trigger":
            return
        g = self.st.groups.get(s.group_key)
        if g is None:
            return
        ids = set(s.notice_ids)
        for m in g.members:
            if m.notice_id in ids:
                if s.channel is Channel.PAGERDUTY:
                    m.named_pd = True
                else:
                    m.named_slack = True
        if s.channel is Channel.PAGERDUTY and g.status == "collecting":
            g.status = "open"

    def _reroute(self, s: Send, error: str, now: datetime) -> list[str]:
        """A send that failed for good goes out on the other channel and at the next level, at once."""
        if s.reroute_of is not None and s.reroute_of.count(">") >= 3:
            return []  # a reroute of a reroute of a reroute: stop (every level was tried)
        out: list[str] = []
        nxt = s.level + 1 if s.level < self.limits.levels else None
        base = dict(notice_ids=[], owners=[], urgent=True, queued_at=now, reroute_of=f"{s.reroute_of or s.id}>", drill=s.drill,
                    severity="critical" if s.severity in ("critical", "error") else s.severity,
                    custom_details={**s.custom_details, "rerouted_because": error[:300]})
        if s.channel is Channel.PAGERDUTY:
            if s.event_action != "trigger":
                return []  # an acknowledge/resolve that failed: reported to the owner, nothing to reroute
            self._enqueue(Send(id=f"{s.id}>slack", channel=Channel.SLACK, level=s.level,
                               text=f"PAGERDUTY FAILED at level {s.level} ({error[:200]}): {s.text}", **base))
            out.append(f"slack L{s.level}")
            if nxt is not None:
                self._enqueue(Send(id=f"{s.id}>pd", channel=Channel.PAGERDUTY, level=nxt, page=True,
                                   text=f"[rerouted: PagerDuty level {s.level} failed] {s.text}"[:1024],
                                   dedup_key=f"{s.dedup_key}>L{nxt}"[-255:] if s.dedup_key else None, **base))
                self._enqueue(Send(id=f"{s.id}>slack-next", channel=Channel.SLACK, level=nxt,
                                   text=f"PAGERDUTY FAILED at level {s.level} ({error[:200]}): {s.text}", **base))
                out += [f"pagerduty L{nxt}", f"slack L{nxt}"]
        else:
            if nxt is not None:
                self._enqueue(Send(id=f"{s.id}>slack-next", channel=Channel.SLACK, level=nxt,
                                   text=f"SLACK FAILED at level {s.level} ({error[:200]}): {s.text}", **base))
                out.append(f"slack L{nxt}")
            if not s.page:  # nobody was paged for it: make sure a person sees it
                lvl = s.level
                self._enqueue(Send(id=f"{s.id}>pd", channel=Channel.PAGERDUTY, level=lvl, page=True,
                                   text=f"[Slack level {s.level} failed: {error[:120]}] {s.text}"[:1024],
                                   dedup_key=f"pager/slack-failed-{s.id}"[:255], **{**base, "severity": "warning"}))
                out.append(f"pagerduty L{lvl}")
        if out:
            self._count("rerouted")
        return out

    # -- reporting ------------------------------------------------------------------------------------------
    async def _report(self, deliveries: list[Delivery], owners: dict[str, str]) -> None:
        by_owner: dict[str, list[Delivery]] = {}
        for d in deliveries:
            o = owners.get(d.notice_id)
            if o:
                by_owner.setdefault(o, []).append(d)
        await asyncio.gather(*(self._tell([o], OUTCOME_SIGNAL, ds) for o, ds in by_owner.items()))

    def _report_now(self, deliveries: list[Delivery], owners: dict[str, str]) -> None:
        self._reporting.append(asyncio.create_task(self._report(deliveries, owners)))

    async def _tell(self, owners: list[str], signal: str, arg: Any) -> int:
        """Signal each owner; returns how many were told (an owner that has ended cannot be)."""
        told = 0
        for o in owners:
            try:
                await workflow.get_external_workflow_handle(o).signal(signal, arg)
                told += 1
            except (FailureError, ApplicationError) as e:  # the owner has ended: nothing to tell
                workflow.logger.info("could not tell %s (%s): %s", o, signal, e)
        self._reporting = [t for t in self._reporting if not t.done()]
        self._wake += 1
        return told
