"""A change is applied when every live consumer says so (contracts/fleet.py, activities/fleet.py).

Real etcd, real consumers: in-process watchers (core/watcher.py, the library every consumer uses) and
`python -m simulator.instance` processes. etcd's lease rule is what makes a dead instance drop out:
"LeaseGrant creates a lease which expires if the server does not receive a keepAlive within a given
time to live period. All keys attached to the lease will be expired and deleted if the lease expires.
Each expired key generates a delete event in the event history." (etcd api/etcdserverpb/rpc.proto,
service Lease). The wait watches for that delete; it never polls.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from contextlib import asynccontextmanager

from activities.fleet import wait_fleet
from contracts.fleet import FleetWaitInput
from core.watcher import SwitchWatcher
from manual import switches
from tests.support.fixtures_sim import apply
from tests.support.store_helpers import run_cli


@asynccontextmanager
async def consumers(store, delays: dict[str, float]):
    """In-process consumer instances; each applies a change `delays[id]` seconds after it arrives."""
    ws = []
    for cid, delay in delays.items():
        async def slow(upd, delay=delay):
            if delay:
                await asyncio.sleep(delay)
        w = SwitchWatcher(store.etcd, store.prefix, observe=False, consumer_id=cid, on_change=slow)
        await w.start()
        ws.append(w)
    try:
        yield ws
    finally:
        for w in ws:
            await w.stop()


@asynccontextmanager
async def instance(etcd_server, prefix: str, cid: str, delay_ms: float = 0):
    """`python -m simulator.instance` as a process (another trading-core instance)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLBACKCTL_")}
    env.update(ROLLBACKCTL_ETCD_ENDPOINTS=etcd_server.endpoint, ROLLBACKCTL_ETCD_PREFIX=prefix,
               ROLLBACKCTL_SIM_PARENT_PID=str(os.getpid()))
    p = await asyncio.create_subprocess_exec(sys.executable, "-m", "simulator.instance", "--id", cid,
                                             "--apply-delay-ms", str(delay_ms), env=env,
                                             stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL)
    try:
        async with asyncio.timeout(30):
            while True:
                line = (await p.stderr.readline()).decode()
                assert line, f"simulator instance {cid} exited ({await p.wait()})"
                if f"simulator instance {cid}: following" in line:
                    break
        drain = asyncio.create_task(p.stderr.read())
        yield p
    finally:
        if p.returncode is None:
            p.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                await p.wait()
        if "drain" in locals():
            await drain


def critical_s() -> float:
    return switches.Latency.CRITICAL.seconds


async def test_every_consumer_on_time(store):
    async with consumers(store, {"core-a": 0, "core-b": 0, "core-c": 0}):
        res = await apply(store, "alice", routing_mode="BETTING_MODE")
        got = await wait_fleet(store.etcd, store.prefix, FleetWaitInput(revision=res.revision, class_s=1, timeout_s=10))
    assert got.consumers == ["core-a", "core-b", "core-c"] and got.complete and not got.stragglers
    assert set(got.on_time) == set(got.consumers) and all(0 <= t <= 1 for t in got.on_time.values())
    assert got.waited_s < 1, got
    assert got.summary() == f"revision {res.revision} applied by 3/3 consumers within 1s"


async def test_a_slow_consumer_is_a_straggler_and_a_wedged_one_is_not_applied(store):
    class_s = critical_s()
    async with consumers(store, {"core-a": 0, "core-late": class_s + 0.5, "core-wedged": 3600}) as ws:
        res = await apply(store, "alice", routing_mode="BETTING_MODE")
        got = await wait_fleet(store.etcd, store.prefix,
                               FleetWaitInput(revision=res.revision, class_s=class_s, timeout_s=3))
        ws[2]._task.cancel()  # the wedged callback would hold its stop for an hour
    assert list(got.on_time) == ["core-a"]
    late, wedged = got.stragglers
    assert late.id == "core-late" and class_s < late.applied_after_s < 3
    assert wedged.id == "core-wedged" and wedged.applied_after_s is None and wedged.applied_revision < res.revision
    assert wedged.seen_s_ago is not None and wedged.seen_s_ago < 6  # it keeps refreshing: alive, not applying
    assert not got.complete and 3 <= got.waited_s < 4
    s = got.summary()
    assert "applied by 1/3 consumers within 1s" in s and "late: core-late" in s and "NOT APPLIED" in s, s


async def test_no_consumer_registered_is_said_not_hidden(store):
    res = await apply(store, "alice", hedge_max_leverage=4.0)
    got = await wait_fleet(store.etcd, store.prefix, FleetWaitInput(revision=res.revision, class_s=5, timeout_s=5))
    assert got.consumers == [] and got.waited_s < 1
    assert "no consumer registered, nothing confirmed it applied" in got.summary()


