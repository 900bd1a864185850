"""Paging end to end on the dev server: the production worker, the simulator's strict PagerDuty and Slack
sinks, and the PagerDuty v3 webhook receiver over HTTP.

What PagerDuty documents and these tests hold the code to (github.com/PagerDuty/developer-docs):
- docs/webhooks/04-Signatures.md: `X-PagerDuty-Signature: v1=<hex HMAC-SHA256 of the raw body>`; "If at
  least one of the signatures matches, the webhook should be considered a trusted and authentic request";
- docs/webhooks/02-Behavior.md: a 2xx is expected within 5 s; "PagerDuty will drop a webhook without a
  retry" on a 4xx; deliveries are "at least once";
- docs/webhooks/01-Overview.md: `incident.acknowledged` / `incident.unacknowledged` carry the incident
  with its `incident_key` (the Events API dedup key);
- docs/events-API-v2/02-Trigger-Events.md: an acknowledged alert "won't generate any additional
  notifications, even if it receives new trigger events" — so only a *new* alert wakes someone.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
import uvicorn

from activities.pager_client import forward_alert_event
from contracts.paging import QueueView, pager_workflow_id
from manual.rollback import Durations, Scope, Severity
from core import procs
from rollbackctl.pagerhook import PATH, create_app
from tests.support.fixtures_sim import LEVEL_HOOKS, LEVEL_KEYS
from tests.support.store_helpers import ROLLBACKCTL, run_cli
from tests.support.wf_helpers import audit_of, incident, poll_progress, real_worker, terminate_idle
from contracts.progress import Decision
from workflows.models import RollbackInput
from workflows.rollback import RollbackWorkflow, rollback_workflow_id

SECRET = f"whsec-{uuid.uuid4().hex}"


@pytest.fixture
async def receiver(dev_env, task_queue):
    """The webhook receiver (rollbackctl/pagerhook.py) on a free loopback port, forwarding to this test's pager."""

    async def forward(ev):
        return await forward_alert_event(dev_env.client, task_queue, ev)

    port = procs.free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(forward, [SECRET]), host="127.0.0.1", port=port,
                                           log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)  # uvicorn's start-up flag
    yield f"http://127.0.0.1:{port}{PATH}"
    server.should_exit = True
    await task


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-PagerDuty-Signature":
            "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(), "X-Webhook-Id": uuid.uuid4().hex}


def v3(event_type: str, incident_key: str, by: str = "Olive") -> bytes:
    return json.dumps({"event": {"id": uuid.uuid4().hex, "event_type": event_type, "resource_type": "incident",
                                 "occurred_at": "2026-12-02T03:00:00Z", "agent": {"summary": by, "type": "user_reference"},
                                 "data": {"id": "P1", "type": "incident", "incident_key": incident_key,
                                          "status": "acknowledged"}}}).encode()


def start(dev_env, tq, inc, sla=timedelta(seconds=10)):  # the shortest re-page interval allowed
    d = Durations(observe=timedelta(seconds=1), check_interval=timedelta(milliseconds=250), confirm_sla=sla)
    return dev_env.client.start_workflow(
        RollbackWorkflow.run,
        RollbackInput(incident_id=inc, summary="s", severity=Severity.CRITICAL, scope=Scope.CROSS, requested_by="oscar",
                      reason="test", durations=d),
        id=rollback_workflow_id(inc), task_queue=tq)


async def mine(sim, wid: str) -> list[dict]:
    return [a for a in (await sim.pagerduty())["alerts"] if a["dedup_key"].startswith(f"{wid}/")]


