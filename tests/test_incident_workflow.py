"""IncidentWorkflow under the time-skipping server: the real switch store (etcd), stand-in core and paging.

Updates are sent while the workflow is idle in a wait (the time-skipping server does not skip time
while an Update result is awaited); time passes with env.sleep.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import timedelta

import pytest
from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from manual import alerts
from tests.support.incident_helpers import (
    GuardStandIn,
    clear,
    fire,
    incident_worker,
    open_incident,
    triggers,
    until,
)
from tests.support.standins import StandIns
from tests.support.waits import wait_for_value
from tests.support.wf_helpers import set_switches, values
from workflows.incident import IncidentWorkflow
from contracts.incidents import ResolveRequest, TickRequest, Timings, UndoGuardResult
from contracts.progress import Decision
from workflows.rollback import rollback_workflow_id

MIN = timedelta(minutes=1)
paged = lambda s: s.ready and s.sla.paged_at is not None  # PagerDuty took the page; human input taken  # noqa: E731


async def refused(update, match: str) -> None:
    """The Update is refused by its validator, with a message matching `match`."""
    with pytest.raises(WorkflowUpdateFailedError) as e:
        await update
    assert re.search(match, str(e.value.cause)), str(e.value.cause)


def pages(si: StandIns, action: str) -> list[dict]:
    return [p for p in si.pages if p["event_action"] == action]


async def resolve(h, actor: str = "oscar", **kw) -> None:
    await clear(h)
    await h.execute_update(IncidentWorkflow.resolve, ResolveRequest(actor=actor, **kw))


# -- each rule's immediate action ------------------------------------------------------------------
EXPECTED = {
    "hl_disconnection": ([("pause_new_orders", {})], {}),
    "hl_margin": ([("pause_hl_opens", {})], {}),
    "hedge_margin": ([("pause_hl_opens", {})], {"hedge_max_leverage": 2.0}),
    "liquidation_failure": ([], {"liquidation_enabled": False}),
    "hot_wallet": ([("pause_large_withdrawals", {"above_usd": 10_000})], {}),
    "order_deviation": ([("pause_symbol_hl_routing", {"symbol": "ETH"})], {}),
    "asset_mismatch": ([("pause_trading", {}), ("start_reconciliation", {})], {}),
}


@pytest.mark.parametrize("rule", list(EXPECTED))
async def test_each_rule_takes_its_immediate_action_then_pages(ts_env, store, task_queue, rule):
    si, guard = StandIns(), GuardStandIn()
    core, sw = EXPECTED[rule]
    async with incident_worker(ts_env, store, si, guard, task_queue):
        h = await open_incident(ts_env, task_queue, rule, symbol="ETH" if rule == "order_deviation" else None)
        st = await until(h, ts_env, paged)
        assert [(a["action"], a["body"]) for a in si.actions] == core
        assert all(a["idempotency_key"].startswith(st.incident_id) for a in si.actions)
        assert await values(store, *sw) == sw
        audit = [a for a in await store.audit() if a.source == h.id]
        assert [(a.actor, a.authority, a.action) for a in audit] == [("monitor", "preapproved", "p0.immediate_action")] * len(sw)
        assert all(a.status == "ok" for a in st.actions)
        (page,) = triggers(si)
        assert page["escalation_level"] == 1 and page["severity"] == "critical"
        assert alerts.get(rule).alert in page["summary"] and "rollbackctl ack" in page["summary"]
        assert si.chats, "Slack message with the page"
        assert [c.id for c in st.checklist] == [f.id for f in alerts.get(rule).further]
        await resolve(h, actor="alice")
        res = await h.result()
    assert res.status == "resolved" and res.resolved_by == "alice"
    assert pages(si, "resolve")


async def test_hedge_leverage_is_only_ever_lowered(ts_env, store, task_queue):
    await set_switches(store, "alice", hedge_max_leverage=1.5)
    si, guard = StandIns(), GuardStandIn()
    async with incident_worker(ts_env, store, si, guard, task_queue):
        h = await open_incident(ts_env, task_queue, "hedge_margin")
        st = await until(h, ts_env, paged)
        sw = next(a for a in st.actions if a.what == "switch hedge_max_leverage")
        assert sw.status == "skipped" and "1.5x" in sw.detail
        assert (await values(store, "hedge_max_leverage")) == {"hedge_max_leverage": 1.5}
        await resolve(h)
        await h.result()


# -- the SLA -------------------------------------------------------------------------------------------
async def test_ack_within_5_minutes_stops_escalation_and_10_minute_action_breach_is_reported(ts_env, store, task_queue):
    si, guard = StandIns(), GuardStandIn()
    async with incident_worker(ts_env, store, si, guard, task_queue):
        h = await open_incident(ts_env, task_queue, "hot_wallet")
        await until(h, ts_env, paged)
        await ts_env.sleep(4 * MIN)
        await refused(h.execute_update(IncidentWorkflow.acknowledge, Decision(actor="vic")), "needs on_call")
        await h.execute_update(IncidentWorkflow.acknowledge, Decision(actor="oscar"))
        await refused(h.execute_update(IncidentWorkflow.acknowledge, Decision(actor="rita")), "acknowledged by oscar")
        st = await until(h, ts_env, lambda s: s.status == "acknowledged")
        assert st.sla.acked_by == "oscar" and not st.sla.ack_breached
        await ts_env.sleep(7 * MIN)  # past 10 minutes, nothing ticked
        st = await h.query(IncidentWorkflow.sla)
        assert st.action_breached_at is not None and st.action_at is None
        assert st.level == 1 and st.escalations == []
        assert [p["escalation_level"] for p in triggers(si)] == [1, 1]  # the page and the breach report
        assert "ACTION SLA BREACHED" in triggers(si)[1]["summary"]
        assert [p["escalation_level"] for p in pages(si, "acknowledge")] == [1]
        await resolve(h)
        await h.result()


async def test_no_ack_escalates_at_5_minutes_and_keeps_waiting(ts_env, store, task_queue):
    si, guard = StandIns(), GuardStandIn()
    async with incident_worker(ts_env, store, si, guard, task_queue):
        h = await open_incident(ts_env, task_queue, "hl_margin")
        await until(h, ts_env, paged)
        await ts_env.sleep(4 * MIN)
        assert [p["escalation_level"] for p in triggers(si)] == [1]
        await ts_env.sleep(1 * MIN + timedelta(seconds=5))
        st = await h.query(IncidentWorkflow.state)
        assert st.sla.ack_breached and st.sla.level == 2 and st.status == "open"
        assert [e.level for e in st.sla.escalations] == [2]
        levels = [p["escalation_level"] for p in triggers(si)]
        assert levels == [1, 2]
        assert len({p["dedup_key"] for p in triggers(si)}) == 2, "a new event per level (PagerDuty dedups same key)"
        await ts_env.sleep(5 * MIN)
        st = await h.query(IncidentWorkflow.state)
        assert st.sla.level == 3 and st.sla.action_breached_at is not None
        await h.execute_update(IncidentWorkflow.acknowledge, Decision(actor="rita"))
        await until(h, ts_env, lambda s: s.status == "acknowledged")
        await ts_env.sleep(6 * MIN)
        assert max(p["escalation_level"] for p in triggers(si)) == 3, "no escalation after the ack"
        # every alert it opened is acknowledged: L1, L2's re-page, L2's ACTION SLA breach (its own alert:
        # on the re-page's open alert it would have notified nobody), L3's re-page
        assert sorted(p["escalation_level"] for p in pages(si, "acknowledge")) == [1, 2, 2, 3]
        assert [n["summary"][:22] for n in si.notifications(urgent=True)] == [
            "P0 HL account margin <", "UNANSWERED after 0:05:", "ACTION SLA BREACHED: P", "UNANSWERED after 0:05:"]
        await resolve(h)
        await h.result()
    assert sorted(p["escalation_level"] for p in pages(si, "resolve")) == [1, 2, 2, 3]
    assert si.open_alerts() == []


async def test_checklist_tick_meets_the_action_sla(ts_env, store, task_queue):
    si, guard = StandIns(), GuardStandIn()
    async with incident_worker(ts_env, store, si, guard, task_queue):
        h = await open_incident(ts_env, task_queue, "liquidation_failure")
        await until(h, ts_env, paged)
        await ts_env.sleep(3 * MIN)
        await refused(h.execute_update(IncidentWorkflow.tick, TickRequest(actor="vic", item="manual_liquidation")), "on_call")
        await refused(h.execute_update(IncidentWorkflow.tick, TickRequest(actor="oscar", item="nope")), "no checklist item")
        await h.execute_update(IncidentWorkflow.tick, TickRequest(actor="oscar", item="manual_liquidation",
                                                                  note="3 accounts closed"))
        await ts_env.sleep(8 * MIN)
        st = await h.query(IncidentWorkflow.state)
        assert st.sla.action_by == "oscar" and st.sla.action_breached_at is None
        item = next(i for i in st.checklist if i.id == "manual_liquidation")
        assert item.done and item.by == "oscar" and item.note == "3 accounts closed"
        # restarting liquidation is a super admin's step: an on-call cannot record it as done
        await refused(h.execute_update(IncidentWorkflow.tick, TickRequest(actor="oscar", item="restart")),
                      "oscar is on_call; 'restart' .* is ticked by super_admin or above")
        await h.execute_update(IncidentWorkflow.tick, TickRequest(actor="alice", item="restart"))
        # liquidation_enabled is a super admin's: an on-call may resolve, not undo
        await clear(h)
        await refused(h.execute_update(IncidentWorkflow.resolve, ResolveRequest(actor="oscar", undo=True)), "super_admin")
        await h.execute_update(IncidentWorkflow.resolve, ResolveRequest(actor="alice", undo=True, reason="fixed"))
        res = await h.result()
    assert res.status == "resolved"
    assert await values(store, "liquidation_enabled") == {"liquidation_enabled": True}
    undo = [a for a in await store.audit() if a.action == "p0.undo"]
    assert [(a.actor, a.authority) for a in undo] == [("alice", "owner")]


# -- clearing, auto-recovery -------------------------------------------------------------------------------
async def test_resolve_needs_the_condition_cleared(ts_env, store, task_queue):
    si, guard = StandIns(), GuardStandIn()
    async with incident_worker(ts_env, store, si, guard, task_queue):
        h = await open_incident(ts_env, task_queue, "asset_mismatch")
        await until(h, ts_env, paged)
        await refused(h.execute_update(IncidentWorkflow.resolve, ResolveRequest(actor="alice")), "still reports")
        await refused(h.execute_update(IncidentWorkflow.resolve, ResolveRequest(actor="oscar", force=True, reason="x")), "super_admin and a --reason")
        await clear(h, {"asset_mismatch_ratio": 0.0})
        st = await until(h, ts_env, lambda s: s.condition == "clear")
        assert st.recovery.startswith("human only")
        await ts_env.sleep(30 * MIN)
        assert [a["action"] for a in si.actions] == ["pause_trading", "start_reconciliation"], "no automatic undo"
        await h.execute_update(IncidentWorkflow.resolve, ResolveRequest(actor="alice", undo=True, reason="signed off"))
        await h.result()
    assert [a["action"] for a in si.actions][-1] == "resume_trading"


async def test_auto_recovery_after_clear_hold_once_and_never_again(ts_env, store, task_queue):
    si, guard = StandIns(), GuardStandIn()
    async with incident_worker(ts_env, store, si, guard, task_queue):
        h = await open_incident(ts_env, task_queue, "hl_disconnection", started_ago=timedelta(seconds=61))
        await until(h, ts_env, paged)
        await h.execute_update(IncidentWorkflow.acknowledge, Decision(actor="oscar"))
        await clear(h, {"hl_connected": True})
        await ts_env.sleep(1 * MIN)
        await fire(h)  # a flap before the hold ran out: the clock starts again
        await clear(h, {"hl_connected": True})
        await ts_env.sleep(1 * MIN + timedelta(seconds=30))
        assert "resume_new_orders" not in [a["action"] for a in si.actions]
        await ts_env.sleep(1 * MIN)
        st = await until(h, ts_env, lambda s: s.recovery.startswith("done"))
        assert [a["action"] for a in si.actions] == ["pause_new_orders", "resume_new_orders"]
        assert [(a.phase, a.what, a.by) for a in st.actions if a.phase == "auto_recovery"] == [
            ("auto_recovery", "core resume_new_orders", "monitor")]
        assert any("automatic recovery" in p["summary"] for p in triggers(si)), "paged"
        assert guard.calls and guard.calls[0].actions == ["pause_new_orders"]
        assert await h.query(IncidentWorkflow.holds) == []
        # fires again while still open: the action is taken again, and not undone automatically again
        await fire(h)
        await until(h, ts_env, lambda s: any(a.phase == "reapply" for a in s.actions))
        await clear(h, {"hl_connected": True})
        await ts_env.sleep(10 * MIN)
        acts = [a["action"] for a in si.actions]
        assert acts == ["pause_new_orders", "resume_new_orders", "pause_new_orders"]
        assert len({a["idempotency_key"] for a in si.actions}) == 3
        await h.execute_update(IncidentWorkflow.resolve, ResolveRequest(actor="oscar", undo=True))
        await h.result()
    assert [a["action"] for a in si.actions][-1] == "resume_new_orders"


async def test_auto_recovery_withheld_when_something_else_holds_the_pause(ts_env, store, task_queue):
    si, guard = StandIns(), GuardStandIn()
    guard.result = UndoGuardResult(ok=False, reason="rollback-inc-1 is running")
    async with incident_worker(ts_env, store, si, guard, task_queue):
        h = await open_incident(ts_env, task_queue, "hot_wallet")
        await until(h, ts_env, paged)
        await clear(h, {"hot_wallet_usd": 500_000})
        await ts_env.sleep(6 * MIN)
        st = await until(h, ts_env, lambda s: s.recovery.startswith("withheld"))
        assert "rollback-inc-1" in st.recovery
        assert [a["action"] for a in si.actions] == ["pause_large_withdrawals"]
        assert await h.query(IncidentWorkflow.holds) == ["pause_large_withdrawals"]
        await h.execute_update(IncidentWorkflow.resolve, ResolveRequest(actor="oscar"))
        await h.result()
    assert [a["action"] for a in si.actions] == ["pause_large_withdrawals"], "tried once: not again at resolve"


async def test_human_undo_never_overwrites_a_later_human_change(ts_env, store, task_queue):
    si, guard = StandIns(), GuardStandIn()
    async with incident_worker(ts_env, store, si, guard, task_queue):
        h = await open_incident(ts_env, task_queue, "hedge_margin")
        await until(h, ts_env, paged)
        assert await values(store, "hedge_max_leverage") == {"hedge_max_leverage": 2.0}
        await set_switches(store, "rita", hedge_max_leverage=1.5)  # the risk desk went lower still
        await clear(h)
        await refused(h.execute_update(IncidentWorkflow.resolve, ResolveRequest(actor="oscar", undo=True)), "risk_manager")
        await h.execute_update(IncidentWorkflow.resolve, ResolveRequest(actor="rita", undo=True))
        res = await h.result()
    assert await values(store, "hedge_max_leverage") == {"hedge_max_leverage": 1.5}
    undo = {a.what: a for a in res.actions if a.phase == "human_undo"}
    assert undo["switch hedge_max_leverage"].status == "conflict"
    assert undo["core resume_hl_opens"].status == "ok"


# -- further steps that start workflows -----------------------------------------------------------------
# On the dev server (real time): a child terminated with activities in flight leaks a time-skipping
# lock in the test server, after which env.sleep runs in real time for every later test.
async def test_asset_mismatch_ack_starts_the_data_inconsistency_rollback(dev_env, store, task_queue):
    si, guard = StandIns(), GuardStandIn()
    async with incident_worker(dev_env, store, si, guard, task_queue):
        h = await open_incident(dev_env, task_queue, "asset_mismatch")
        st = await until(h, dev_env, paged)
        assert st.children == []
        await h.execute_update(IncidentWorkflow.acknowledge, Decision(actor="oscar"))
        st = await until(h, dev_env, lambda s: s.children)
        assert st.children == [rollback_workflow_id(st.incident_id)]
        child = dev_env.client.get_workflow_handle(st.children[0])
        p = await wait_query(child, lambda p: p["awaiting"] is not None)
        assert p["kind"] == "rollback" and p["awaiting"]["step"] == "decision_window", "data inconsistency: 5-min window"
        await child.terminate("test over")
        await resolve(h, actor="alice")
        await h.result()


async def test_a_resolved_incident_hands_its_pages_on_to_the_rollback_that_still_runs(dev_env, store, task_queue):
    """Alert lifecycle: the incident is resolved while its child rollback still works; its open pages go to
    that rollback (said in both ledgers), which resolves them in PagerDuty when it ends."""
    from contracts.paging import AlertStatus
    from workflows.rollback import RollbackWorkflow

    si, guard = StandIns(), GuardStandIn()
    async with incident_worker(dev_env, store, si, guard, task_queue):
        h = await open_incident(dev_env, task_queue, "asset_mismatch")
        await until(h, dev_env, paged)
        await h.execute_update(IncidentWorkflow.acknowledge, Decision(actor="oscar"))
        st = await until(h, dev_env, lambda s: s.children)
        child = dev_env.client.get_workflow_handle(st.children[0])
        await wait_query(child, lambda p: p["awaiting"] is not None)
        await clear(h, {"asset_mismatch_ratio": 0.0})
        await until(h, dev_env, lambda s: s.condition == "clear")
        await resolve(h, actor="alice")
        await h.result()
        st = await h.query(IncidentWorkflow.state)
        [p0] = [a for a in st.alerts if a.kind == "opened"]
        assert p0.status is AlertStatus.HANDED_ON and p0.handed_to == child.id
        assert si.pd.alerts[next(k for k in si.pd.alerts if k[1] == p0.dedup_key)]["status"] == "acknowledged"
        await wait_query(child, lambda p: any(a["dedup_key"] == p0.dedup_key for a in p["alerts"]))
        await child.execute_update(RollbackWorkflow.cancel, Decision(actor="oscar", reason="reconciled, not needed"))
        await child.result()
    alert = next(a for (rk, dk), a in si.pd.alerts.items() if dk == p0.dedup_key)
    assert alert["status"] == "resolved"  # the rollback resolved what it was handed


async def test_hl_down_past_5_minutes_asks_for_level_2_or_3(dev_env, store, task_queue):
    si, guard = StandIns(), GuardStandIn()
    async with incident_worker(dev_env, store, si, guard, task_queue):
        # HL down for 61 s when detected; "5 minutes" shortened to 64 s: asked 3 s after it opens
        h = await open_incident(dev_env, task_queue, "hl_disconnection", started_ago=timedelta(seconds=61),
                                timings=Timings(manual_after=timedelta(seconds=64)))
        await until(h, dev_env, paged)
        await refused(h.execute_update(IncidentWorkflow.escalate, Decision(actor="oscar", level=2)), "does not ask")
        st = await until(h, dev_env, lambda s: s.level_choice == "asked", limit=400)
        assert st.sla.level == 2 and "still firing" in st.sla.escalations[0].why
        await until(h, dev_env, lambda s: any("level 2 (read-only" in p["summary"] for p in triggers(si)
                                             if p["escalation_level"] == 2))
        await refused(h.execute_update(IncidentWorkflow.escalate, Decision(actor="oscar", level=3)), "super_admin")
        await h.execute_update(IncidentWorkflow.escalate, Decision(actor="oscar", level=2))
        st = await until(h, dev_env, lambda s: s.children)
        assert st.children == [f"degrade-2-{st.incident_id}"]
        assert st.sla.action_by == "oscar"
        child = dev_env.client.get_workflow_handle(st.children[0])
        p = await wait_query(child, lambda p: p["kind"] == "degradation")
        assert p["kind"] == "degradation"
        assert len([a for a in si.actions if a["action"] == "pause_new_orders"]) == 1, "no further automatic change"
        await child.terminate("test over")
        await resolve(h)
        await h.result()


async def wait_query(handle, pred, timeout: float = 20.0) -> dict:
    return await wait_for_value(lambda: handle.query("progress"), pred, timeout, "the child's state")


# -- one incident per rule, idempotent actions -------------------------------------------------------------
async def test_a_rule_that_keeps_firing_reaches_its_open_incident(ts_env, store, task_queue):
    si, guard = StandIns(), GuardStandIn()
    ns = uuid.uuid4().hex[:8]
    async with incident_worker(ts_env, store, si, guard, task_queue):
        h1 = await open_incident(ts_env, task_queue, "order_deviation", symbol="BTC", namespace=ns)
        await until(h1, ts_env, paged)
        h2 = await open_incident(ts_env, task_queue, "order_deviation", symbol="BTC", namespace=ns)
        h3 = await open_incident(ts_env, task_queue, "order_deviation", symbol="ETH", namespace=ns)
        assert h2.id == h1.id and h2.result_run_id == h1.result_run_id
        assert h3.id != h1.id
        await until(h3, ts_env, paged)
        assert sorted(a["body"]["symbol"] for a in si.actions) == ["BTC", "ETH"]
        for h in (h1, h3):
            await resolve(h)
            await h.result()
        # resolved: the next firing opens a new incident, which acts and pages afresh
        h4 = await open_incident(ts_env, task_queue, "order_deviation", symbol="BTC", namespace=ns)
        assert h4.id == h1.id and h4.result_run_id != h1.result_run_id
        await until(h4, ts_env, paged)
        assert len(si.actions) == 3
        await resolve(h4)
        await h4.result()


class FlakyCore(StandIns):
    """Records every call; the first core.action attempt fails after the core acted (a lost answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict] = []

    @activity.defn(name="core.action")
    async def action(self, inp: dict) -> dict:
        self.calls.append(inp)
        res = await super().action(inp)
        if len(self.calls) == 1:
            raise RuntimeError("connection reset after the core acted")
        return res


