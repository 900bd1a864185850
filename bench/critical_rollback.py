"""Critical cross-module rollback: start -> routing_mode=HL_MODE applied at the simulator.

In-process (a client starting the workflow with eager start, as the CLI does) and through the CLI
as a whole process (`rollbackctl rollback start ...`: interpreter start, imports, connect, start).
Both signed, as in production (the stack's worker verifies the requester's signature before the flip).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

from contracts.changes import ChangeSetRequest, SwitchChange
from bench.stack import BenchStack
from bench.stats import summary
from manual.rollback import Durations, Scope, Severity
from core.temporal_client import connect
from workflows.models import RollbackInput
from workflows.rollback import RollbackWorkflow


async def _wait_switch(http: httpx.AsyncClient, url: str, name: str, value, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sw = (await http.get(f"{url}/sim/switches")).json()["switches"][name]
        if sw["value"] == value:
            return sw
        await asyncio.sleep(0.002)
    raise TimeoutError(f"{name} never became {value!r}")


async def _internalization_on(st: BenchStack, http: httpx.AsyncClient) -> None:
    await st.store.apply(ChangeSetRequest(
        change_id=f"bench-setup-{uuid.uuid4()}", actor="alice", reason="bench setup",
        changes=[SwitchChange(switch="global_betting_enabled", value=True),
                 SwitchChange(switch="routing_mode", value="NORMAL_MODE")]))
    await _wait_switch(http, st.core.url, "routing_mode", "NORMAL_MODE")


def _ms(sw: dict, t0: datetime) -> float:
    return (datetime.fromisoformat(sw["applied_at"].replace("Z", "+00:00")) - t0).total_seconds() * 1000


QUICK = Durations(observe=timedelta(seconds=1), check_interval=timedelta(seconds=1))


async def inproc_samples(st: BenchStack, client, http: httpx.AsyncClient, runs: int) -> list[float]:
    """ms from a signed eager start to routing_mode=HL_MODE applied at the simulator, `runs` times."""
    inproc: list[float] = []
    for _ in range(runs):
        await _internalization_on(st, http)
        inc = f"bench-{uuid.uuid4().hex[:10]}"
        wid = f"rollback-{inc}"
        inp = st.sign_start(  # signed as the CLI signs (~0.1 ms, before the clock starts, as there)
            RollbackInput(incident_id=inc, summary="bench", severity=Severity.CRITICAL, scope=Scope.CROSS,
                          requested_by="oscar", reason="benchmark", drill=True, durations=QUICK),
            "rollback.start", wid)
        t0 = datetime.now(timezone.utc)
        h = await client.start_workflow(RollbackWorkflow.run, inp, id=wid, task_queue=st.temporal.task_queue,
                                        request_eager_start=True)
        inproc.append(_ms(await _wait_switch(http, st.core.url, "routing_mode", "HL_MODE"), t0))
        await h.terminate("benchmark sample taken")
    return inproc


async def run(st: BenchStack, runs: int = 50, cli_runs: int = 10) -> dict:
    client = await connect(st.temporal)
    cli: list[float] = []
    async with httpx.AsyncClient() as http:
        inproc = await inproc_samples(st, client, http, runs)
        exe = str(Path(sys.executable).parent / "rollbackctl")
        for _ in range(cli_runs):
            await _internalization_on(st, http)
            inc = f"bench-cli-{uuid.uuid4().hex[:10]}"
            t0 = datetime.now(timezone.utc)
            p = subprocess.Popen([exe, "rollback", "start", "--severity", "critical_path_failure", "--scope",
                                  "cross_module", "--incident", inc, "--as", "oscar", "--reason", "benchmark",
                                  "--drill", "--observe", "1s", "--interval", "1s"],
                                 env={**os.environ, **st.env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            cli.append(_ms(await _wait_switch(http, st.core.url, "routing_mode", "HL_MODE"), t0))
            p.wait(timeout=30)
            await client.get_workflow_handle(f"rollback-{inc}").terminate("benchmark sample taken")
    return {"start_to_hl_mode_applied_ms": summary(inproc), "cli_process_to_hl_mode_applied_ms": summary(cli)}
