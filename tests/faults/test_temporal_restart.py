"""The Temporal dev server SIGKILLed and started again on its --db-filename during a rollback's
observation timer: the worker subprocess rides it out, the workflow resumes and finishes."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest

from manual.rollback import Durations, Scope, Severity
from tests.support.infra import Workers, connect
from tests.support.fixtures_sim import apply_and_wait
from tests.support.wf_helpers import incident, poll_progress, values
from contracts.progress import Decision
from workflows.models import RollbackInput
from workflows.rollback import RollbackWorkflow, rollback_workflow_id

pytestmark = pytest.mark.timeout(300)


async def test_rollback_resumes_after_temporal_restarts_during_observation(own_temporal, worker_env, tmp_path, store,
                                                                           sim, task_queue):
    ws = Workers(tmp_path / "workers", {**worker_env, "TEMPORAL_ADDRESS": own_temporal.address})
    try:
        before = {"global_betting_enabled": True, "routing_mode": "NORMAL_MODE"}
        await apply_and_wait(sim, store, **before)
        client = await connect(own_temporal.address)
        w = ws.start("a")
        await ws.wait_polling(client, task_queue, w)
        inc = incident()
        d = Durations(observe=timedelta(seconds=8), check_interval=timedelta(seconds=2),
                      restore_observe=timedelta(seconds=1), confirm_sla=timedelta(minutes=10))
        h = await client.start_workflow(
            RollbackWorkflow.run,
            RollbackInput(incident_id=inc, summary="fills failing", severity=Severity.CRITICAL, scope=Scope.CROSS,
                          requested_by="oscar", reason="error rate", durations=d),
            id=rollback_workflow_id(inc), task_queue=task_queue)
        p = await poll_progress(h, lambda p: p.current_step == "observe" and len(p.checks) >= 1, 30)
        checks_before = len(p.checks)

        t0 = time.monotonic()
        own_temporal.kill()  # SIGKILL: whatever was in memory is gone; the db file is what is left
        killed_for = time.monotonic() - t0
        # The outage's length is the fault itself (not a synchronisation): longer than the check
        # interval, so that the observation's timer comes due while the server is down.
        await asyncio.sleep(d.check_interval.total_seconds() + 1)
        await asyncio.to_thread(own_temporal.start)
        down_s = time.monotonic() - t0
        back = time.monotonic()
        p = await poll_progress(h, lambda p: len(p.checks) > checks_before, 60)
        resumed_s = time.monotonic() - back
        assert w.alive(), f"the worker died while Temporal was down:\n{w.text()[-2000:]}"

        p = await poll_progress(h, lambda p: p.awaiting is not None and p.awaiting.expects == "confirm", 60)
        obs = next(s for s in p.history if s.name == "observe")
        assert obs.outcome == "ok"
        await h.execute_update(RollbackWorkflow.confirm, Decision(actor="oscar"))
        await poll_progress(h, lambda p: p.awaiting is not None and p.awaiting.expects == "fix")
        await h.execute_update(RollbackWorkflow.fix, Decision(actor="alice", reference="r2", tests_passed=True))
        res = await h.result()
        assert res.status == "restored", res
        assert await values(store, *before) == before
        audit = [a for a in await store.audit() if a.source == h.id]
        assert len(audit) == len({a.change_id for a in audit}) == 3
        print(f"\nTemporal SIGKILLed during the observation ({killed_for:.2f} s to die), down {down_s:.1f} s "
              f"(restart on its db file); the observation resumed {resumed_s:.2f} s after the server was back; "
              f"observation step {obs.started_at:%H:%M:%S}-{obs.ended_at:%H:%M:%S} for {d.observe.seconds} s observed")
    finally:
        ws.close()
