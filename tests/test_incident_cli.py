"""`rollbackctl incidents | ack | tick | resolve | monitor` as a user runs them (subprocesses), on the dev server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid

import httpx

from tests.support.incident_helpers import GuardStandIn, clear, incident_worker, open_incident, until
from tests.support.standins import StandIns
from tests.support.store_helpers import ROLLBACKCTL, run_cli
from tests.support.waits import wait_for_value as wait
from worker import activity_methods, activity_objects, build_worker
from workflows.incident import IncidentWorkflow
from contracts.incidents import incident_workflow_id


def cli_env(dev_env, etcd_server, prefix, **extra) -> dict[str, str]:
    # signing off like the in-process workers of the suite (tests/conftest.py); signed decisions are
    # the identity tests' subject
    return {"ROLLBACKCTL_ETCD_ENDPOINTS": etcd_server.endpoint, "ROLLBACKCTL_ETCD_PREFIX": prefix,
            "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host, "ROLLBACKCTL_SIGNING": "off",
            **extra}


async def cli(*args: str, env: dict[str, str]):
    return await asyncio.to_thread(run_cli, *args, env=env)


async def test_incidents_ack_tick_resolve(dev_env, store, etcd_server, prefix, task_queue):
    env = cli_env(dev_env, etcd_server, prefix)
    si, guard = StandIns(), GuardStandIn()
    async with incident_worker(dev_env, store, si, guard, task_queue):
        h = await open_incident(dev_env, task_queue, "hot_wallet", values={"hot_wallet_usd": 42_000})
        st = await until(h, dev_env, lambda s: s.ready)
        short = h.id.removeprefix("incident-")

        async def listed():
            r = await cli("incidents", "--json", env=env)
            assert r.code == 0, r.err
            return [x for x in r.json() if x.get("workflow_id") == h.id]
        (row,) = await wait(listed, lambda rows: rows, what="listed by visibility")
        assert row["rule"] == "hot_wallet" and row["sla"]["ack_due"] and row["actions"][0]["what"] == \
            "core pause_large_withdrawals"
        r = await cli("incidents", env=env)
        assert r.code == 0 and h.id in r.out and "ACK (5 MIN)" in r.out and "[ ] cold_transfer" in r.out

        r = await cli("ack", h.id, "--as", "vic", env=env)
        assert r.code == 3 and "needs on_call" in r.err
        r = await cli("ack", st.incident_id, "--as", "oscar", env=env)  # the incident id works too
        assert r.code == 0, r.err
        r = await cli("tick", short, "cold_transfer", "--as", "oscar", "--note", "2M moved", env=env)
        assert r.code == 0, r.err
        r = await cli("resolve", short, "--as", "oscar", env=env)
        assert r.code == 4 and "still reports" in r.err
        await clear(h, {"hot_wallet_usd": 2_000_000})
        await until(h, dev_env, lambda s: s.condition == "clear")
        r = await cli("resolve", short, "--as", "oscar", "--reason", "refilled", env=env)
        assert r.code == 0, r.err
        res = await h.result()
    assert res.status == "resolved" and res.sla.acked_by == "oscar" and res.sla.action_by == "oscar"
    r = await cli("ack", h.id, "--as", "oscar", env=env)
    assert r.code == 4


async def test_rollbackctl_monitor_process(dev_env, store, etcd_server, prefix, sim, sim_env, task_queue,
                                           core_settings, paging_settings, tmp_path):
    ns = uuid.uuid4().hex[:8]
    env = cli_env(dev_env, etcd_server, prefix, **sim_env, ROLLBACKCTL_TASK_QUEUE=task_queue,
                  ROLLBACKCTL_MONITOR_NAMESPACE=ns, ROLLBACKCTL_MONITOR_INTERVAL_S="0.1")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ROLLBACKCTL_", "TEMPORAL_"))}
    log = open(tmp_path / "monitor.log", "wb")
    proc = subprocess.Popen([ROLLBACKCTL, "monitor"], env={**base, **env}, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        async with httpx.AsyncClient() as http:
            objs = activity_objects(store, http, dev_env.client, core_settings, paging_settings)
            async with build_worker(dev_env.client, task_queue, activity_methods(objs)):
                r = await wait(lambda: cli("monitor", "--status", "--json", env=env),
                               lambda r: r.code == 0 and r.json().get("polls", 0) > 0, 20, what="monitor polling")
                assert r.json()["firing"] == []
                await sim.inject(order_price_deviation={"SOL": 0.09})
                acts = await sim.wait_for(sim.actions, lambda a: a, 10, what="action")
                assert [(a["action"], a["body"]) for a in acts] == [("pause_symbol_hl_routing", {"symbol": "SOL"})]
                wid = incident_workflow_id("order_deviation", "SOL", ns)
                st = await wait(lambda: dev_env.client.get_workflow_handle(wid).query(IncidentWorkflow.state),
                                lambda s: s.ready, what="incident ready")
                assert st.symbol == "SOL"
                await dev_env.client.get_workflow_handle(wid).terminate("test over")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 20)
        log.close()
    assert code == 0, (tmp_path / "monitor.log").read_text()
    r = await cli("monitor", "--stop", env=env)
    assert r.code == 0, r.err


async def test_a_decision_for_the_rollback_an_incident_started_reaches_it_by_the_incident_id(
        dev_env, store, etcd_server, prefix, task_queue):
    """The page names the incident; acknowledging an asset mismatch starts its rollback (a data
    inconsistency: a 5-minute window to `proceed` or `cancel`). A decision meant for that rollback, given
    the id from the page, reaches the rollback (said), not the incident (before: a raw "Update handler
    not found", and the 40-character rollback id had to be found by hand)."""
    import json

    env = cli_env(dev_env, etcd_server, prefix)
    si, guard = StandIns(), GuardStandIn()
    async with incident_worker(dev_env, store, si, guard, task_queue):
        h = await open_incident(dev_env, task_queue, "asset_mismatch")
        await until(h, dev_env, lambda s: s.ready)
        r = await cli("cancel", h.id, "--as", "oscar", "--reason", "x", env=env)  # not acknowledged: no rollback yet
        assert r.code == 2 and "none of its own runs now" in r.err, r
        r = await cli("ack", h.id, "--as", "oscar", env=env)
        assert r.code == 0, r.err
        st = await until(h, dev_env, lambda s: s.children)
        child = st.children[0]
        await wait(lambda: dev_env.client.get_workflow_handle(child).query("progress"),
                   lambda p: p["awaiting"] is not None, timeout=60, what="the rollback's decision window")
        r = await cli("cancel", h.id, "--as", "oscar", "--reason", "reconciled by hand: no gap", "--json", env=env)
        assert r.code == 0, r
        assert f"{h.id} -> {child} (the workflow this incident started" in r.out
        assert json.loads(r.out[r.out.index("{"):])["workflow_id"] == child
        res = await dev_env.client.get_workflow_handle(child).result()
        assert res["status"] == "cancelled"
        await clear(h)
        await until(h, dev_env, lambda s: s.condition == "clear")
        r = await cli("resolve", h.id, "--as", "alice", "--undo", "--reason", "reconciled", env=env)
        assert r.code == 0, r.err
        await h.result()
