"""The P0 monitor: reads the trading core's health, evaluates manual/alerts.py, opens incidents.

Why a long-running heartbeating activity (started by workflows/monitor.py) and not a polling
workflow: a poll every second as workflow activities would write several history events per second
(a continue-as-new every few minutes) and put a task-queue round trip (~150 ms here) into every
detection. Inside one activity the loop polls over a kept-alive HTTP connection; Temporal still gives
what a bare daemon would not: one monitor per namespace (the workflow id), a restart on another
monitor process when this one dies (heartbeat timeout; the retry resumes from the last heartbeat's
state: hold counters, firing rules, what was delivered), and a visible status.

Per poll (default every 1 s, ROLLBACKCTL_MONITOR_INTERVAL_S):
1. GET /v1/health with a timeout below the interval. A 500, a timeout or a broken body is not a
   crash: it is counted, and the time since the core last answered (`core_unreachable_for_s`) is
   the "REST down" input of the HL/API rule.
2. Each rule (per symbol where it applies) against its trigger and hold (Detector, pure). A newly
   firing rule starts its incident workflow by signal-with-start under the id
   `incident-<rule>[-<symbol>]` with id_conflict_policy=USE_EXISTING: a rule that keeps firing, or
   fires again before its incident was resolved, reaches the open incident instead of opening a
   second one. A cleared rule is signalled too. Deliveries run beside the poll loop (one in flight
   per rule), so a slow Temporal never delays detection; an undelivered change is retried next poll.
3. auto_mode_switch (beside the loop too, so a slow etcd never delays detection): see AutoMode.
4. Every `end_watch_s` (beside the loop): workflows of ours on the incident task queue that Temporal
   ended from outside their own logic (terminated, timed out) are paged once each: see EndWatch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Protocol

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio import activity
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from core import metrics
from core.settings import critical_queue_of
from contracts.changes import ActorKind, Authority, ChangeSetRequest, SwitchChange
from core.aio import within
from manual import alerts, approvals
from manual.roles import MONITOR_IDENTITY
from contracts.incidents import (
    ConditionReport,
    IncidentInput,
    KeyState,
    MonitorInput,
    MonitorState,
    Timings,
    UndoGuardInput,
    UndoGuardResult,
    incident_workflow_id,
)

log = logging.getLogger("rollbackctl.monitor")

AUTO = alerts.AUTO_MODE  # the auto mode switch's rule: its switches and thresholds (manual/alerts.py)
HL_MODE = AUTO.forced
ROLLBACK_TYPES = ("RollbackWorkflow", "DegradationWorkflow")


class MonitorSettings(BaseSettings):
    """ROLLBACKCTL_MONITOR_*: the P0 monitor's knobs."""

    model_config = SettingsConfigDict(env_prefix="ROLLBACKCTL_MONITOR_", extra="ignore")

    interval_s: float = Field(default=1.0, gt=0, le=60, description="health poll interval")
    health_timeout_s: float | None = Field(default=None, gt=0, description="default: 80% of the interval")
    heartbeat_timeout_s: float = Field(default=3.0, gt=0, description="a dead monitor is replaced after this")
    namespace: str = Field(default="", description="incident ids: incident-<namespace>-<rule>[-<symbol>]")

    def task_queue(self, main: str) -> str:
        """The monitor activity runs on its own queue: only `rollbackctl monitor` processes poll it."""
        return f"{main}-monitor"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# -- detection (pure) -----------------------------------------------------------------------------------
def rule_key(rule: alerts.Rule, symbol: str | None) -> str:
    """The monitor's key for a rule (per symbol where it applies) in MonitorState.keys."""
    return f"{rule.id}:{symbol}" if symbol else rule.id


def _judge(conds: tuple[alerts.Condition, ...], vals: dict[str, Any], any_: bool) -> bool | None:
    got = [c.holds(vals.get(c.metric)) for c in conds]
    if any_:
        return True if any(g is True for g in got) else (False if all(g is False for g in got) else None)
    return True if all(g is True for g in got) else (False if any(g is False for g in got) else None)


