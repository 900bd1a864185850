"""`rollbackctl canary ...` end to end on the Temporal dev server (real time, Updates) with every real
activity: the audited store in etcd, the trading-core simulator (it follows etcd; faults injected
with POST /sim/faults) and paging to its sinks. Plans run with --time-scale, as in a demo."""

from __future__ import annotations

import asyncio
import re

import pytest

from activities.temporal_ops import TemporalOps
from manual import canary
from rollbackctl.cli import build_parser
from rollbackctl.cli.canary_cmds import start_canary
from rollbackctl.cli.common import CliError
from tests.support.waits import wait_for_value
from tests.support.wf_helpers import real_worker, save_history, values
from workflows.canary import CanaryWorkflow
from workflows.canary_models import CanaryInput, CanaryStatus


@pytest.fixture
def cli_env(monkeypatch, dev_env, etcd_server, prefix, task_queue):
    monkeypatch.setenv("TEMPORAL_ADDRESS", dev_env.client.service_client.config.target_host)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", dev_env.client.namespace)
    monkeypatch.setenv("ROLLBACKCTL_TASK_QUEUE", task_queue)
    monkeypatch.setenv("ROLLBACKCTL_ETCD_ENDPOINTS", etcd_server.endpoint)
    monkeypatch.setenv("ROLLBACKCTL_ETCD_PREFIX", prefix)


@pytest.fixture
def cli(cli_env, capsys):
    async def run(*argv: str) -> tuple[int, str]:
        args = build_parser().parse_args(list(argv))
        capsys.readouterr()
        try:
            code = await args.func(args)
        except CliError as e:
            return e.exit_code, str(e)
        return int(code or 0), capsys.readouterr().out
    return run


async def status(client, wid) -> CanaryStatus:
    return await client.get_workflow_handle(wid).query(CanaryWorkflow.status)


async def poll(client, wid, pred, timeout=30.0) -> CanaryStatus:
    return await wait_for_value(lambda: status(client, wid), pred, timeout, f"a status of {wid}", every=0.1)


def wid_of(out: str) -> str:
    return re.search(r"^workflow (canary-phase\d-\d+)$", out, re.M).group(1)


async def test_phase3_cli_promotes_through_four_stages_then_a_fault_rolls_the_next_run_back(
        dev_env, store, sim, core_settings, paging_settings, http, task_queue, cli):
    client = dev_env.client
    async with real_worker(dev_env, store, core_settings, paging_settings, http, task_queue):
        code, out = await cli("canary", "start", "phase3", "--as", "rita", "--time-scale", "86400")
        assert code == 3 and "needs a super_admin" in out and "global_betting_enabled" in out

        code, out = await cli("canary", "start", "phase3", "--as", "alice", "--time-scale", "86400")
        assert code == 0, out
        wid = wid_of(out)
        assert f"/namespaces/default/workflows/{wid}" in out and "time-scale 86400" in out
        code, out = await cli("canary", "start", "phase3", "--as", "alice", "--time-scale", "86400")
        assert code == 4 and f"already running: {wid}" in out

        await poll(client, wid, lambda s: s.part == "gate", timeout=30)
        code, out = await cli("canary", "status", "phase3")
        assert code == 0 and "waiting_gate" in out and "stage 3/4 Target Config" in out and wid in out
        code, out = await cli("canary", "promote", "phase3", "--as", "oscar")
        assert code == 3 and "needs risk_manager" in out
        code, out = await cli("canary", "promote", "phase3", "--as", "rita", "--reason", "demo")
        assert code == 0 and "promote by rita accepted" in out
        res = await client.get_workflow_handle_for(CanaryWorkflow.run, wid).result()
        assert res.status == "passed", res
        await save_history(client.get_workflow_handle(wid), "canary_phase3_passed")
        # Every patch the run asked about is recorded before its first local activity marker (patches_first).
        # Temporal's core may put a local activity's marker in one workflow task and the commands after its
        # result in the next, and it tells a replay of a patch only when it reaches that next task (sdk-core,
        # workflow_machines.rs:
        # "Scan through to the next WFT, searching for any patch / la markers"). A patch decided after the
        # marker then answered False on replay: CI's "Nondeterminism error: Non-deprecated patch marker
        # encountered for change canary-seq-by-worker", from `canary status` on an ended canary.
        markers = [e.marker_recorded_event_attributes.marker_name
                   async for e in client.get_workflow_handle(wid).fetch_history_events()
                   if e.HasField("marker_recorded_event_attributes")]
        first_la = markers.index("core_local_activity")
        assert "core_patch" not in markers[first_la:] and markers.count("core_patch") >= 3, markers
        final = {}
        for st in canary.PHASE3.stages:
            final.update(st.profile)
        assert await values(store, *final) == final
        switches = (await sim.switches())["switches"]
        assert switches["betting_traffic_pct"]["value"] == 100 and switches["auto_mode_switch"]["value"] is True
        audit = [a for a in await store.audit() if a.source == wid]
        assert len(audit) == 4 and all("[time-scale 86400" in a.reason for a in audit)

        # a second canary (a fresh Phase 1: internalization off again) rolls back on an injected fault
        await store.apply(__import__("contracts.changes", fromlist=["x"]).ChangeSetRequest(
            change_id=f"reset-{wid}", actor="alice", reason="test: back to Phase 1",
            changes=[{"switch": k, "value": canary.switches.get(k).default} for k in final]))
        code, out = await cli("canary", "start", "phase3", "--as", "alice", "--time-scale", "86400")
        wid2 = wid_of(out)
        assert wid2 != wid and wid2.endswith(str(int(wid.rsplit("-", 1)[1]) + 1))
        await poll(client, wid2, lambda s: s.stage == 2)
        await sim.inject(error_rate=0.02)
        res = await client.get_workflow_handle_for(CanaryWorkflow.run, wid2).result()
        await sim.clear_faults()
        assert res.status == "rolled_back" and "error_rate=0.02" in res.detail, res
        assert (await values(store, "global_betting_enabled"))["global_betting_enabled"] is False
        rb = [a for a in await store.audit() if a.source == wid2][-1]
        assert "canary rollback" in rb.reason and rb.approved_by == "alice"
        pages = [p for p in await sim.pages() if wid2 in str(p)]
        assert any("ROLLED BACK" in str(p) for p in pages), pages
        code, out = await cli("canary", "status", wid2)
        assert code == 0 and "rolled_back" in out
        code, out = await cli("canary", "pause", "phase3", "--as", "oscar")
        assert code == 4 and "no phase3 canary is running" in out