async def test_an_ack_in_pagerduty_stops_the_repages_and_is_audited_as_seen(
        dev_env, store, sim, http, core_settings, paging_settings, task_queue, receiver):
    await sim.paging_config(webhook_url=receiver, webhook_secrets=[SECRET])
    inc = incident()
    async with real_worker(dev_env, store, core_settings, paging_settings, http, task_queue):
        h = await start(dev_env, task_queue, inc)
        await poll_progress(h, lambda p: p.awaiting is not None and p.awaiting.step == "confirm", 30)
        [opened] = await sim.wait_for(lambda: mine(sim, h.id), lambda a: len(a) == 1, 10, what="the page")
        n0 = len(await sim.notifications())
        hook = await sim.pagerduty_app("acknowledge", opened["dedup_key"], "Olive On-call")
        assert hook["status"] == 202  # the receiver accepted it within PagerDuty's 5 s
        p = await poll_progress(h, lambda p: p.awaiting is not None and p.awaiting.seen_by == "Olive On-call", 10)
        assert p.awaiting.expects == "confirm"  # seen, not decided: the signed confirm is still awaited
        assert next(a for a in p.alerts if a.dedup_key == opened["dedup_key"]).seen_by == "Olive On-call"
        # the confirm SLA passes: a reminder in chat, nobody else paged
        p = await poll_progress(h, lambda p: p.awaiting.reminders >= 1, 20)
        assert p.awaiting.repages == 0 and len(await sim.notifications()) == n0
        assert len(await mine(sim, h.id)) == 1
        await sim.wait_for(sim.slack, lambda sl: any("STILL WAITING" in m["text"] and "Olive On-call" in m["text"]
                                                     for m in sl["messages"]), 10, what="the reminder in chat")
        seen = [a for a in await audit_of(store, h.id) if a.action == "page.acknowledged"]
        assert len(seen) == 1 and seen[0].actor == "pagerduty:Olive On-call" and seen[0].changes == []
        assert seen[0].authority == "observed" and "not a signed decision" in seen[0].reason
        # PagerDuty's acknowledgement timeout: unacknowledged -> the re-pages resume, as a new alert
        await sim.pagerduty_app("unacknowledge", opened["dedup_key"], "PagerDuty")
        p = await poll_progress(h, lambda p: p.awaiting.repages >= 1, 25)
        await sim.wait_for(lambda: mine(sim, h.id), lambda a: len(a) == 2, 10, what="the re-page's own alert")
        await h.execute_update(RollbackWorkflow.confirm, Decision(actor="oscar"))
        res = await h.result()  # the defaults were already the rollback's values: nothing to restore
    assert res.status == "closed_without_restore"
    alerts = await mine(sim, h.id)
    assert alerts and all(a["status"] == "resolved" for a in alerts), alerts  # nothing left open in PagerDuty


async def test_forged_malformed_and_unknown_webhooks_change_nothing(
        dev_env, store, sim, http, core_settings, paging_settings, task_queue, receiver):
    inc = incident()
    async with real_worker(dev_env, store, core_settings, paging_settings, http, task_queue):
        h = await start(dev_env, task_queue, inc, sla=timedelta(minutes=10))
        await poll_progress(h, lambda p: p.awaiting is not None and p.awaiting.step == "confirm", 30)
        [opened] = await sim.wait_for(lambda: mine(sim, h.id), lambda a: len(a) == 1, 10, what="the page")
        body = v3("incident.acknowledged", opened["dedup_key"])
        before = (await h.query(RollbackWorkflow.progress)).model_dump()
        for headers in ({"Content-Type": "application/json"}, signed(body, "another-secret"),
                        {**signed(body), "X-PagerDuty-Signature": "v0=" + "0" * 64}):
            r = await http.post(receiver, content=body, headers=headers)
            assert r.status_code == 401, r.text
        r = await http.post(receiver, content=b"{broken", headers=signed(b"{broken"))
        assert r.status_code == 400
        r = await http.post(receiver, content=b'{"event": {}}', headers=signed(b'{"event": {}}'))
        assert r.status_code == 400 and "event_type" in r.text
        other = v3("service.updated", "x")
        r = await http.post(receiver, content=other, headers=signed(other))
        assert r.status_code == 202 and r.json()["status"] == "ignored"
        unknown = v3("incident.acknowledged", f"nobody-{uuid.uuid4().hex}/p1:L1")
        r = await http.post(receiver, content=unknown, headers=signed(unknown))
        assert r.status_code == 202  # acknowledged to PagerDuty ...
        pager = dev_env.client.get_workflow_handle(pager_workflow_id(task_queue))
        for _ in range(200):  # ... logged and ignored by the pager (polled, bounded)
            if (await pager.query("queue", result_type=QueueView)).unknown_events == 1:
                break
            await asyncio.sleep(0.05)
        assert (await pager.query("queue", result_type=QueueView)).unknown_events == 1
        after = (await h.query(RollbackWorkflow.progress)).model_dump()
        assert after["awaiting"] == before["awaiting"] and after["decisions"] == before["decisions"]
        assert [a for a in await audit_of(store, h.id) if a.action.startswith("page.")] == []
        await terminate_idle(h)