async def test_immediate_action_once_across_retries_and_worker_restarts(dev_env, store, task_queue):
    # On the dev server: the time-skipping test server (1.40) wedges a worker restarted after a
    # local activity retry (sdk-core panics "receive half not dropped"); the dev server does not.
    si, guard = FlakyCore(), GuardStandIn()
    async with incident_worker(dev_env, store, si, guard, task_queue):
        h = await open_incident(dev_env, task_queue, "hot_wallet")
        await until(h, dev_env, paged)
    assert len(si.calls) == 2 and si.calls[0]["idempotency_key"] == si.calls[1]["idempotency_key"]
    assert len(si.actions) == 1, "the core saw one key: acted once"
    async with incident_worker(dev_env, store, si, guard, task_queue):  # a new worker replays the history
        await h.execute_update(IncidentWorkflow.acknowledge, Decision(actor="oscar"))
        await resolve(h)
        await h.result()
    assert len([c for c in si.calls if c["action"] == "pause_large_withdrawals"]) == 2


class DownCore(StandIns):
    """The trading core refuses every action (503) until `down` is cleared."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.attempts = 0

    @activity.defn(name="core.action")
    async def action(self, inp: dict) -> dict:
        self.attempts += 1
        if self.down:
            raise ApplicationError("trading core unavailable: 503", type="CoreUnavailable")
        return await super().action(inp)


async def test_the_page_does_not_wait_for_a_trading_core_that_is_down(dev_env, store, task_queue):
    # Real time (dev server), page_after shortened to 2 s: the page goes out while the immediate action
    # is still being retried, which then lands under the same idempotency key.
    si, guard = DownCore(), GuardStandIn()
    async with incident_worker(dev_env, store, si, guard, task_queue):
        t0 = time.monotonic()
        h = await open_incident(dev_env, task_queue, "hl_disconnection", values={"core_unreachable_for_s": 61},
                                timings=Timings(page_after=timedelta(seconds=2)))
        st = await until(h, dev_env, lambda s: s.ready and s.sla.paged_at is not None, limit=400)
        assert time.monotonic() - t0 < 6, "paged without waiting for the core"
        (page,) = triggers(si)
        assert "still retrying" in page["summary"]
        assert st.actions[0].status == "pending"
        si.down = False
        st = await until(h, dev_env, lambda s: s.actions[0].status == "ok", limit=600)
        assert [a["action"] for a in si.actions] == ["pause_new_orders"] and si.attempts >= 2
        await until(h, dev_env, lambda s: any("now applied" in c["text"] for c in si.chats))
        await resolve(h, actor="oscar")
        await h.result()


async def test_a_forced_resolve_stops_an_action_the_core_never_took(dev_env, store, task_queue):
    si, guard = DownCore(), GuardStandIn()
    async with incident_worker(dev_env, store, si, guard, task_queue):
        h = await open_incident(dev_env, task_queue, "asset_mismatch", timings=Timings(page_after=timedelta(seconds=1)))
        await until(h, dev_env, lambda s: s.ready, limit=400)
        await h.execute_update(IncidentWorkflow.resolve,
                               ResolveRequest(actor="alice", force=True, reason="false alarm: ledger job replayed"))
        res = await h.result()
    assert res.status == "resolved" and si.actions == []
    assert {a.status for a in res.actions} == {"failed"} and "not taken" in res.actions[0].detail