class Detector:
    """Evaluates every rule on one health read; returns the keys whose firing state changed.

    A rule fires once its trigger (any condition) held for `hold.polls` consecutive reads (or, with
    a reported hold, the trigger is the reported duration itself); it clears when all its clear
    conditions hold. In between (hysteresis) it stays as it was. A read that cannot judge a rule
    (the core is down, a symbol missing) neither counts nor resets.
    """

    def __init__(self, state: MonitorState, rules: tuple[alerts.Rule, ...] = alerts.RULES):
        self.state = state
        self.rules = rules

    def metrics(self, health: dict[str, Any] | None, now: datetime, error: str = "") -> dict[str, Any]:
        st = self.state
        st.polls += 1
        if health is not None:
            st.last_ok_at, st.unreachable_since, st.last_error = now, None, ""
            return {**health, "core_unreachable_for_s": 0.0}
        st.failed_polls += 1
        st.last_error = error
        if st.unreachable_since is None:
            st.unreachable_since = st.last_ok_at or now
        return {"core_unreachable_for_s": (now - st.unreachable_since).total_seconds()}

    def observe(self, health: dict[str, Any] | None, now: datetime, error: str = "") -> list[KeyState]:
        vals = self.metrics(health, now, error)
        changed: list[KeyState] = []
        for rule in self.rules:
            if not rule.per_symbol:
                self._step(rule, None, vals, now, changed)
                continue
            metrics = {c.metric for c in (*rule.trigger, *rule.clear)}
            symbols = sorted({s for m in metrics if isinstance(vals.get(m), dict) for s in vals[m]}
                             | {k.symbol for k in self.state.keys.values() if k.rule == rule.id and k.symbol})
            for sym in symbols:
                per = {m: (vals[m].get(sym) if isinstance(vals.get(m), dict) else None) for m in metrics}
                self._step(rule, sym, per, now, changed)
        # forget idle keys (per-symbol maps can be long)
        for k in [k for k, ks in self.state.keys.items()
                  if not ks.firing and ks.streak == 0 and ks.delivered in (None, False)]:
            del self.state.keys[k]
        return changed

    def _step(self, rule: alerts.Rule, symbol: str | None, vals: dict[str, Any], now: datetime,
              changed: list[KeyState]) -> None:
        key = rule_key(rule, symbol)
        ks = self.state.keys.get(key) or KeyState(rule=rule.id, symbol=symbol)
        self.state.keys[key] = ks
        trig = _judge(rule.trigger, vals, any_=True)
        seen = {c.metric: vals.get(c.metric) for c in (*rule.trigger, *rule.clear)}
        if trig is True:
            if ks.streak == 0:
                ks.streak_since = now
            ks.streak += 1
            ks.values = seen
            if not ks.firing and ks.streak >= rule.hold.polls:
                ks.firing = True
                ks.since = self._began(rule, vals, now, ks.streak_since or now)
                changed.append(ks)
        elif trig is False:
            ks.streak, ks.streak_since = 0, None
            if ks.firing and _judge(rule.clear, vals, any_=False) is True:
                ks.firing, ks.values = False, seen
                changed.append(ks)

    @staticmethod
    def _began(rule: alerts.Rule, vals: dict[str, Any], now: datetime, first: datetime) -> datetime:
        if rule.hold.reported_s is None:
            return first
        from datetime import timedelta

        longest = max((float(vals[c.metric]) for c in rule.trigger if c.holds(vals.get(c.metric))), default=0.0)
        try:
            return now - timedelta(seconds=longest)
        except OverflowError:  # a duration past any date (the contract refuses it; never crash the poll)
            return first

    @staticmethod
    def describe(ks: KeyState) -> str:
        rule = alerts.get(ks.rule)
        conds = rule.trigger if ks.firing else rule.clear
        shown = ", ".join(f"{m}={v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{m}={v}"
                          for m, v in ks.values.items() if v is not None)
        verb = "firing" if ks.firing else "clear"
        return f"{verb}: {shown} ({' or '.join(map(str, conds)) if ks.firing else ' and '.join(map(str, conds))})"


