"""The emergency lane with the Temporal server SIGKILLed (activities/emergency.py, manual/emergency.py).

As an on-call lives it: signing on, operators and keys made through the CLI, a worker subprocess
serving the lane; then Temporal dies. `switch set` of a rollback value and `degrade 2` still apply
(signed, nonce, revision, role; audited; Level 2's trading-core pauses at the simulator), anything
else is refused in one line with nothing written, and a replayed, stale, under-privileged or
not-pre-approved request is refused by the lane. When Temporal is back, each move gets its
follow-up workflow, which pages and is acknowledged with `confirm`; `audit verify` holds.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from activities.switch_store import SwitchStore
from contracts.emergency import EMERGENCY_PATH, EmergencyFollowUpResult, EmergencyRequest
from core import identity, keys, procs
from tests.support.infra import Workers, connect
from tests.support.store_helpers import run_cli
from tests.support.wf_helpers import save_history
from tests.support.waits import wait_for_value, wait_until

pytestmark = pytest.mark.timeout(300)


def proof(key_dir, actor: str, **fields) -> identity.Proof:
    key = keys.load_file(key_dir / f"{actor}.key", actor)
    return identity.sign(key, identity.SignedRequest(actor=actor, nonce=identity.new_nonce(), **fields))


async def test_pre_approved_moves_apply_while_temporal_is_down_and_are_followed_up(
        own_temporal, worker_env, etcd, etcd_server, prefix, sim, task_queue, tmp_path):
    lane_port = procs.free_port()
    lane = f"http://127.0.0.1:{lane_port}"
    key_dir = tmp_path / "keys"
    env = {"ROLLBACKCTL_ETCD_ENDPOINTS": etcd_server.endpoint, "ROLLBACKCTL_ETCD_PREFIX": prefix,
           "TEMPORAL_ADDRESS": own_temporal.address, "ROLLBACKCTL_TASK_QUEUE": task_queue,
           "ROLLBACKCTL_KEY_DIR": str(key_dir), "ROLLBACKCTL_EMERGENCY_URLS": lane}

    async def cli(*args: str, code: int = 0):
        r = await asyncio.to_thread(run_cli, *args, env=env, timeout=60)
        assert r.code == code, (args, r.code, r.out, r.err)
        return r

    ws = Workers(tmp_path / "workers", {**worker_env, "TEMPORAL_ADDRESS": own_temporal.address,
                                        "ROLLBACKCTL_SIGNING": "on", "ROLLBACKCTL_EMERGENCY_RECONCILE_S": "1",
                                        "ROLLBACKCTL_EMERGENCY_LISTEN": f"127.0.0.1:{lane_port}"})
    try:
        client = await connect(own_temporal.address)
        w = ws.start("a")
        await ws.wait_polling(client, task_queue, w)
        await cli("init", "--super-admin", "alice", "--generate-key")
        await cli("operator", "add", "oscar", "on_call", "--as", "alice", "--generate-key")
        await cli("operator", "add", "vic", "viewer", "--as", "alice", "--generate-key")
        await cli("switch", "set", "global_betting_enabled", "true", "--as", "alice", "--reason", "launch", "--yes",
                  "--break-glass", "test set-up: one super admin")
        await cli("switch", "set", "routing_mode", "NORMAL_MODE", "--as", "alice", "--reason", "launch", "--yes")
        store = SwitchStore(etcd, prefix)
        audit_before = len(await store.audit())

        own_temporal.kill()  # SIGKILL: the cluster is gone; the worker process lives on
        # the lane answers (the worker serves it whatever Temporal does)
        async with httpx.AsyncClient() as http:
            await wait_until(lambda: _up(http, lane), 10, what="the emergency lane")

        # 1. not an emergency move: one line, exit 5, nothing written
        r = await cli("switch", "set", "hedge_max_leverage", "2", "--as", "alice", "--reason", "x", "--yes", code=5)
        assert "unreachable" in r.err and "emergency lane" in r.err and "Traceback" not in r.err
        assert len(r.err.strip().splitlines()) == 1

        # ... nor a rollback workflow; it says which of its change set the lane takes
        r = await cli("rollback", "start", "--severity", "critical_path_failure", "--scope", "cross_module",
                      "--incident", "E-1", "--as", "oscar", "--reason", "x", code=5)
        assert "`rollbackctl switch set routing_mode HL_MODE --as oscar --reason ...`" in r.err, r.err
        assert len(r.err.strip().splitlines()) == 1

        # 1b. an emergency move, but no lane answers: one line, exit 5, nothing written
        r = await asyncio.to_thread(run_cli, "switch", "set", "routing_mode", "HL_MODE", "--as", "oscar", "--reason",
                                    "x", env={**env, "ROLLBACKCTL_EMERGENCY_URLS": f"http://127.0.0.1:{procs.free_port()}"})
        assert r.code == 5 and "every emergency lane" in r.err and len(r.err.strip().splitlines()) == 1, r
        assert (await store.get("routing_mode")).value == "NORMAL_MODE"

        # 2. a switch to its rollback value: applied through the lane, with its audit record
        t0 = time.monotonic()
        r = await cli("switch", "set", "routing_mode", "HL_MODE", "--as", "oscar", "--reason", "HL fills failing")
        cli_s = time.monotonic() - t0
        assert "emergency lane" in r.out and "routing_mode: NORMAL_MODE -> HL_MODE" in r.out, r.out
        assert (await store.get("routing_mode")).value == "HL_MODE"
        rec = (await store.audit())[-1]
        assert rec.source == "emergency" and rec.actor == "oscar" and rec.action == "switch.set"
        assert rec.change_id.startswith("emergency-") and rec.authority == "preapproved"
        assert rec.model_extra["signatures"][0]["request"]["actor"] == "oscar", rec
        first = rec.change_id

        # 3. degrade 2 through the CLI: Level 2's switch set and the trading core's pauses
        r = await cli("degrade", "2", "--incident", "INC-E1", "--as", "oscar", "--reason", "liquidations broken")
        assert "emergency lane" in r.out and "pause_hl_opens: done" in r.out, r.out
        acts = [a["action"] for a in await sim.actions()]
        assert acts == ["pause_hl_opens", "pause_large_withdrawals"]
        assert (await store.get("liquidation_enabled")).value is False
        second = (await store.audit())[-1].change_id
        assert second != first and second.startswith("emergency-")

        # 4. the lane's own refusals, each with nothing written
        n = len(await store.audit())
        snap = await store.snapshot()
        async with httpx.AsyncClient() as http:
            async def post(p: identity.Proof) -> httpx.Response:
                return await http.post(lane + EMERGENCY_PATH, content=EmergencyRequest(proof=p).model_dump_json())

            lvl1 = proof(key_dir, "oscar", action="emergency.degrade", target="level:1",
                         values={"reason": "r"}, revision=snap.revision)
            stale = proof(key_dir, "oscar", action="emergency.degrade", target="level:1",
                          values={"reason": "r"}, revision=snap.revision - 50)
            viewer = proof(key_dir, "vic", action="emergency.degrade", target="level:1", values={"reason": "r"},
                           revision=snap.revision)
            level3 = proof(key_dir, "alice", action="emergency.degrade", target="level:3", values={"reason": "r"},
                           revision=snap.revision)
            not_rollback = proof(key_dir, "alice", action="switch.set", target="switch:routing_mode",
                                 values={"value": "BETTING_MODE", "reason": "r"},
                                 revision=(await store.get("routing_mode")).revision)
            forged = lvl1.model_copy(update={"request": lvl1.request.model_copy(update={"target": "level:2"})})
            for p, status, kind in ((stale, 409, "stale revision"), (viewer, 403, "permission denied"),
                                    (level3, 400, "invalid"), (not_rollback, 400, "invalid"),
                                    (forged, 403, "bad signature")):
                resp = await post(p)
                assert (resp.status_code, resp.json()["kind"]) == (status, kind), resp.text
            assert len(await store.audit()) == n
            ok = await post(lvl1)
            assert ok.status_code == 200 and not ok.json()["replayed"]
            again = await post(lvl1)  # the same signed request again: its nonce is spent, nothing new
            assert again.status_code == 200 and again.json()["replayed"] and len(await store.audit()) == n + 1
            third = ok.json()["change_id"]
            # not a signed request at all
            reused = await http.post(lane + EMERGENCY_PATH, content=json.dumps({"proof": {"bogus": 1}}))
            assert reused.status_code == 400

        # 5. Temporal back: each move gets its follow-up, which pages until acknowledged
        await asyncio.to_thread(own_temporal.start)
        client = await connect(own_temporal.address)
        for wid in (first, second, third):
            async def exists(wid=wid):
                try:
                    return (await client.get_workflow_handle(wid).describe()).status
                except Exception:
                    return None
            await wait_until(exists, 60, what=f"{wid} opened")
        pages = await wait_for_value(sim.pages, lambda ps: len(
            [p for p in ps if "EMERGENCY LANE" in p.get("payload", {}).get("summary", "")]) >= 3, 30, what="three emergency pages")
        page = next(p for p in pages if p["dedup_key"].startswith(first))
        assert page["payload"]["severity"] == "critical" and page["event_action"] == "trigger"
        assert "oscar applied routing_mode: NORMAL_MODE -> HL_MODE" in page["payload"]["summary"]
        r = await cli("status", "--json")
        assert {first, second, third} <= {row["id"] for row in json.loads(r.out)}
        r = await cli("confirm", first, "--as", "vic", code=3)  # a viewer cannot acknowledge it
        await cli("confirm", first, "--as", "oscar")
        h = client.get_workflow_handle(first, result_type=EmergencyFollowUpResult)
        res = await h.result()
        await save_history(h, "emergency_acknowledged")
        assert res.status == "acknowledged" and res.acknowledged_by == "oscar"
        assert "rollbackctl switch set routing_mode NORMAL_MODE" in res.detail
        r = await cli("audit", "verify")
        assert audit_before < len(await store.audit())
        assert w.alive()
        print(f"\nemergency lane with Temporal SIGKILLed: `switch set routing_mode HL_MODE` as a whole CLI process "
              f"{cli_s * 1000:.0f} ms (Python start, the failed Temporal connect, sign, the lane's checks and "
              "the etcd transaction)")
    finally:
        ws.close()


async def _up(http: httpx.AsyncClient, lane: str) -> bool:
    try:
        return (await http.get(lane + EMERGENCY_PATH)).status_code == 200
    except httpx.HTTPError:
        return False