async def test_a_page_pagerduty_refuses_is_rerouted_and_said(
        dev_env, store, sim, http, core_settings, paging_settings, task_queue, etcd_server, prefix):
    await sim.paging_config(pagerduty_known_keys=LEVEL_KEYS[1:])  # level 1's integration key was removed
    inc = incident()
    async with real_worker(dev_env, store, core_settings, paging_settings, http, task_queue):
        h = await start(dev_env, task_queue, inc, sla=timedelta(minutes=10))
        p = await poll_progress(h, lambda p: p.paging_failures, 30)
        [f] = p.paging_failures
        assert f.channel.value == "pagerduty" and f.level == 1 and "Invalid routing key" in f.why
        assert f.rerouted == ["slack L1", "pagerduty L2", "slack L2"]
        [l2] = await sim.wait_for(lambda: mine(sim, h.id), lambda a: len(a) == 1, 10, what="the level-2 page")
        assert l2["routing_key"] == LEVEL_KEYS[1] and "[rerouted" in l2["summary"]
        slack = (await sim.slack())["messages"]
        assert any("PAGERDUTY FAILED at level 1" in m["text"] for m in slack)
        env = {"ROLLBACKCTL_ETCD_ENDPOINTS": etcd_server.endpoint, "ROLLBACKCTL_ETCD_PREFIX": prefix,
               "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host, "ROLLBACKCTL_SIGNING": "off",
               "ROLLBACKCTL_TASK_QUEUE": task_queue}
        r = await asyncio.to_thread(run_cli, "status", h.id, env=env)
        assert r.code == 0 and "PAGING FAILED" in r.out and "level 1 pagerduty" in r.out, r.out
        await terminate_idle(h)


async def test_paging_test_reports_each_level_and_channel(
        dev_env, store, sim, http, core_settings, paging_settings, task_queue, etcd_server, prefix):
    env = {"ROLLBACKCTL_ETCD_ENDPOINTS": etcd_server.endpoint, "ROLLBACKCTL_ETCD_PREFIX": prefix,
           "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host, "ROLLBACKCTL_TASK_QUEUE": task_queue}
    async with real_worker(dev_env, store, core_settings, paging_settings, http, task_queue):
        r = await asyncio.to_thread(run_cli, "paging", "test", "--json", env=env)
        assert r.code == 0, r.err
        res = r.json()
        assert res["ok"] and [x["level"] for x in res["levels"]] == [1, 2, 3]
        pd = await sim.pagerduty()
        assert len([a for a in pd["alerts"] if a["dedup_key"].startswith("paging-test")]) == 3
        assert all(a["status"] == "resolved" for a in pd["alerts"] if a["dedup_key"].startswith("paging-test"))
        await sim.paging_config(slack_broken={LEVEL_HOOKS[1]: "channel_is_archived"})
        r = await asyncio.to_thread(run_cli, "paging", "test", "--level", "2", env=env)
        assert r.code == 8, (r.out, r.err)
        assert "level 2 Slack: FAILED" in r.err and "410" in r.err and "channel_is_archived" in r.err


def test_the_worker_refuses_malformed_paging_in_one_line(sim_env, tmp_path):
    env = {**os.environ, **sim_env, "ROLLBACKCTL_PAGERDUTY_ROUTING_KEYS": ",".join([LEVEL_KEYS[0][:31], *LEVEL_KEYS[1:]]),
           "TEMPORAL_ADDRESS": "127.0.0.1:1"}
    r = subprocess.run([sys.executable, "-c", "import worker; worker.main()"], env=env, capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "ROLLBACKCTL_PAGERDUTY_ROUTING_KEYS: entry 1 is 31 characters" in lines[0], lines
    assert LEVEL_KEYS[1] not in r.stderr


def test_dev_up_refuses_malformed_paging_before_starting_anything(sim_env, tmp_path):
    env = {**os.environ, "ROLLBACKCTL_DEV_DIR": str(tmp_path / "dev"),
           "ROLLBACKCTL_PAGERDUTY_URL": "http://events.example.com/v2/enqueue",  # plain http off loopback
           "ROLLBACKCTL_PAGERDUTY_ROUTING_KEY": LEVEL_KEYS[0], "ROLLBACKCTL_SLACK_WEBHOOK_URL": "https://hooks.slack.com/x"}
    r = subprocess.run([ROLLBACKCTL, "dev", "up"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and "ROLLBACKCTL_PAGERDUTY_URL must be https" in r.stderr, (r.stdout, r.stderr)
    assert not list((tmp_path / "dev").glob("*.pid"))  # nothing was started
