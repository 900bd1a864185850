"""PagerDuty Change Events for every audited switch change (activities/change_events.py).

PagerDuty (github.com/PagerDuty/developer-docs docs/events-API-v2/03-Change-Events.md): change events go
to /v2/change/enqueue with the routing_key and a payload.summary, "provide context to responders when
triaging an incident" and are shown on the incident's page; they notify nobody (01-Overview.md:
"Notifications can be sent? ... Change: No").
"""

from __future__ import annotations

import asyncio

from temporalio.common import WorkflowIDConflictPolicy
from temporalio.testing import ActivityEnvironment

from activities.change_events import ChangeEventRelay, RelayInput, change_event_for
from activities.paging import PagingActivities
from contracts.roles import Role
from tests.support.fixtures_sim import LEVEL_KEYS, apply
from tests.support.wf_helpers import real_worker
from workflows.change_events import ChangeEventsWorkflow, change_events_workflow_id


async def test_each_audited_change_set_becomes_one_change_event(store, sim, paging_settings):
    paging = PagingActivities.from_settings(paging_settings)
    relay = ChangeEventRelay(store, paging)
    head = await store.head_seq()
    await apply(store, "rita", hedge_max_leverage=1.5)
    await store.add_operator("nina", Role.ON_CALL, actor="alice")  # audited, but changes no switch
    await apply(store, "alice", global_betting_enabled=False, routing_mode="HL_MODE")
    st = await ActivityEnvironment().run(relay.relay, RelayInput(after_seq=head, poll_s=0.05, run_for_s=0.5))
    assert st.posted == 2 and st.skipped == 0 and st.after_seq == head + 3
    ces = (await sim.pagerduty())["change_events"]
    assert [c["routing_key"] for c in ces] == [LEVEL_KEYS[0]] * 2
    first, second = (c["payload"] for c in ces)
    assert first["summary"].startswith("rita (risk_manager): hedge_max_leverage 3.0 -> 1.5")
    assert first["custom_details"]["changes"] == [{"switch": "hedge_max_leverage", "old": 3.0, "new": 1.5}]
    assert second["custom_details"]["actor"] == "alice" and len(second["custom_details"]["changes"]) == 2
    assert await sim.notifications() == []  # context for responders; it wakes nobody
    # from its cursor on: nothing is posted twice
    again = await ActivityEnvironment().run(relay.relay, RelayInput(after_seq=st.after_seq, poll_s=0.05, run_for_s=0.2))
    assert again.posted == 0 and len((await sim.pagerduty())["change_events"]) == 2
    await paging.aclose()


async def test_a_change_event_pagerduty_refuses_is_skipped_and_counted_not_retried_forever(store, sim, paging_settings):
    paging = PagingActivities.from_settings(paging_settings)
    await sim.paging_config(pagerduty_known_keys=LEVEL_KEYS[1:])  # the change events' key is not known: 400
    head = await store.head_seq()
    await apply(store, "rita", hedge_max_leverage=2.0)
    st = await ActivityEnvironment().run(ChangeEventRelay(store, paging).relay,
                                         RelayInput(after_seq=head, poll_s=0.05, run_for_s=0.3))
    assert st.posted == 0 and st.skipped == 1 and "Invalid routing key" in st.last_error
    await paging.aclose()


def test_the_event_says_who_what_and_why():
    from contracts.changes import AuditRecord, ChangeRecord

    rec = AuditRecord(id="000000000042", at="2026-12-02T03:00:00Z", actor="oscar", role="on_call",
                      reason="P0 hedge margin", source="rollback-inc-1", action="rollback.apply",
                      authority="preapproved", changes=[ChangeRecord(switch="hedge_enabled", old=True, new=False)],
                      hash="ab" * 32)
    ev = change_event_for(rec, "http://127.0.0.1:8233/namespaces/default/workflows")
    assert ev.summary == "oscar (on_call): hedge_enabled True -> False — P0 hedge margin"
    assert ev.custom_details["audit_id"] == "000000000042" and ev.custom_details["hash"] == "ab" * 32
    assert ev.links == [{"href": "http://127.0.0.1:8233/namespaces/default/workflows/rollback-inc-1",
                         "text": "workflow rollback-inc-1"}]


async def test_the_worker_keeps_the_relay_running(dev_env, store, sim, http, core_settings, paging_settings, task_queue):
    async with real_worker(dev_env, store, core_settings, paging_settings, http, task_queue):
        h = await dev_env.client.start_workflow(
            ChangeEventsWorkflow.run, RelayInput(poll_s=0.1), id=change_events_workflow_id(task_queue),
            task_queue=task_queue, id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)
        for _ in range(100):  # its activity is running and has read the trail's head (polled, bounded)
            d = (await h.describe()).raw_description
            if d.pending_activities and d.pending_activities[0].HasField("last_heartbeat_time"):
                break
            await asyncio.sleep(0.05)
        await apply(store, "rita", hedge_max_leverage=1.5)
        ces = await sim.wait_for(lambda: sim.pagerduty(), lambda pd: pd["change_events"], 10, what="the change event")
        assert "hedge_max_leverage 3.0 -> 1.5" in ces["change_events"][0]["payload"]["summary"]
        await h.terminate("test done")
