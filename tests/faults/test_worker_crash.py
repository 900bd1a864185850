"""Worker SIGKILL at each step of a rollback and a degradation: a standby worker finishes the job.

Real processes: `python -m worker` subprocesses (settings from the environment only) on a Temporal
dev server with its state in a file, the session etcd and the trading-core simulator. Every
worker talks to etcd and Temporal through its own proxy, which is how a crash point is hit exactly
(tests/support/crew.py): no test hook in the product.

What must hold after each crash: final switch values right, exactly one audit record per change
set (change ids are idempotent), no trading-core action performed twice (GET /sim/actions), and
the workflow finishes. The takeover times (SIGKILL -> the standby starts the workflow's next task)
are printed; run with -s to see them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import pytest
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from manual.rollback import Durations, Scope, Severity
from tests.support.crew import Crew, event_counts, patched, takeover_s
from tests.support.waits import wait_until
from tests.support.fixtures_sim import apply_and_wait
from tests.support.wf_helpers import audit_of, awaiting, incident, poll_progress, save_history, values
from workflows.degradation import DegradationWorkflow, degrade_workflow_id
from contracts.progress import Decision
from workflows.models import DegradeInput, RollbackInput
from workflows.rollback import RollbackWorkflow, rollback_workflow_id

pytestmark = pytest.mark.timeout(420)

QUICK = Durations(decision_window=timedelta(minutes=10), observe=timedelta(seconds=8),
                  check_interval=timedelta(milliseconds=500), restore_observe=timedelta(seconds=2),
                  confirm_sla=timedelta(minutes=10))




async def audited(store, change_id: str) -> bool:
    return any(a.change_id == change_id for a in await store.audit())


def report(title: str, rows: list[tuple[str, float]]) -> None:
    print(f"\n{title}")
    for what, s in rows:
        print(f"  {what:<58} {s:6.2f} s")


async def test_rollback_survives_a_worker_sigkill_at_every_step(tclient, temporal, etcd_server, store, sim, workers,
                                                                proxies, task_queue):
    """checklist -> mid change set -> observation -> awaiting confirmation -> mid restore change set."""
    before = {"global_betting_enabled": True, "routing_mode": "NORMAL_MODE", "betting_traffic_pct": 100}
    await apply_and_wait(sim, store, **before)
    crew = Crew(workers, proxies, etcd_server.endpoint, temporal.address, tclient, task_queue)
    inc = incident()
    wid = rollback_workflow_id(inc)
    rows: list[tuple[str, float]] = []

    a = await crew.start("a")
    h = await tclient.start_workflow(
        RollbackWorkflow.run,
        RollbackInput(incident_id=inc, summary="balances disagree", severity=Severity.DATA, scope=Scope.CROSS,
                      requested_by="oscar", reason="data inconsistency", durations=QUICK),
        id=wid, task_queue=task_queue, id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE)
    await poll_progress(h, awaiting("proceed_or_cancel"))

    # 1. checklist: `proceed` -> a's snapshot read is held at its etcd proxy -> SIGKILL a.
    b, c = crew.spawn("b", hold_etcd=True), crew.spawn("c", hold_etcd=True)
    await crew.ready(b), await crew.ready(c)
    a.etcd.hold()
    proceed = asyncio.create_task(h.execute_update(RollbackWorkflow.proceed, Decision(actor="oscar")))
    await crew.holder([a])
    killed = a.w.sigkill()
    assert not await audited(store, f"{wid}:apply"), "nothing may be written before the change set"

    # 2. mid change set: whichever of b / c takes the task over stops at etcd; its transaction then
    #    commits while its link to Temporal is frozen; SIGKILL it once etcd shows the audit record.
    first = await crew.holder([b, c], timeout=60)
    standby = c if first is b else b
    standby.etcd.open()
    rows.append(("checklist: SIGKILL -> successor starts the task", await takeover_s(h, killed, first.w)))
    first.temporal.freeze()
    first.etcd.open()
    await wait_until(lambda: audited(store, f"{wid}:apply"), 20, "the rollback's audit record")
    killed = first.w.sigkill()
    first.temporal.cut()
    assert (await proceed).accepted, "the proceed Update outlived two worker crashes"
    await poll_progress(h, lambda p: p.current_step == "observe" and len(p.checks) >= 1, 60)
    rows.append(("mid change set: SIGKILL -> successor starts the task", await takeover_s(h, killed, standby.w)))
    assert await values(store, *before) == {"global_betting_enabled": False, "routing_mode": "HL_MODE",
                                            "betting_traffic_pct": 100}

    # 3. observation: SIGKILL the worker between health checks; the observation goes on elsewhere.
    d = await crew.start("d")
    p = await h.query(RollbackWorkflow.progress)
    assert p.current_step == "observe"
    killed = standby.w.sigkill()
    p = await poll_progress(h, awaiting("confirm"), 60)
    rows.append(("observation: SIGKILL -> successor starts the task", await takeover_s(h, killed, d.w)))
    observe = next(s for s in p.history if s.name == "observe")
    assert observe.outcome == "ok", observe

    # 4. awaiting confirmation: SIGKILL, then confirm at once: the confirmation reaches the successor.
    e = await crew.start("e", hold_etcd=True)
    killed = d.w.sigkill()
    ack = await h.execute_update(RollbackWorkflow.confirm, Decision(actor="oscar", reason="holds"))
    assert ack.accepted
    rows.append(("awaiting confirmation: SIGKILL -> confirm accepted", await takeover_s(h, killed, e.w)))
    await poll_progress(h, awaiting("fix"))

    # 5. restore: `fix` -> e's restore change set commits with its Temporal link frozen -> SIGKILL e.
    f = await crew.start("f")
    fix = asyncio.create_task(h.execute_update(RollbackWorkflow.fix, Decision(actor="alice", reference="pr-9",
                                                                              tests_passed=True)))
    await crew.holder([e])
    e.temporal.freeze()
    e.etcd.open()
    await wait_until(lambda: audited(store, f"{wid}:restore_5pct"), 20, "the 5% restore's audit record")
    killed = e.w.sigkill()
    e.temporal.cut()
    assert (await fix).accepted
    res = await h.result()
    rows.append(("restore: SIGKILL -> successor starts the task", await takeover_s(h, killed, f.w)))
    report(f"rollback {wid}: takeover after SIGKILL (worker start-up {min(crew.startup_s):.1f}-"
           f"{max(crew.startup_s):.1f} s)", rows)

    assert res.status == "restored", res
    assert await values(store, *before) == before
    recs = await audit_of(store, wid)
    ids = Counter(r.change_id for r in recs)
    assert ids == {f"{wid}:apply": 1, f"{wid}:restore_5pct": 1, f"{wid}:restore_full": 1}, ids
    assert [r.attempts for r in recs] == [1, 1, 1]
    assert await sim.actions() == []  # HL was up: this rollback had no trading-core action
    # The crash after the transaction really happened: the successor's snapshot was read after the
    # rollback's own write, and the workflow put the audit record's old values back (runner.py).
    assert await patched(h, "snapshot-before-own-write")
    await save_history(h, "rollback_crash_after_own_write_restored")  # the patch's new branch, for replay
    counts = await event_counts(h)
    print(f"  history: {counts.get('WORKFLOW_TASK_TIMED_OUT', 0)} workflow task timeouts, "
          f"{counts.get('ACTIVITY_TASK_TIMED_OUT', 0)} activity timeouts")


async def test_degradation_level_2_survives_sigkills_around_its_change_set_and_core_actions(
        tclient, temporal, etcd_server, store, sim, workers, proxies, task_queue):
    """Level 2: SIGKILL after its change set committed; after a core action was performed but before
    its answer arrived (the answer is held by the simulator); and again in the undo actions."""
    crew = Crew(workers, proxies, etcd_server.endpoint, temporal.address, tclient, task_queue)
    inc = incident()
    wid = degrade_workflow_id(2, inc)
    level2 = {"global_betting_enabled": False, "routing_mode": "HL_MODE", "liquidation_enabled": False}
    before = await values(store, *level2)
    rows: list[tuple[str, float]] = []
    lost_answer = {"api_timeout": True, "api_timeout_s": 15, "api_fault_after": True,
                   "api_paths": ["/v1/actions/"], "api_fault_count": 1}

    # 1. mid change set: the first workflow task (roster, checklist, Level 2's change set) stops at
    #    a's etcd proxy; the transaction commits with a's Temporal link frozen; SIGKILL a.
    a = await crew.start("a", hold_etcd=True)
    h = await tclient.start_workflow(
        DegradationWorkflow.run,
        DegradeInput(level=2, incident_id=inc, requested_by="oscar", reason="liquidation broken", durations=QUICK),
        id=wid, task_queue=task_queue)
    await crew.holder([a])
    b = await crew.start("b")
    a.temporal.freeze()
    a.etcd.open()
    await wait_until(lambda: audited(store, f"{wid}:apply_level_2"), 20, "Level 2's audit record")
    await sim.inject(lost_answer)  # for b's first core action
    killed = a.w.sigkill()
    a.temporal.cut()

    # 2. b takes over and sends pause_hl_opens: the simulator performs it and holds the answer; SIGKILL b.
    acts = await sim.wait_for(sim.actions, lambda x: len(x) >= 1, 60, what="pause_hl_opens performed")
    rows.append(("mid change set: SIGKILL -> successor starts the task", await takeover_s(h, killed, b.w)))
    killed = b.w.sigkill()
    assert [x["action"] for x in acts] == ["pause_hl_opens"]
    c = await crew.start("c")
    p = await poll_progress(h, awaiting("confirm"), 60)
    rows.append(("core action, answer lost: SIGKILL -> successor starts the task", await takeover_s(h, killed, c.w)))
    assert next(s for s in p.history if s.name == "level_2_actions").detail == "pause_hl_opens, pause_large_withdrawals"
    await h.execute_update(DegradationWorkflow.confirm, Decision(actor="oscar"))
    await poll_progress(h, awaiting("fix"))

    # 3. the undo: resume_hl_opens performed, its answer held; SIGKILL c; d finishes the restore.
    await sim.inject(lost_answer)
    fix = asyncio.create_task(h.execute_update(DegradationWorkflow.fix, Decision(actor="sam", reference="liq-fix",
                                                                                 tests_passed=True)))
    await sim.wait_for(sim.actions, lambda x: len(x) >= 3, 20, what="resume_hl_opens performed")
    assert (await fix).accepted
    killed = c.w.sigkill()
    d = await crew.start("d")
    res = await h.result()
    rows.append(("undo core action, answer lost: SIGKILL -> successor starts the task",
                 await takeover_s(h, killed, d.w)))
    report(f"degradation {wid}: takeover after SIGKILL", rows)

    assert res.status == "restored", res
    assert await values(store, *level2) == before
    ids = Counter(r.change_id for r in await audit_of(store, wid))
    assert ids == {f"{wid}:apply_level_2": 1, f"{wid}:restore": 1}, ids
    acts = await sim.actions()
    assert [(x["action"], x["body"]) for x in acts] == [
        ("pause_hl_opens", {}), ("pause_large_withdrawals", {"above_usd": 10_000}),
        ("resume_hl_opens", {}), ("resume_large_withdrawals", {})], acts
    assert len({x["idempotency_key"] for x in acts}) == 4
    # the retries after each lost answer reached the core with the same key: answered, not redone
    replayed = [ln for w in (c, d) for ln in w.w.json_lines() if "replayed: done before" in str(ln.get("event", ""))]
    assert len(replayed) == 2, replayed
    assert await patched(h, "snapshot-before-own-write")


async def test_canary_survives_sigkills_in_its_first_change_set_and_its_observation(
        tclient, temporal, etcd_server, store, sim, workers, proxies, task_queue):
    """A Phase 2 canary (14400x faster): SIGKILL right after its first stage's change set committed
    (the Phase 1 snapshot is read again by the successor, after that write), then during the stage's
    observation; an abort then puts back the Phase 1 snapshot, the values from before the canary."""
    from workflows.canary import CanaryWorkflow
    from workflows.canary_models import CanaryDecision, CanaryInput

    before = {"routing_mode": "NORMAL_MODE", "betting_traffic_pct": 100, "hedge_enabled": True,
              "auto_mode_switch": False}
    await apply_and_wait(sim, store, **before)
    crew = Crew(workers, proxies, etcd_server.endpoint, temporal.address, tclient, task_queue)
    wid = f"canary-phase2-{incident()}"
    rows: list[tuple[str, float]] = []

    a = await crew.start("a", hold_etcd=True)
    h = await tclient.start_workflow(CanaryWorkflow.run, CanaryInput(phase="phase2", requested_by="rita",
                                                                     reason="fault test", time_scale=14400),
                                     id=wid, task_queue=task_queue)
    await crew.holder([a])
    b = await crew.start("b")
    a.temporal.freeze()
    a.etcd.open()
    await wait_until(lambda: audited(store, f"{wid}:s1_apply_full_hl_routing"), 20, "stage 1's audit record")
    killed = a.w.sigkill()
    a.temporal.cut()
    st = await wait_until(lambda: _canary_at(h, CanaryWorkflow, 1, "observe"), 60, "stage 1 observing")
    rows.append(("mid stage change set: SIGKILL -> successor starts the task", await takeover_s(h, killed, b.w)))
    assert await values(store, *before) == {"routing_mode": "HL_MODE", "betting_traffic_pct": 0,
                                            "hedge_enabled": False, "auto_mode_switch": False}

    c = await crew.start("c")
    killed = b.w.sigkill()
    await h.execute_update(CanaryWorkflow.abort, CanaryDecision(actor="rita", reason="fault test over"))
    res = await h.result()
    rows.append(("stage observation: SIGKILL -> abort accepted", await takeover_s(h, killed, c.w)))
    report(f"canary {wid}: takeover after SIGKILL", rows)
    assert res.status == "aborted", res
    assert await values(store, *before) == before, "the abort did not put back the Phase 1 snapshot"
    ids = Counter(r.change_id for r in await audit_of(store, wid))
    assert ids[f"{wid}:s1_apply_full_hl_routing"] == 1 and all(n == 1 for n in ids.values()), ids
    assert await patched(h, "snapshot-before-own-write")
    assert st.stage == 1


async def _canary_at(h, wf, stage: int, part: str):
    st = await h.query(wf.status)
    return st if st.stage == stage and st.part == part else None