async def test_a_killed_instance_drops_out_when_its_lease_expires(store, etcd_server):
    """SIGKILL: nothing revokes its lease; the wait ends when etcd expires it (6 s TTL), not at its timeout."""
    async with instance(etcd_server, store.prefix, "sim-a"), instance(etcd_server, store.prefix, "sim-dead") as dead:
        dead.send_signal(signal.SIGKILL)
        await dead.wait()
        res = await apply(store, "alice", routing_mode="BETTING_MODE")
        got = await wait_fleet(store.etcd, store.prefix,
                               FleetWaitInput(revision=res.revision, class_s=1, timeout_s=30))
    assert got.dropped == ["sim-dead"] and got.consumers == ["sim-a"] and got.complete
    assert got.waited_s < 8, got  # the lease's 6 s, not the 30 s timeout


async def test_switch_set_wait_applied_names_the_stragglers(store, etcd_server):
    """The CLI as an on-call runs it, against simulator instances in their own processes."""
    env = {"ROLLBACKCTL_ETCD_ENDPOINTS": etcd_server.endpoint, "ROLLBACKCTL_ETCD_PREFIX": store.prefix,
           "ROLLBACKCTL_SIGNING": "off"}
    r = await asyncio.to_thread(run_cli, "switch", "set", "hedge_max_leverage", "4.5", "--as", "alice",
                                "--reason", "drill", "--wait-applied", env=env)
    assert r.code == 10 and "UNCONFIRMED: revision" in r.out and "no consumer registered" in r.out, (r.out, r.err)
    assert "hedge_max_leverage: 3x -> 4.5x" in r.out  # written all the same
    async with instance(etcd_server, store.prefix, "sim-1"), instance(etcd_server, store.prefix, "sim-2"):
        r = await asyncio.to_thread(run_cli, "switch", "set", "routing_mode", "BETTING_MODE", "--as", "alice",
                                    "--reason", "drill", "--wait-applied", env=env)
        assert r.code == 0, r.err
        assert "applied everywhere: revision" in r.out and "applied by 2/2 consumers within 1s" in r.out, r.out
        async with instance(etcd_server, store.prefix, "sim-slow", delay_ms=1800):
            r = await asyncio.to_thread(run_cli, "switch", "set", "routing_mode", "NORMAL_MODE", "--as", "alice",
                                        "--reason", "drill", "--wait-applied", "--json", env=env)
            assert r.code == 0, r.err  # late, but applied: the change is everywhere now
            fleet = json.loads(r.out)["fleet"]
            assert [s["id"] for s in fleet["stragglers"]] == ["sim-slow"] and fleet["stragglers"][0]["applied_after_s"] > 1
            async with instance(etcd_server, store.prefix, "sim-stuck", delay_ms=600_000):
                r = await asyncio.to_thread(run_cli, "switch", "set", "routing_mode", "HL_MODE", "--as", "alice",
                                            "--reason", "drill", "--wait-applied", env=env, timeout=60)
                assert r.code == 10, (r.code, r.out, r.err)
                assert "STRAGGLERS:" in r.out and "NOT APPLIED after" in r.out and "sim-stuck (at revision" in r.out
                assert "late: sim-slow" in r.out, r.out
                # `status` says who lags the last change, in one line
                r = await asyncio.to_thread(run_cli, "consumers", "--json", env=env)
                behind = [c["id"] for c in json.loads(r.out)["consumers"] if c["behind"]]
                assert behind == ["sim-stuck"], r.out


async def test_a_rollback_waits_for_the_fleet_and_pages_a_straggler(dev_env, store, sim, core_settings,
                                                                     paging_settings, http, task_queue):
    """The verify-applied step of a real rollback: the trading core's own confirmation and every receipt.
    routing_mode is a <1 s switch: a consumer 1.6 s slow per switch is paged, critical, and named in the step."""
    from datetime import timedelta

    from manual.rollback import Durations, Scope, Severity
    from tests.support.fixtures_sim import apply_and_wait
    from tests.support.wf_helpers import (awaiting, incident, poll_progress, real_worker, save_history,
                                          terminate_idle)
    from workflows.models import RollbackInput
    from workflows.rollback import RollbackWorkflow, rollback_workflow_id

    await apply_and_wait(sim, store, global_betting_enabled=True, routing_mode="NORMAL_MODE")
    inc = incident()
    quick = Durations(observe=timedelta(seconds=1), check_interval=timedelta(milliseconds=250),
                      restore_observe=timedelta(seconds=1), confirm_sla=timedelta(minutes=10))
    async with consumers(store, {"core-a": 0, "core-slow": 1.6}), \
            real_worker(dev_env, store, core_settings, paging_settings, http, task_queue):
        h = await dev_env.client.start_workflow(
            RollbackWorkflow.run,
            RollbackInput(incident_id=inc, summary="error rate 3%", severity=Severity.CRITICAL, scope=Scope.CROSS,
                          requested_by="oscar", reason="internalization failing", durations=quick),
            id=rollback_workflow_id(inc), task_queue=task_queue)
        p = await poll_progress(h, awaiting("confirm"), 30)
        step = next(r for r in p.history if r.name == "apply").detail
        assert "trading core applied revision" in step, step
        # two switches in one change set: the slow instance takes 1.6 s over each
        assert "applied by 1/2 consumers within 1s" in step and "late: core-slow (3." in step, step
        pages = await sim.wait_for(sim.pages, lambda ps: [x for x in ps if "did not apply etcd revision"
                                                          in x["payload"]["summary"]], 20, what="the straggler page")
        (page,) = [x for x in pages if "did not apply etcd revision" in x["payload"]["summary"]]
        assert page["payload"]["severity"] == "critical" and "core-slow" in page["payload"]["summary"]
        await save_history(h, "rollback_fleet_straggler_paged")  # the fleet-receipts branch, for replay
        await terminate_idle(h)