# -- ports (Temporal and etcd in production; stand-ins in tests) ----------------------------------------------
class IncidentPort(Protocol):
    async def deliver(self, ks: KeyState, report: ConditionReport) -> None: ...

    async def open_keys(self) -> list[tuple[str, str | None]]:
        """(rule, symbol) of every incident open for this monitor's namespace."""
        ...


class GuardPort(Protocol):
    async def rollback_active(self) -> str | None: ...


class TemporalIncidents:
    """Opens (signal-with-start, USE_EXISTING) and signals incident workflows."""

    def __init__(self, client: Client, task_queue: str, namespace: str = "", timings: Timings | None = None):
        self.client, self.task_queue, self.namespace = client, task_queue, namespace
        self.timings = timings or Timings()

    async def deliver(self, ks: KeyState, report: ConditionReport) -> None:
        wid = incident_workflow_id(ks.rule, ks.symbol, self.namespace)
        if report.firing:
            inp = IncidentInput(rule=ks.rule, symbol=ks.symbol, detected_at=report.at, started_at=ks.since or report.at,
                                values=report.values, detail=report.detail, timings=self.timings)
            await self.client.start_workflow(
                "IncidentWorkflow", inp, id=wid, task_queue=self.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                start_signal="condition", start_signal_args=[report],
            )
            return
        try:
            await self.client.get_workflow_handle(wid).signal("condition", report)
        except RPCError as e:
            if e.status != RPCStatusCode.NOT_FOUND:
                raise
            # no open incident (already resolved): nothing to tell

    async def open_keys(self) -> list[tuple[str, str | None]]:
        prefix = incident_workflow_id("", None, self.namespace)  # "incident-" or "incident-<ns>-"
        found: list[tuple[str, str | None]] = []
        async for wf in self.client.list_workflows(
                f"WorkflowType = 'IncidentWorkflow' AND TaskQueue = '{self.task_queue}' AND ExecutionStatus = 'Running'"):
            key = incident_key(wf.id, prefix)
            if key is not None:
                found.append(key)
        return found


def incident_key(workflow_id: str, prefix: str) -> tuple[str, str | None] | None:
    """(rule, symbol) from `incident-[<ns>-]<rule>[-<symbol>]`; None for another namespace's or a stranger."""
    if not workflow_id.startswith(prefix):
        return None
    rest = workflow_id[len(prefix):]
    for rule in alerts.RULES:
        if rest == rule.id and not rule.per_symbol:
            return rule.id, None
        if rule.per_symbol and rest.startswith(rule.id + "-") and len(rest) > len(rule.id) + 1:
            return rule.id, rest[len(rule.id) + 1:]
    return None


class TemporalGuard:
    """Is a rollback or degradation running? (Temporal visibility; unknown counts as yes.)"""

    def __init__(self, client: Client):
        self.client = client

    async def rollback_active(self) -> str | None:
        q = " OR ".join(f"WorkflowType = '{t}'" for t in ROLLBACK_TYPES)
        try:
            async for wf in self.client.list_workflows(f"({q}) AND ExecutionStatus = 'Running'", limit=1):
                return f"{wf.id} is running"
        except Exception as e:  # visibility unavailable: do not assume nothing runs
            return f"cannot tell whether a rollback runs ({type(e).__name__})"
        return None


