"""CanaryWorkflow under the time-skipping server, with the real switch store in etcd and stand-in
trading-core and paging activities (tests/support/standins.py). Days pass with `env.sleep`; Updates are
sent while the workflow idles in a wait (the time-skipping server does not skip while an Update
result is awaited)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from temporalio.api.enums.v1 import EventType

from core.temporal_client import run_histories
from manual import canary
from tests.support.canary_helpers import (BAD, DAY, H, P2, P3, coarse, decide, off_beat, progress, refused, start,
                                          standins, status, terminate_leftovers, touched_snapshot, until)
from tests.support.wf_helpers import PagedWorker, audit_of, make_worker, save_history, values
from workflows.canary import CanaryWorkflow


@pytest.fixture(autouse=True)
async def _terminate_leftovers(ts_env):
    yield
    await terminate_leftovers(ts_env)


async def test_full_phase3_passes_every_stage_in_order_with_bounded_history(ts_env, store, task_queue):
    si = standins()
    t0 = time.monotonic()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue)
        s = await until(ts_env, h.id, lambda s: s.stage == 3, step=DAY)
        # each stage's profile is in etcd while the stage runs
        assert await values(store, "betting_traffic_pct", "max_internal_exposure_usd") == {
            "betting_traffic_pct": 50, "max_internal_exposure_usd": 500_000}
        s = await until(ts_env, h.id, lambda s: s.part == "gate", step=2 * H)
        assert s.status == "waiting_gate" and "risk_manager" in s.waiting_for
        # the gate before Full Open waits for a risk manager: on-call is refused, time alone does not promote
        assert "needs risk_manager" in await refused(ts_env, h.id, "promote", "oscar")
        assert "at stage 3's gate" in await refused(ts_env, h.id, "extend", "rita", extend_by=H)
        pages = len(si.pages)
        await ts_env.sleep(9 * H)
        s = await status(ts_env, h.id)
        p = await progress(ts_env, h.id)
        assert s.stage == 3 and s.part == "gate" and p.awaiting.repages >= 2
        assert len(si.pages) > pages and "UNANSWERED" in si.pages[-1]["summary"]
        assert (await values(store, "betting_traffic_pct"))["betting_traffic_pct"] == 50
        await decide(ts_env, h.id, "promote", "rita", reason="stage 3 clean")
        res = await h.result()
    wall = time.monotonic() - t0
    assert res.status == "passed", res
    assert [r.outcome for r in res.stages] == ["passed", "passed", "promoted", "passed"]
    # every stage's profile, in order, one transaction each, under alice's approval, source = workflow id
    audit = await audit_of(store, h.id)
    assert [{c.switch: c.new for c in a.changes} for a in audit] == [st.profile for st in canary.PHASE3.stages]
    assert all(a.approved_by == "alice" and a.authority == "plan" and a.actor == "alice" for a in audit)
    assert all(a.change_id.startswith(h.id) for a in audit)
    final = {}
    for st in canary.PHASE3.stages:
        final.update(st.profile)
    assert await values(store, *final) == final
    hists = await run_histories(ts_env.client, h.id, h.first_execution_run_id)
    sizes = [len(x.events) for x in hists]
    nbytes = [len(x.to_json()) for x in hists]
    print(f"\nfull phase3: {wall:.1f}s wall, {len(hists)} runs, {sum(sizes)} events, {sum(nbytes)} bytes JSON, "
          f"largest run {max(sizes)} events / {max(nbytes)} bytes")
    assert len(hists) > 1 and res.runs == len(hists)
    assert max(sizes) <= 2000 + 20  # HISTORY_LIMIT + the events after the last check of a run
    assert wall < 60


async def test_error_rate_on_day_5_rolls_back_to_the_snapshot_and_pages(ts_env, store, task_queue):
    si = standins()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue)
        await until(ts_env, h.id, lambda s: s.stage == 2, step=12 * H)
        await ts_env.sleep(DAY)  # day 5
        assert (await status(ts_env, h.id)).stage == 2
        si.health["error_rate"] = 0.02
        injected = await ts_env.get_current_time()
        res = await h.result()
        p = await progress(ts_env, h.id)
    assert res.status == "rolled_back", res
    assert "stage 2 (Low Risk)" in res.detail and "error_rate=0.02" in res.detail
    # 3 failed checks 5 minutes apart: back within 15 minutes of the fault
    assert res.stages[-1].ended_at - injected <= timedelta(minutes=16)
    snap = touched_snapshot(p)
    assert await values(store, *snap) == snap
    audit = await audit_of(store, h.id)
    assert len(audit) == 3 and "canary rollback" in audit[-1].reason
    assert audit[-1].approved_by == "alice" and {c.switch for c in audit[-1].changes} == {
        k for k in canary.PHASE3.touched() if snap[k] != (canary.PHASE3.stages[0].profile | canary.PHASE3.stages[1].profile)[k]}
    crit = [pg for pg in si.pages if pg["severity"] == "critical"]
    assert crit and "ROLLED BACK" in crit[-1]["summary"]


async def test_one_flaky_check_does_not_roll_back_three_in_a_row_do(ts_env, store, task_queue):
    si = standins()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, plan=P3)
        await until(ts_env, h.id, lambda s: s.stage == 1 and len(s.recent_checks) >= 3, step=H)
        for bad_reads in (1, 2):
            si.next = [BAD] * bad_reads
            s = await until(ts_env, h.id, lambda s: not si.next and s.recent_checks[-1].ok, step=H)
            assert s.status == "running" and s.failed_in_a_row == 0
            assert sum(not c.ok for c in s.recent_checks[-4:]) == bad_reads
        si.next = [BAD] * 3
        res = await h.result()
        await save_history(h, "canary_phase3_rolled_back")
    assert res.status == "rolled_back" and "3 consecutive failed checks" in res.detail, res


async def test_pause_across_a_stage_boundary_holds_the_stage(ts_env, store, task_queue):
    si = standins()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, plan=P3)
        await until(ts_env, h.id, lambda s: s.stage == 1 and s.time_left is not None and s.time_left < 12 * H, step=6 * H)
        assert "needs on_call" in await refused(ts_env, h.id, "pause", "vic")
        await decide(ts_env, h.id, "pause", "oscar", reason="HL maintenance window tonight")
        frozen = (await status(ts_env, h.id)).time_left
        await ts_env.sleep(2 * DAY)  # well past the stage's end
        s = await status(ts_env, h.id)
        assert s.stage == 1 and s.status == "paused" and s.time_left == frozen and "oscar" in s.waiting_for
        assert (await values(store, "betting_traffic_pct"))["betting_traffic_pct"] == 5  # stage 2 not applied
        assert "already paused" in await refused(ts_env, h.id, "pause", "oscar")
        assert "not paused" not in await refused(ts_env, h.id, "resume", "oscar")  # role, not moment
        assert "is paused: resume it" in await refused(ts_env, h.id, "promote", "rita")
        resumed = await ts_env.get_current_time()
        await decide(ts_env, h.id, "resume", "rita")
        s = await until(ts_env, h.id, lambda s: s.stage == 2, step=2 * H)
        assert s.stage_log[1].started_at - resumed >= frozen - timedelta(minutes=1)
        assert (await values(store, "betting_traffic_pct"))["betting_traffic_pct"] == 20
        await decide(ts_env, h.id, "abort", "rita", reason="test over")
        res = await h.result()
    assert res.status == "aborted"


async def test_promote_abort_extend_by_role_and_moment(ts_env, store, task_queue):
    si = standins()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, plan=P3)
        s = await until(ts_env, h.id, lambda s: s.stage == 1 and s.part == "observe", step=H)
        assert "oscar is on_call; promote needs risk_manager" in await refused(ts_env, h.id, "promote", "oscar")
        assert "oscar is on_call; abort needs risk_manager" in await refused(ts_env, h.id, "abort", "oscar",
                                                                              reason="x")
        assert "vic is viewer" in await refused(ts_env, h.id, "extend", "vic", extend_by=DAY)
        assert "not an operator" in await refused(ts_env, h.id, "pause", "mallory")
        assert "positive --by" in await refused(ts_env, h.id, "extend", "oscar")
        await off_beat(ts_env, h.id)
        before = (await status(ts_env, h.id)).time_left
        await decide(ts_env, h.id, "extend", "oscar", extend_by=DAY, reason="weekend")
        s = await status(ts_env, h.id)
        assert abs(s.time_left - before - DAY) < timedelta(minutes=1) and s.extensions == ["stage 1 +1d by oscar: weekend"]
        await decide(ts_env, h.id, "promote", "rita", reason="clean so far")
        s = await until(ts_env, h.id, lambda s: s.stage == 2, step=timedelta(minutes=1))
        assert s.stage_log[0].outcome == "promoted" and "rita" in s.stage_log[0].detail
        assert (await values(store, "per_symbol_betting"))["per_symbol_betting"] == ["BTC", "ETH"]
        assert "needs a --reason" in await refused(ts_env, h.id, "abort", "rita")
        await decide(ts_env, h.id, "abort", "rita", reason="ETH book too thin")
        res = await h.result()
        p = await progress(ts_env, h.id)
        await save_history(h, "canary_phase3_extended_promoted_aborted")
    assert res.status == "aborted" and "aborted by rita: ETH book too thin" in res.detail
    snap = touched_snapshot(p)
    assert await values(store, *snap) == snap
    last = (await audit_of(store, h.id))[-1]
    assert last.actor == "rita" and last.approved_by == "alice" and "canary rollback" in last.reason
    assert "aborted by rita" in last.reason


def uncached_worker(env, store, si, tq):
    """A worker without a workflow cache: each task replays the history. (The time-skipping test server
    keeps sending a stopped worker's workflow tasks and queries to its sticky queue; a real server moves
    them to the normal queue after sticky_queue_schedule_to_start_timeout.)"""
    from activities.switch_activities import SwitchActivities
    from workflows.registry import WORKFLOWS

    sa = SwitchActivities(store)
    return PagedWorker(env.client, task_queue=tq, workflows=WORKFLOWS, max_cached_workflows=0, standins=si,
                  activities=[*sa.methods(), *si.methods()])


async def test_worker_restart_mid_stage_resumes(ts_env, store, task_queue):
    si = standins()
    async with uncached_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, plan=P3)
        await until(ts_env, h.id, lambda s: s.stage == 1 and s.time_left is not None and s.time_left < 2 * DAY, step=6 * H)
    # (no time passes without a worker: the time-skipping server does not skip over a pending task)
    reads = si.health_reads
    si2 = standins()
    async with make_worker(ts_env, store, si2, task_queue):
        s = await until(ts_env, h.id, lambda s: s.stage == 2, step=6 * H)
        assert si.health_reads == reads and si2.health_reads > 0  # the new worker did the checks
        assert s.stage_log[0].outcome == "passed"
        assert (await values(store, "betting_traffic_pct"))["betting_traffic_pct"] == 20
        await decide(ts_env, h.id, "abort", "rita", reason="test over")
        assert (await h.result()).status == "aborted"


async def test_continue_as_new_carries_pause_clock_and_decisions(ts_env, store, task_queue):
    si = standins()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, plan=coarse(canary.PHASE3, timedelta(minutes=30)), history_limit=150)
        await until(ts_env, h.id, lambda s: s.stage == 1 and s.run >= 2, step=6 * H)
        await decide(ts_env, h.id, "extend", "oscar", extend_by=H)
        await decide(ts_env, h.id, "pause", "oscar", reason="hold")
        frozen = (await status(ts_env, h.id)).time_left
        run = (await status(ts_env, h.id)).run
        await ts_env.sleep(2 * DAY)  # checks go on while paused: several continue-as-new
        s = await status(ts_env, h.id)
        assert s.run > run + 1 and s.paused and s.time_left == frozen and s.extensions
        p = await progress(ts_env, h.id)
        assert [d.kind for d in p.decisions][-2:] == ["extend", "pause"]
        await decide(ts_env, h.id, "resume", "rita")
        await until(ts_env, h.id, lambda s: s.stage == 2, step=6 * H)
        await decide(ts_env, h.id, "abort", "rita", reason="test over")
        res = await h.result()
    assert res.status == "aborted" and res.runs == len(await run_histories(ts_env.client, h.id,
                                                                           h.first_execution_run_id))
    # Every run but the last continued as new within one check of the limit. The last run was within it
    # when the abort arrived; the abort's rollback (a bounded tail, not growing with time) then ends it, and
    # may pass the limit: a run is never continued as new in the middle of a rollback.
    *continued, last = await run_histories(ts_env.client, h.id, h.first_execution_run_id)
    for hist in continued:
        assert hist.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
        assert len(hist.events) <= 150 + 20
    abort_at = max(i for i, e in enumerate(last.events)
                   if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED)
    assert abort_at <= 150 + 20 and len(last.events) - abort_at <= 60, (abort_at, len(last.events))
    first = await ts_env.client.get_workflow_handle(h.id, run_id=h.first_execution_run_id).fetch_history()
    if __import__("os").environ.get("RECORD_HISTORIES") == "1":
        from tests.support.wf_helpers import HISTORIES
        (HISTORIES / "canary_phase3_continued_as_new.json").write_text(first.to_json())


async def test_phase3_needs_a_super_admin_to_start(ts_env, store, task_queue):
    si = standins()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, by="rita")
        res = await h.result()
    assert res.status == "refused" and "global_betting_enabled" in res.detail and "super_admin" in res.detail
    assert await audit_of(store, h.id) == []


async def test_phase2_routing_failure_rolls_back_at_once(ts_env, store, task_queue):
    si = standins()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, phase="phase2", by="rita", plan=P2)
        await until(ts_env, h.id, lambda s: s.stage == 1 and len(s.recent_checks) >= 2, step=H)
        assert await values(store, "routing_mode", "hedge_enabled") == {"routing_mode": "HL_MODE",
                                                                        "hedge_enabled": False}
        si.next = [{"hl_routing_failures": 1}]
        res = await h.result()
        p = await progress(ts_env, h.id)
    assert res.status == "rolled_back" and "hl_routing_failures=1" in res.detail, res
    assert sum(not c.ok for c in p.checks) == 1  # one failure was enough
    snap = touched_snapshot(p, canary.PHASE2)
    assert await values(store, *snap) == snap
    assert (await audit_of(store, h.id))[-1].approved_by == "rita"


async def test_phase2_risk_calc_precision_mismatch_rolls_back(ts_env, store, task_queue):
    si = standins()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, phase="phase2", by="rita", plan=P2)
        s = await until(ts_env, h.id, lambda s: s.stage == 2 and len(s.recent_checks) >= 4, step=6 * H)
        assert s.recent_checks[-1].ok  # positions give the core's -$120,000
        si.exposure["symbols"]["BTC"]["net_exposure_usd"] = -100_000.0
        res = await h.result()
        await save_history(h, "canary_phase2_precision_rolled_back")
    assert res.status == "rolled_back", res
    assert "exposure_mismatches=1" in res.detail and "BTC: core says $-100,000.00" in res.detail


async def test_a_rollback_pauses_the_canary_and_breaches_wait_for_a_human(ts_env, store, task_queue):
    si = standins()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, plan=P3)
        await until(ts_env, h.id, lambda s: s.stage == 1 and len(s.recent_checks) >= 2, step=H)
        await off_beat(ts_env, h.id)
        await h.signal(CanaryWorkflow.pause_for_rollback, "rollback-inc-42")
        si.health["error_rate"] = 0.05
        await ts_env.sleep(6 * H)
        s = await status(ts_env, h.id)
        assert s.status == "paused" and s.paused_by == "rollback-inc-42" and s.failed_in_a_row >= 3
        assert "not acted on" in s.waiting_for
        assert "needs a --reason" in await refused(ts_env, h.id, "resume", "rita")
        await decide(ts_env, h.id, "resume", "rita", reason="rollback-inc-42 closed; canary config is what failed")
        res = await h.result()
        await save_history(h, "canary_phase3_paused_by_rollback")
    assert res.status == "rolled_back", res


async def test_pause_and_resume_at_a_gate_then_promote(ts_env, store, task_queue):
    """Decisions that are not the gate's answer (pause, resume) must not take the place of one: after a
    pause and a resume at the gate, the promote is still what the gate waits for, and it is accepted."""
    si = standins()
    async with make_worker(ts_env, store, si, task_queue):
        h = await start(ts_env, task_queue, plan=P3)
        await until(ts_env, h.id, lambda s: s.part == "gate", step=6 * H)
        await decide(ts_env, h.id, "pause", "oscar", reason="HL maintenance window")
        assert (await status(ts_env, h.id)).status == "paused"
        await decide(ts_env, h.id, "resume", "rita")
        s = await status(ts_env, h.id)
        assert s.status == "waiting_gate" and s.part == "gate"
        await decide(ts_env, h.id, "promote", "rita", reason="stage 3 clean")
        s = await until(ts_env, h.id, lambda s: s.stage == 4 or s.part == "done", step=H)
        await decide(ts_env, h.id, "abort", "rita", reason="test over")
        res = await h.result()
    assert res.status == "aborted" and [r.outcome for r in res.stages][:3] == ["passed", "passed", "promoted"]