async def test_status_names_the_stragglers_of_the_last_change(dev_env, store, etcd_server):
    env = {"ROLLBACKCTL_ETCD_ENDPOINTS": etcd_server.endpoint, "ROLLBACKCTL_ETCD_PREFIX": store.prefix,
           "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host}
    r = await asyncio.to_thread(run_cli, "status", env=env)
    assert r.code == 0 and "consumers: none registered" in r.out, (r.out, r.err)
    async with consumers(store, {"core-a": 0, "core-wedged": 3600}) as ws:
        res = await apply(store, "alice", hedge_max_leverage=4.5)
        await wait_fleet(store.etcd, store.prefix, FleetWaitInput(revision=res.revision, class_s=5, timeout_s=0.5))
        r = await asyncio.to_thread(run_cli, "status", env=env)
        line = next(x for x in r.out.splitlines() if x.startswith("STRAGGLERS:"))
        assert line.startswith(f"STRAGGLERS: 1 of 2 consumers behind the last switch change (revision "
                               f"{res.revision}): core-wedged at "), r.out
        r = await asyncio.to_thread(run_cli, "status", "--json", env=env)
        assert isinstance(json.loads(r.out), list)  # unchanged for the scripts that read it
        r = await asyncio.to_thread(run_cli, "consumers", "--json", env=env)
        assert [c["id"] for c in json.loads(r.out)["consumers"] if c["behind"]] == ["core-wedged"]
        ws[1]._task.cancel()


async def test_the_wait_survives_an_etcd_restart(store, etcd_server):
    """The watch drops when etcd restarts; the wait reads the receipts again and goes on watching, so an
    instance that applies after the restart still counts as applied, not as a straggler that never did."""
    from tests.support.waits import wait_until

    read_done = asyncio.Event()
    calls = 0

    def clock() -> float:  # its 2nd call follows the first read: from then on the wait is watching
        nonlocal calls
        calls += 1
        if calls == 2:
            read_done.set()
        return time.monotonic()

    async with consumers(store, {"core-a": 0, "core-b": 2.5}) as ws:
        res = await apply(store, "alice", routing_mode="BETTING_MODE")
        task = asyncio.create_task(wait_fleet(store.etcd, store.prefix,
                                              FleetWaitInput(revision=res.revision, class_s=1, timeout_s=20), clock))
        await wait_until(lambda: ws[0].revision >= res.revision, 5, "core-a applied")
        # Restarted mid-watch, what this test is about (a call cut off mid-read by a failover is
        # tests/test_etcd_client.py's).
        await wait_until(read_done.is_set, 5, "the wait's first read")
        await asyncio.to_thread(etcd_server.restart)
        got = await task
    assert got.complete and got.consumers == ["core-a", "core-b"], got
    (late,) = got.stragglers
    assert late.id == "core-b" and late.applied_after_s > 2.5 and got.waited_s < 20


async def test_the_worker_exports_how_many_consumers_lag(store):
    """The gauges behind RollbackctlConsumerBehind (monitoring/prometheus): a straggler of any writer's
    change, `switch set` without --wait-applied included, reaches Alertmanager."""
    from activities.metrics import MatrixMetrics
    from core import metrics

    mm = MatrixMetrics(store)
    async with consumers(store, {"core-a": 0, "core-wedged": 3600}) as ws:
        await mm.consumers()
        assert (metrics.CONSUMERS_LIVE._value.get(), metrics.CONSUMERS_BEHIND._value.get()) == (2, 0)
        res = await apply(store, "alice", hedge_max_leverage=4.5)
        await wait_fleet(store.etcd, store.prefix, FleetWaitInput(revision=res.revision, class_s=5, timeout_s=0.5))
        await mm.consumers()
        assert (metrics.CONSUMERS_LIVE._value.get(), metrics.CONSUMERS_BEHIND._value.get()) == (2, 1)
        ws[1]._task.cancel()