# -- auto mode switch ---------------------------------------------------------------------------------------
class AutoMode:
    """`auto_mode_switch`: force routing_mode=HL_MODE while volatility or HL latency is over its switch.

    Forcing writes HL_MODE (the switch's rollback value: pre-approved) with compare-and-swap against
    the mode it replaces, under a change id that records that mode: `automode[-ns]:force:<MODE>:<rev>`.
    The store's record of routing_mode (updated_by, change_id) then says whether the monitor's force
    is still the last write. Releasing requires: auto_mode_switch on, every read under both thresholds
    for `release_polls`, the last write still the monitor's force, no rollback or degradation running,
    and the mode to restore a pre-approved move for the monitor (NORMAL_MODE is, as Level 1's mode;
    BETTING_MODE is not: the monitor leaves HL_MODE and says a risk manager restores it). The write is
    a compare-and-swap on HL_MODE.
    """

    def __init__(self, store, guard: GuardPort, namespace: str = ""):
        self.store, self.guard = store, guard
        self.prefix = "automode" + (f"-{namespace}" if namespace else "") + ":"

    def _forced_from(self, st) -> str | None:
        cid = st.change_id or ""
        if st.value != HL_MODE or st.updated_by != MONITOR_IDENTITY or not cid.startswith(self.prefix + "force:"):
            return None
        return cid[len(self.prefix + "force:"):].split(":", 1)[0]

    async def step(self, state: MonitorState, health: dict[str, Any] | None) -> str:
        a = state.auto
        if health is None:
            return a.last
        snap = await self.store.snapshot()  # live: thresholds and the switch itself
        v = snap.values()
        if not v.get(AUTO.switch):
            a.over = a.under = 0
            a.last = f"{AUTO.switch} off"
            return a.last
        why = AUTO.over(v, health)
        a.over, a.under = (a.over + 1, 0) if why else (0, a.under + 1)
        rm = snap.switches[AUTO.routing]
        forced_from = self._forced_from(rm)
        if why and a.over >= AUTO.force_polls and rm.value != HL_MODE:
            await self.store.apply(ChangeSetRequest(
                change_id=f"{self.prefix}force:{rm.value}:{rm.revision}", actor=MONITOR_IDENTITY,
                actor_kind=ActorKind.SERVICE, authority=Authority.PREAPPROVED, action="p0.auto_mode_switch",
                changes=[SwitchChange(switch=AUTO.routing, value=HL_MODE)], expected={AUTO.routing: rm.value},
                source="monitor", reason=f"auto_mode_switch: {'; '.join(why)}: force HL_MODE (was {rm.value})"))
            a.last = f"forced HL_MODE (was {rm.value}): {'; '.join(why)}"
            log.warning("auto mode switch: %s", a.last)
        elif forced_from and not why and a.under >= AUTO.release_polls:
            blocked = await self.guard.rollback_active()
            if blocked:
                a.last = f"release withheld: {blocked}"
            elif not approvals.is_preapproved(AUTO.routing, forced_from):
                a.last = (f"conditions normal; routing_mode stays HL_MODE: restoring {forced_from} is not a "
                          "pre-approved move, a risk manager restores it")
            else:
                await self.store.apply(ChangeSetRequest(
                    change_id=f"{self.prefix}release:{rm.revision}", actor=MONITOR_IDENTITY,
                    actor_kind=ActorKind.SERVICE, authority=Authority.PREAPPROVED, action="p0.auto_mode_switch",
                    changes=[SwitchChange(switch=AUTO.routing, value=forced_from)],
                    expected={AUTO.routing: HL_MODE}, source="monitor",
                    reason=f"auto_mode_switch: volatility and HL latency normal for {a.under} reads: "
                           f"release the forced HL_MODE back to {forced_from}"))
                a.last = f"released HL_MODE back to {forced_from}"
                log.warning("auto mode switch: %s", a.last)
        return a.last


# -- workflows ended from outside --------------------------------------------------------------------------------
WATCHED_TYPES = ("RollbackWorkflow", "DegradationWorkflow", "CanaryWorkflow", "IncidentWorkflow",
                 "ChangeRequestWorkflow", "EmergencyWorkflow")
END_OVERLAP_S = 60.0  # each look goes back this far before the last one (visibility may lag)
END_FIRST_LOOK_S = 3600.0  # a fresh monitor looks back this far (a termination while no monitor ran)
ENDS_KEPT = 500