async def test_cli_pause_extend_resume_abort_and_a_rollback_pauses_the_canary(
        dev_env, store, sim, core_settings, paging_settings, http, task_queue, cli):
    client = dev_env.client
    async with real_worker(dev_env, store, core_settings, paging_settings, http, task_queue):
        # phase 2 at 1/8640: stage 1 lasts 30 s, time enough for the decisions below
        code, out = await cli("canary", "start", "phase2", "--as", "rita", "--time-scale", "8640")
        assert code == 0, out
        wid = wid_of(out)
        await poll(client, wid, lambda s: s.stage == 1 and s.part == "observe")
        assert (await values(store, "routing_mode", "hedge_enabled")) == {"routing_mode": "HL_MODE",
                                                                          "hedge_enabled": False}
        code, out = await cli("canary", "pause", "phase2", "--as", "vic")
        assert code == 3 and "needs on_call" in out
        code, out = await cli("canary", "pause", "phase2", "--as", "oscar", "--reason", "look at HL fills")
        assert code == 0, out
        code, out = await cli("canary", "extend", wid, "--as", "oscar", "--by", "1h")
        assert code == 0, out
        s = await status(client, wid)
        assert s.paused and s.stage_duration.total_seconds() > 3600
        code, out = await cli("canary", "resume", "phase2", "--as", "oscar")
        assert code == 3 and "needs risk_manager" in out
        code, out = await cli("canary", "resume", "phase2", "--as", "rita")
        assert code == 0, out

        # a rollback's checklist runs ops.pause_canaries: it signals every running CanaryWorkflow
        ops = TemporalOps(client)
        for _ in range(50):  # the visibility list catches up with a new workflow in a moment
            said = await ops.pause_canaries("rollback-inc-canary-test")
            if wid in said:
                break
            await asyncio.sleep(0.1)
        assert wid in said
        s = await poll(client, wid, lambda s: s.paused)
        assert s.paused_by == "rollback-inc-canary-test" and "not acted on" in s.waiting_for

        code, out = await cli("canary", "abort", "phase2", "--as", "rita")
        assert code == 2 and "needs a --reason" in out  # README: an empty --reason is bad input
        code, out = await cli("canary", "abort", "phase2", "--as", "rita", "--reason", "cli test over")
        assert code == 0, out
        res = await client.get_workflow_handle_for(CanaryWorkflow.run, wid).result()
    assert res.status == "aborted"
    assert (await values(store, "routing_mode", "hedge_enabled")) == {"routing_mode": "HL_MODE",
                                                                      "hedge_enabled": True}
    last = [a for a in await store.audit() if a.source == wid][-1]
    assert last.actor == "rita" and "canary rollback" in last.reason


async def test_two_starters_racing_get_one_canary(dev_env, store, task_queue, cli_env):
    from rollbackctl.cli.common import switch_store

    inp = CanaryInput(phase="phase2", requested_by="rita", time_scale=8640)
    async with switch_store() as s:
        results = await asyncio.gather(*(start_canary(dev_env.client, s, inp, task_queue) for _ in range(4)),
                                       return_exceptions=True)
        started = [r for r in results if isinstance(r, str)]
        refused = [r for r in results if isinstance(r, CliError)]
        assert len(started) == 1 and len(refused) == 3, results
        assert all(r.exit_code == 4 and started[0] in str(r) for r in refused)
        await dev_env.client.get_workflow_handle(started[0]).terminate("test over")
        nxt = await start_canary(dev_env.client, s, inp, task_queue)
        await dev_env.client.get_workflow_handle(nxt).terminate("test over")
    n = int(started[0].rsplit("-", 1)[1])
    assert nxt == f"canary-phase2-{n + 1}"
