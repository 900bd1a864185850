"""Outcomes are never ambiguous, views tell the truth, --json is JSON (issue 23 items 2 and 3, issue 16 item 1).

Found by a fault campaign: during a worker outage `switch set` printed a traceback and exit 1 (from a
progress query that timed out) and the change was applied once the worker came back; `status` said
`running` for a workflow terminated in Temporal; the SDK core's retry warnings were printed on stdout
before `--json` output. Here, as a user runs the CLI (a subprocess, signing on, the dev server):

- no worker: `switch set` exits 9 "submitted as change-...; not confirmed yet" naming the time until
  which it may still land; a worker back within that window applies it once (audited), one back after
  it finds the request expired and applies nothing (etcd unchanged);
- `status` of that request says what Temporal knows while no worker answers, then the outcome;
- a request terminated in Temporal shows `terminated`, never `running`;
- the Rust core's own log lines reach stderr through Python logging, never stdout.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap

from tests.support.identity_helpers import signing_worker
from tests.support.standins import StandIns
from tests.support.store_helpers import dump, run_cli
from tests.support.wf_helpers import save_history, values


async def cli(*args: str, env: dict[str, str]):
    return await asyncio.to_thread(run_cli, *args, env=env, timeout=90)


def _env(dev_env, etcd_server, prefix, task_queue, key_dir, **extra) -> dict[str, str]:
    return {"ROLLBACKCTL_ETCD_ENDPOINTS": etcd_server.endpoint, "ROLLBACKCTL_ETCD_PREFIX": prefix,
            "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
            "ROLLBACKCTL_TASK_QUEUE": task_queue, "ROLLBACKCTL_KEY_DIR": str(key_dir), **extra}


async def test_a_change_the_worker_did_not_answer_is_reported_unconfirmed_then_lands_once(
        dev_env, store, etcd_server, prefix, task_queue, tmp_path):
    env = _env(dev_env, etcd_server, prefix, task_queue, tmp_path / "keys", ROLLBACKCTL_CHANGE_WAIT_S="2")
    async with signing_worker(dev_env, store, StandIns(), task_queue):
        r = await cli("init", "--super-admin", "alice", "--generate-key", env=env)
        assert r.code == 0, r.err
    # the worker is down: the request reaches Temporal, nobody answers it
    r = await cli("switch", "set", "hedge_max_leverage", "2", "--as", "alice", "--reason", "thin margin", "--json",
                  env=env)
    assert r.code == 9, (r.code, r.out, r.err)
    assert "Traceback" not in r.err and r.out.strip() == ""
    [line] = [ln for ln in r.err.splitlines() if "submitted as" in ln]
    wid = re.search(r"submitted as (change-\S+);", line).group(1)
    assert "not confirmed yet" in line and "before" in line and f"rollbackctl status {wid}" in line
    assert (await values(store, "hedge_max_leverage")) == {"hedge_max_leverage": 3.0}  # not yet

    r = await cli("status", wid, "--json", env=env)  # no worker answers its query: say what Temporal knows
    assert r.code == 0, r.err
    view = json.loads(r.out)  # exactly one JSON document
    assert view["temporal_status"] == "running" and view["status"] == "running"
    assert "could not be read" in view["detail"]

    async with signing_worker(dev_env, store, StandIns(), task_queue):  # back within the pickup window
        res = await asyncio.wait_for(dev_env.client.get_workflow_handle(wid).result(), 60)
        assert res["status"] == "applied", res
        r = await cli("status", wid, "--json", env=env)
        assert json.loads(r.out)["status"] == "applied"
    assert (await values(store, "hedge_max_leverage")) == {"hedge_max_leverage": 2.0}
    nonce = wid.removeprefix("change-")  # the request's change id is req-<nonce> (activities/requests.py)
    assert [a.actor for a in await store.audit() if a.change_id == f"req-{nonce}"] == ["alice"]  # once


async def test_a_change_picked_up_after_its_deadline_expires_and_applies_nothing(
        dev_env, store, etcd, etcd_server, prefix, task_queue, tmp_path):
    env = _env(dev_env, etcd_server, prefix, task_queue, tmp_path / "keys")
    async with signing_worker(dev_env, store, StandIns(), task_queue):
        assert (await cli("init", "--super-admin", "alice", "--generate-key", env=env)).code == 0
    before = await dump(etcd, prefix)
    # the CLI waits 1.5 s; the pickup window is 0.5 s: when it exits, the window has passed
    r = await cli("switch", "set", "hedge_enabled", "false", "--as", "alice", "--reason", "venue down",
                  env={**env, "ROLLBACKCTL_CHANGE_WAIT_S": "1.5", "ROLLBACKCTL_CHANGE_PICKUP_S": "0.5"})
    assert r.code == 9, (r.code, r.out, r.err)
    wid = re.search(r"submitted as (change-\S+);", r.err).group(1)
    async with signing_worker(dev_env, store, StandIns(), task_queue):
        h = dev_env.client.get_workflow_handle(wid)
        res = await asyncio.wait_for(h.result(), 60)
        await save_history(h, "change_request_expired_before_pickup")
    assert res["status"] == "expired" and "nothing applied" in res["detail"], res
    assert await dump(etcd, prefix) == before  # nothing written, nothing audited


async def test_status_of_a_workflow_terminated_in_temporal_says_terminated(dev_env, store, etcd_server, prefix,
                                                                           task_queue, tmp_path):
    env = _env(dev_env, etcd_server, prefix, task_queue, tmp_path / "keys")
    async with signing_worker(dev_env, store, StandIns(), task_queue):
        assert (await cli("init", "--super-admin", "alice", "--generate-key", env=env)).code == 0
        r = await cli("switch", "set", "global_betting_enabled", "true", "--as", "alice", "--reason", "launch",
                      env=env)
        assert r.code == 6, r.err  # waits for a second super admin
        wid = re.search(r"rollbackctl confirm (change-\S+)", r.out).group(1)
        await dev_env.client.get_workflow_handle(wid).terminate("abandoned from the Web UI")
        r = await cli("status", wid, "--json", env=env)
        view = json.loads(r.out)
        assert (view["status"], view["temporal_status"], view["awaiting"]) == ("terminated", "terminated", None)
        r = await cli("status", wid, env=env)
        assert "status: terminated" in r.out and "running" not in r.out.splitlines()[0]
        assert "did not finish" in r.out


def test_the_sdk_cores_own_log_lines_go_to_stderr_through_logging(ts_env):
    """The time-skipping server makes the core warn when an activity worker starts ("did not advertise the
    activity_failure_include_heartbeat capability"): with the SDK's default runtime the Rust core prints
    that line on stdout (seen: it broke `--json`). Through rollbackctl's client it reaches Python logging
    (forwarded in batches: the script waits, bounded, for the record) and so structlog's stderr."""
    script = textwrap.dedent(f"""
        import asyncio, logging, os, sys
        from temporalio import activity
        from temporalio.worker import Worker
        from core import log
        from core.settings import TemporalSettings
        from core.temporal_client import connect

        @activity.defn(name="probe.noop")
        async def noop() -> None:
            return None

        class Seen(logging.Handler):  # forwarded records arrive on the core's thread
            def __init__(self):
                super().__init__()
                self.loop, self.event = asyncio.get_running_loop(), asyncio.Event()
            def emit(self, record):
                if record.name.startswith("temporalio.core"):
                    self.loop.call_soon_threadsafe(self.event.set)

        async def main():
            log.configure(level="WARNING", fmt="json")
            seen = Seen()
            logging.getLogger().addHandler(seen)
            client = await connect(TemporalSettings(temporal_address={ts_env.client.service_client.config.target_host!r}))
            async with Worker(client, task_queue="core-log-probe", activities=[noop]):
                await asyncio.wait_for(seen.event.wait(), 20)
                print('{{"ok": true}}')
                sys.stdout.flush(); sys.stderr.flush()
                os._exit(0)  # not waiting for the worker's long poll to end; and sdk-python #300 at exit

        asyncio.run(main())
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"ok": True}  # stdout holds only what the program printed
    core = [json.loads(ln) for ln in p.stderr.splitlines() if ln.startswith("{") and "temporalio" in ln]
    assert any(ln["logger"].startswith("temporalio.core") and ln["level"] == "warning"
               and "activity_failure_include_heartbeat" in ln["event"] for ln in core), p.stderr
