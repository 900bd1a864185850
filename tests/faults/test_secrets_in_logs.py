"""Secrets never in logs: a full scenario through real processes (the `rollbackctl` CLI, a worker and
the P0 monitor as subprocesses logging JSON at DEBUG to files), with paging through the simulator's
sinks and their failures (500s from the sinks, a 401 from the core), then every captured byte -
logs, CLI output, the workflows' Temporal histories - searched for the configured trading-core
token, the webhook URLs and the PagerDuty routing keys."""

from __future__ import annotations

import uuid

import pytest

from tests.support.waits import wait_until
from tests.support.infra import cli
from tests.support.fixtures_sim import LEVEL_HOOKS, LEVEL_KEYS, apply_and_wait
from contracts.incidents import incident_workflow_id
from workflows.monitor import monitor_workflow_id
from workflows.rollback import RollbackWorkflow

pytestmark = pytest.mark.timeout(240)


async def test_no_secret_in_any_log_output_or_history(tclient, store, sim, sim_server, workers, worker_env, task_queue):
    secrets = {"trading-core token": sim_server.token,
               **{f"routing key L{i + 1}": k for i, k in enumerate(LEVEL_KEYS)},
               **{f"webhook path L{i + 1}": h for i, h in enumerate(LEVEL_HOOKS)},
               **{f"webhook URL L{i + 1}": f"{sim_server.url}/sim/slack/{h}" for i, h in enumerate(LEVEL_HOOKS)}}
    ns = f"s{uuid.uuid4().hex[:6]}"
    debug = {"ROLLBACKCTL_LOG_LEVEL": "DEBUG", "ROLLBACKCTL_LOG_FORMAT": "json"}
    w = workers.start("worker", **debug)
    mon = workers.monitor(ROLLBACKCTL_MONITOR_INTERVAL_S="0.25", ROLLBACKCTL_MONITOR_NAMESPACE=ns, **debug)
    await workers.wait_polling(tclient, task_queue, w)
    env = {**worker_env, **debug}
    outputs: list[str] = []

    async def run(*args: str, ok: bool = True) -> str:
        r = await cli(env, *args)
        outputs.append(r.out + r.err)
        if ok:
            assert r.code == 0, (args, r.err)
        return r.out

    await apply_and_wait(sim, store, global_betting_enabled=True, routing_mode="NORMAL_MODE")
    inc = f"SEC-{uuid.uuid4().hex[:6]}"
    wid = f"rollback-{inc}"
    try:
        # the first pages and chat messages fail (500 from the sinks) and are retried by the worker
        await sim.inject(api_status=500, api_paths=["/sim/pagerduty", "/sim/slack"], api_fault_count=4)
        await run("rollback", "start", "--severity", "critical_path_failure", "--scope", "cross_module",
                  "--incident", inc, "--as", "oscar", "--reason", "fills failing", "--observe", "1s",
                  "--interval", "250ms", "--restore-observe", "1s")
        h = tclient.get_workflow_handle_for(RollbackWorkflow.run, wid)
        await wait_until(lambda: _awaiting(h, "confirm"), 60, "the rollback waiting for its confirmation")
        # the core refuses the automation's token for a while (401): said without the token
        await sim.inject(api_status=401, api_paths=["/v1/health"], api_fault_count=6)
        await wait_until(lambda: _fault_spent(sim), 30, "the 401s consumed")
        await run("status", inc)
        await run("confirm", inc, "--as", "vic", ok=False)  # refused: a viewer
        await run("confirm", inc, "--as", "oscar", "--reason", "holds")
        await wait_until(lambda: _awaiting(h, "fix"), 30, "waiting for the fix")
        await run("fix", inc, "--as", "alice", "--reference", "pr-1", "--tests-passed")
        res = await h.result()
        assert res.status == "restored", res
        # a P0 through the monitor: its immediate action and page
        await sim.inject(hot_wallet_usd=40_000.0)
        await sim.wait_for(sim.pages, lambda p: any("Hot wallet" in x.get("payload", {}).get("summary", "")
                                                    for x in p), 20, what="the monitor's page")
        pages = await sim.pages()
        assert {p["routing_key"] for p in pages if "routing_key" in p} <= set(LEVEL_KEYS)
        assert any(c for c in await sim.chats(LEVEL_HOOKS[0])), "chat reached the level-1 webhook"
        histories = [(await h.fetch_history()).to_json()]
        ih = tclient.get_workflow_handle(incident_workflow_id("hot_wallet", None, ns))
        histories.append((await ih.fetch_history()).to_json())
    finally:
        await sim.clear_faults()
        for wf in (incident_workflow_id("hot_wallet", None, ns), monitor_workflow_id(ns)):
            try:
                await tclient.get_workflow_handle(wf).terminate("test over")
            except Exception:  # already closed
                pass
        w.stop()
        mon.stop()

    logs = {"worker": w.text(), "monitor": mon.text(), "CLI": "\n".join(outputs)}
    logs.update({f"history {i}": hst for i, hst in enumerate(histories)})
    # the logs are not empty, and the failure paths were taken (so the test saw what they log)
    assert "applied as audit" in logs["worker"] and len(logs["worker"].splitlines()) > 20
    assert "500" in logs["worker"], "the failed pages were logged"
    assert "ROLLBACKCTL_TRADING_CORE_TOKEN" in logs["worker"] + logs["monitor"] or \
           "401" in logs["worker"] + logs["monitor"], "the 401 was logged"
    leaks = [(what, where) for where, text in logs.items() for what, s in secrets.items() if s in text]
    assert not leaks, f"secrets found: {leaks}"
    print(f"\nsecrets searched: {len(secrets)} in {sum(len(t) for t in logs.values()):,} bytes of logs, CLI output "
          f"and histories ({', '.join(f'{k} {len(v):,}' for k, v in logs.items())}): none found")


async def _awaiting(h, expects: str) -> bool:
    p = await h.query(RollbackWorkflow.progress)
    return p.awaiting is not None and p.awaiting.expects == expects


async def _fault_spent(sim) -> bool:
    f = await sim.faults()
    return "api_status" not in f