class EndWatch:
    """A workflow terminated (`temporal workflow terminate`, the Web UI) or timed out never runs its own
    ending: it cannot say what it leaves behind or page anyone (a cancellation it handles itself). The
    monitor looks for them in Temporal's visibility and pages each once, critical, saying what to check."""

    def __init__(self, client: Client, task_queue: str, clock: Callable[[], datetime] = utcnow):
        self.client, self.task_queue, self.clock = client, task_queue, clock
        # and the critical lane's queue, where critical-path rollbacks run (manual/rollback.py CRITICAL_LANE)
        self.task_queues = [task_queue, critical_queue_of(task_queue)]

    def query(self, since: datetime) -> str:
        types = ", ".join(f"'{t}'" for t in WATCHED_TYPES)
        queues = ", ".join(f"'{q}'" for q in self.task_queues)
        return (f"WorkflowType IN ({types}) AND TaskQueue IN ({queues}) AND "
                f"ExecutionStatus IN ('Terminated', 'TimedOut') AND CloseTime > '{since.isoformat()}'")

    async def step(self, state: MonitorState) -> list[str]:
        """Page every new one; returns their "workflow_id/run_id"."""
        from datetime import timedelta

        from activities.pager_client import signal_pager
        from contracts.paging import SUBMIT_SIGNAL, Notice

        now = self.clock()
        since = (state.ends_until - timedelta(seconds=END_OVERLAP_S) if state.ends_until
                 else now - timedelta(seconds=END_FIRST_LOOK_S))
        found = []
        async for wf in self.client.list_workflows(self.query(since)):
            key = f"{wf.id}/{wf.run_id}"
            if key in state.ends_paged:
                continue
            how = wf.status.name if wf.status else "ENDED"
            when = f"{wf.close_time:%Y-%m-%d %H:%M:%S} UTC" if wf.close_time else "recently"
            text = (f"{wf.id} ({wf.workflow_type}) was {how} in Temporal at {when}, not ended by rollbackctl: it did "
                    f"not run its remaining steps and could not page. The switches stay as it left them: check "
                    f"`rollbackctl status {wf.id}`, `rollbackctl switch list` and `rollbackctl audit`, then decide "
                    "(a new rollback, or `switch set`).")
            await signal_pager(self.client, self.task_queue, SUBMIT_SIGNAL, [Notice(
                id=f"monitor#ended/{key}"[:300], text=text, page=True, severity="critical", kind="ended_outside",
                dedup_key=f"ended/{key}"[:255], urgent=True, fields={"workflow": wf.id})])
            state.ends_paged = [*state.ends_paged[-(ENDS_KEPT - 1):], key]
            found.append(key)
            log.warning("%s", text)
        state.ends_until = now
        return found


# -- the loop --------------------------------------------------------------------------------------------------
HealthReader = Callable[[float], Awaitable[dict[str, Any]]]


