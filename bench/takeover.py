"""Worker SIGKILL -> a standby worker takes over the running step (issue 21, item 5).

Two `python -m worker` processes poll the stack's task queue (the stack's own and a standby started
here, as production runs them). A critical rollback (drill, signed) is in its observation step, a
health check every 250 ms. The worker that completed the workflow's last task (its identity,
`pid@host`, is in the history) is SIGKILLed at a random moment of the check interval; the takeover
is the time from the kill to the first workflow task completed by another worker (the history's
event time). Then the killed worker is replaced, so every kill finds a standby.

What it is made of: the workflow's next task goes to the dead worker's sticky queue first; after
`sticky_queue_schedule_to_start_timeout` (worker.py: 1 s; the SDK's default is 10 s) the server
hands it to the shared queue, where the standby replays the history and goes on. A kill that lands
inside a workflow task (a local activity running) waits for that task's timeout (10 s) instead:
counted as `mid_task`.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta

from temporalio.api.enums.v1 import TimeoutType

from bench.stack import BenchStack
from bench.stats import summary
from contracts.progress import Progress
from core import procs
from core.temporal_client import connect
from manual.rollback import Durations, Scope, Severity
from rollbackctl import devstack
from workflows.models import RollbackInput
from workflows.rollback import RollbackWorkflow

START_TO_CLOSE = TimeoutType.TIMEOUT_TYPE_START_TO_CLOSE
OBSERVE = Durations(observe=timedelta(minutes=10), check_interval=timedelta(milliseconds=250))


def _spawn_standby(st: BenchStack, n: int, **extra_env: str) -> subprocess.Popen:
    log = st.dir / f"standby-{n}.log"
    env = {**os.environ, **st.env, "ROLLBACKCTL_EMERGENCY_LISTEN": "", "ROLLBACKCTL_METRICS_LISTEN": "",
           "ROLLBACKCTL_SDK_METRICS_LISTEN": "", **extra_env}
    p = procs.spawn([sys.executable, "-m", "worker"], log, env=env)
    deadline = time.monotonic() + 60
    while "worker started" not in (log.read_text(errors="replace") if log.exists() else ""):
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"standby worker did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    return p


async def _last_task_identity(handle) -> str:
    hist = await handle.fetch_history()
    ids = [ev.workflow_task_completed_event_attributes.identity for ev in hist.events
           if ev.HasField("workflow_task_completed_event_attributes")]
    return ids[-1]


async def run(st: BenchStack, kills: int = 10) -> dict:
    client = await connect(st.temporal)
    workers: dict[int, subprocess.Popen | None] = {st.pid("worker"): None}  # pid -> Popen (None: the stack's)
    sb = _spawn_standby(st, 0)
    workers[sb.pid] = sb
    takeovers: list[float] = []
    mid_task = 0
    try:
        for i in range(kills):
            inc = f"bench-takeover-{uuid.uuid4().hex[:8]}"
            wid = f"rollback-{inc}"
            inp = st.sign_start(RollbackInput(incident_id=inc, summary="bench", severity=Severity.CRITICAL,
                                              scope=Scope.CROSS, requested_by="oscar", reason="benchmark",
                                              drill=True, durations=OBSERVE), "rollback.start", wid)
            h = await client.start_workflow(RollbackWorkflow.run, inp, id=wid, task_queue=st.temporal.task_queue)
            deadline = time.monotonic() + 30
            while True:  # observing, a few checks in
                p = await h.query("progress", result_type=Progress)
                if p.current_step == "observe" and len(p.checks) >= 3:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{wid} never reached its observation: {p.current_step}")
                await asyncio.sleep(0.05)
            victim = await _last_task_identity(h)
            pid = int(victim.split("@", 1)[0])
            if pid not in workers:
                raise RuntimeError(f"{wid}'s last task ran on {victim}, not one of this benchmark's workers")
            await asyncio.sleep(random.uniform(0, 0.25))
            killed_at = time.time()
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 60
            took = None
            while took is None:
                hist = await h.fetch_history()
                for ev in hist.events:
                    a = ev.workflow_task_completed_event_attributes if ev.HasField(
                        "workflow_task_completed_event_attributes") else None
                    if a is not None and a.identity != victim and ev.event_time.ToDatetime().timestamp() > killed_at:
                        took = ev.event_time.ToDatetime().timestamp() - killed_at
                        mid_task += any(  # the killed worker held a task: it waited for that task's timeout
                            e.HasField("workflow_task_timed_out_event_attributes")
                            and e.workflow_task_timed_out_event_attributes.timeout_type == START_TO_CLOSE
                            for e in hist.events)
                        break
                if took is None:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no worker took {wid} over within 60 s")
                    await asyncio.sleep(0.05)
            takeovers.append(took * 1000)
            await h.terminate("benchmark sample taken")
            proc = workers.pop(pid)
            if proc is not None:
                proc.wait(10)
            new = _spawn_standby(st, i + 1)
            workers[new.pid] = new
    finally:
        for pid, proc in workers.items():
            if proc is not None:
                procs.stop(proc.pid)
        if not st.pid("worker") or not procs.alive(st.pid("worker")):
            devstack.Stack().pidfile("worker").unlink(missing_ok=True)
            devstack.up(only=["worker"], out=lambda line: None)  # the later benchmarks need the stack's worker
    return {"kills": kills, "sigkill_to_standby_task_ms": summary(takeovers), "mid_task_kills": mid_task,
            "sticky_queue_schedule_to_start_s": 1.0}