class Monitor:
    """One poll at a time (`poll`), with deliveries and the auto mode switch beside it."""

    def __init__(self, inp: MonitorInput, read_health: HealthReader, incidents: IncidentPort,
                 auto: AutoMode | None = None, clock: Callable[[], datetime] = utcnow, ends: EndWatch | None = None):
        self.inp = inp
        self.state = inp.state.model_copy(deep=True)
        self.detector = Detector(self.state)
        self.read_health, self.incidents, self.auto, self.clock = read_health, incidents, auto, clock
        self.timeout_s = inp.health_timeout_s or inp.interval_s * 0.8
        self._inflight: dict[str, asyncio.Task] = {}
        self._auto_task: asyncio.Task | None = None
        self.ends = ends
        self._ends_task: asyncio.Task | None = None
        self._ends_at: datetime | None = None
        self._adopt_task: asyncio.Task | None = None
        self.adopted = False  # the open incidents were read from Temporal (once per run; retried until it is)
        self.delivery_errors = 0

    async def poll(self) -> list[KeyState]:
        health: dict[str, Any] | None = None
        error = ""
        t0 = time.perf_counter()
        try:
            health = await within(self.timeout_s + 0.25, self.read_health(self.timeout_s))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # 500s, timeouts, refused connections, a broken body: input, not a crash
            error = f"{getattr(e, 'type', None) or type(e).__name__}: {getattr(e, 'message', None) or e}"
            metrics.MONITOR_POLL_FAILURES.inc()
        metrics.MONITOR_POLLS.inc()
        metrics.MONITOR_POLL_SECONDS.observe(time.perf_counter() - t0)
        metrics.MONITOR_LAST_POLL.set(time.time())
        if not self.adopted and (self._adopt_task is None or self._adopt_task.done()):
            self._adopt_task = asyncio.create_task(self._adopt())
        now = self.clock()
        changed = self.detector.observe(health, now, error)
        if changed:
            firing: dict[str, int] = {r.id: 0 for r in self.detector.rules}
            for ks in self.detector.state.keys.values():
                if ks.firing:
                    firing[ks.rule] = firing.get(ks.rule, 0) + 1
            for rule, n in firing.items():
                metrics.MONITOR_FIRING.labels(rule).set(n)
        for ks in changed:
            log.warning("P0 %s%s %s", ks.rule, f" [{ks.symbol}]" if ks.symbol else "", Detector.describe(ks))
        self._deliver_pending(now)
        if self.auto is not None and (self._auto_task is None or self._auto_task.done()):
            self._auto_task = asyncio.create_task(self._auto_step(health))
        if (self.ends is not None and (self._ends_task is None or self._ends_task.done())
                and (self._ends_at is None or (now - self._ends_at).total_seconds() >= self.inp.end_watch_s)):
            self._ends_at = now
            self._ends_task = asyncio.create_task(self._ends_step())
        return changed

    async def _adopt(self) -> None:
        """Take on the incidents Temporal has open that this state does not know as firing.

        The state comes from the last heartbeat, which the SDK sends at most every 0.8 x the heartbeat
        timeout: an incident opened after it was sent is unknown to the next attempt, which would never
        tell it the clear (and a human could never resolve it). An adopted key counts as firing and
        delivered, so the first read that judges it clear delivers the clear; while it still fires,
        nothing is sent again."""
        try:
            keys = await self.incidents.open_keys()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # Temporal unreachable: the next poll asks again
            log.warning("could not list the open incidents: %s: %s", type(e).__name__, e)
            return
        for rule_id, symbol in keys:
            key = rule_key(alerts.get(rule_id), symbol)
            if key not in self.state.keys:
                self.state.keys[key] = KeyState(rule=rule_id, symbol=symbol, firing=True, delivered=True)
                log.warning("adopted the open incident %s%s: its clear is delivered when the condition clears",
                            rule_id, f" [{symbol}]" if symbol else "")
        self.adopted = True

    async def _ends_step(self) -> None:
        try:
            await self.ends.step(self.state)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # Temporal unreachable: the next look covers the gap (it starts where this one did)
            log.warning("end watch: %s: %s", type(e).__name__, e)

    def _deliver_pending(self, now: datetime) -> None:
        for key, ks in self.state.keys.items():
            if ks.delivered == ks.firing or (ks.delivered is None and not ks.firing):
                continue
            t = self._inflight.get(key)
            if t is not None and not t.done():
                continue
            report = ConditionReport(firing=ks.firing, at=now, values=dict(ks.values), detail=Detector.describe(ks))
            self._inflight[key] = asyncio.create_task(self._deliver(ks, report))

    async def _deliver(self, ks: KeyState, report: ConditionReport) -> None:
        try:
            await self.incidents.deliver(ks, report)
            ks.delivered = report.firing
        except asyncio.CancelledError:
            raise
        except Exception as e:  # Temporal unavailable: the next poll tries again
            self.delivery_errors += 1
            log.warning("could not deliver %s %s: %s", ks.rule, "firing" if report.firing else "clear", e)

    async def _auto_step(self, health: dict[str, Any] | None) -> None:
        try:
            await self.auto.step(self.state, health)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # etcd down, a lost compare-and-swap: say so, try on the next read
            self.state.auto.last = f"error: {type(e).__name__}: {e}"
            log.warning("auto mode switch: %s", self.state.auto.last)

    async def settle(self) -> None:
        """Wait for deliveries and the auto mode step started so far (tests, shutdown)."""
        tasks = [t for t in (*self._inflight.values(), self._auto_task, self._ends_task, self._adopt_task)
                 if t is not None and not t.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        for t in (*self._inflight.values(), self._auto_task, self._ends_task, self._adopt_task):
            if t is not None and not t.done():
                t.cancel()
        await self.settle()

    async def run(self, stop_at: float | None = None, beat: Callable[[MonitorState], None] | None = None) -> MonitorState:
        """Poll every interval until `stop_at` (monotonic) or cancellation."""
        loop = asyncio.get_running_loop()
        nxt = loop.time()
        try:
            while stop_at is None or loop.time() < stop_at:
                await self.poll()
                if beat is not None:
                    beat(self.state)
                nxt += self.inp.interval_s
                delay = nxt - loop.time()
                if delay < 0:  # a slow read: skip the missed ticks, do not burst
                    nxt = loop.time()
                    delay = 0
                await asyncio.sleep(delay)
            await self.settle()
        finally:
            await self.close()
        return self.state


# -- activities -------------------------------------------------------------------------------------------
class MonitorActivities:
    """`monitor.run`: the long-running monitor loop (registered by `rollbackctl monitor` only)."""

    def __init__(self, client: Client, store, core):
        self.client, self.store, self.core = client, store, core

    async def _read(self, timeout_s: float) -> dict[str, Any]:
        from contracts.trading_core import ReadHealthInput

        snap = await self.core.read_health(ReadHealthInput(timeout_s=timeout_s))
        return snap.model_dump(mode="json") if hasattr(snap, "model_dump") else dict(snap)

    @activity.defn(name="monitor.run")
    async def run(self, inp: MonitorInput) -> MonitorState:
        info = activity.info()
        if info.heartbeat_details:  # a retry (this or another monitor process): resume where it was
            try:
                inp = inp.model_copy(update={"state": MonitorState.model_validate(info.heartbeat_details[0])})
            except Exception:
                activity.logger.warning("could not resume the monitor state from the last heartbeat; starting fresh")
        m = Monitor(inp, self._read, TemporalIncidents(self.client, inp.incident_task_queue, inp.namespace, inp.timings),
                    AutoMode(self.store, TemporalGuard(self.client), inp.namespace),
                    ends=EndWatch(self.client, inp.incident_task_queue))
        activity.logger.info("P0 monitor polling every %gs (attempt %d)", inp.interval_s, info.attempt)
        stop_at = asyncio.get_running_loop().time() + inp.run_for_s
        return await m.run(stop_at, beat=lambda st: activity.heartbeat(st.model_dump(mode="json")))


class IncidentOps:
    """`incident.undo_guard`: may an incident's automatic recovery resume these pauses now?"""

    def __init__(self, client: Client):
        self.client = client

    @activity.defn(name="incident.undo_guard")
    async def undo_guard(self, inp: UndoGuardInput) -> UndoGuardResult:
        busy = await TemporalGuard(self.client).rollback_active()
        if busy:
            return UndoGuardResult(ok=False, reason=busy)
        try:
            async for wf in self.client.list_workflows(
                    "WorkflowType = 'IncidentWorkflow' AND ExecutionStatus = 'Running'"):
                if wf.id == inp.workflow_id:
                    continue
                try:
                    held = await self.client.get_workflow_handle(wf.id).query("holds", result_type=list[str])
                except RPCError:
                    continue  # closed meanwhile
                both = [a for a in inp.actions if a in held]
                if both:
                    return UndoGuardResult(ok=False, reason=f"{wf.id} also holds {', '.join(both)}")
        except Exception as e:
            return UndoGuardResult(ok=False, reason=f"cannot list open incidents ({type(e).__name__})")
        return UndoGuardResult(ok=True)
