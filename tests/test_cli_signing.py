"""The CLI with signing on (the default), as a user runs it, against a worker on the dev server:
keygen, keys registered and rotated (audited), signed switch changes applied by the worker, the
two-person rule through `confirm`, a rotated key refused at once, `audit verify`; and no private key
material in the CLI's output, the worker's logs, the workflow histories or etcd."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import shutil
import stat

from cryptography.hazmat.primitives import serialization

from tests.support.identity_helpers import signing_worker
from tests.support.standins import StandIns
from tests.support.store_helpers import dump, run_cli
from tests.support.wf_helpers import values


async def cli(*args: str, env: dict[str, str]):
    return await asyncio.to_thread(run_cli, *args, env=env, timeout=60)


def secrets_of(key_file) -> list[str]:
    """Every way a private key's bytes could show up in text: raw as base64/urlsafe/hex, the PEM body."""
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    pem = key_file.read_text()
    body = "".join(line for line in pem.splitlines() if "-----" not in line)
    return [base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("="), raw.hex(), body]


def payload_text(obj) -> str:
    """A history's JSON with every base64 payload (`data`) decoded beside it."""
    out: list[str] = []

    def walk(o):
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "data" and isinstance(v, str):
                    try:
                        out.append(base64.b64decode(v).decode("utf-8", "replace"))
                    except ValueError:
                        pass
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(obj)
    return json.dumps(obj) + "\n".join(out)


async def test_signed_cli_end_to_end_and_no_private_key_leaks(dev_env, store, etcd, etcd_server, prefix, task_queue,
                                                              tmp_path, caplog):
    caplog.set_level(logging.INFO)
    key_dir = tmp_path / "keys"
    env = {"ROLLBACKCTL_ETCD_ENDPOINTS": etcd_server.endpoint, "ROLLBACKCTL_ETCD_PREFIX": prefix,
           "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
           "ROLLBACKCTL_TASK_QUEUE": task_queue, "ROLLBACKCTL_KEY_DIR": str(key_dir)}
    outputs: list[str] = []

    async def ok(*args: str, code: int = 0, **extra: str):
        r = await cli(*args, env={**env, **extra})
        outputs.append(r.out + r.err)
        assert r.code == code, (args, r.code, r.out, r.err)
        return r

    async with signing_worker(dev_env, store, StandIns(), task_queue):
        r = await ok("init", "--super-admin", "alice", "--generate-key")  # bootstrap: an administrator's write
        assert "super admin: alice (key ed25519:" in r.out
        assert stat.S_IMODE((key_dir / "alice.key").stat().st_mode) == 0o600
        r = await ok("keygen", "--operator", "rita")
        pub = re.search(r"public key:\s+(\S+)", r.out).group(1)
        await ok("operator", "rotate-key", "rita", "--as", "alice", "--public-key", pub)
        assert (await store.operator("rita")).public_key == pub
        r = await ok("switch", "set", "hedge_max_leverage", "1.5", "--as", "rita", "--reason", "hedge margin thin")
        assert "hedge_max_leverage: 3x -> 1.5x" in r.out and "signed by rita" in r.out
        assert (await values(store, "hedge_max_leverage")) == {"hedge_max_leverage": 1.5}
        r = await ok("operator", "add", "olga", "on_call", "--as", "alice", "--generate-key")
        assert (await store.operator("olga")).key_id in r.out and (key_dir / "olga.key").exists()
        await ok("operator", "rotate-key", "sam", "--as", "alice", "--generate-key")
        r = await ok("operator", "list")
        assert re.search(r"sam\s+super_admin\s+ed25519:", r.out)

        # two-person: betting on needs a second super admin
        r = await ok("switch", "set", "global_betting_enabled", "true", "--as", "alice", "--reason", "Phase 3", code=6)
        assert "PENDING" in r.out and "still needed: one of sam" in r.out
        wid = re.search(r"rollbackctl confirm (change-\S+)", r.out).group(1)
        r = await ok("confirm", wid, "--as", "alice", code=3)
        assert "alice already approved" in r.err
        # the same asked twice by mistake: its requester withdraws the second (signed); nothing applied
        r = await ok("switch", "set", "global_betting_enabled", "true", "--as", "alice", "--reason", "again", code=6)
        twice = re.search(r"rollbackctl confirm (change-\S+)", r.out).group(1)
        r = await ok("status", twice)
        assert "or withdraw (its starter, a higher role, or super_admin)" in r.out
        r = await ok("withdraw", twice, "--as", "alice", code=2)  # argparse: --reason is required
        r = await ok("withdraw", twice, "--as", "alice", "--reason", "asked twice", "--json")
        j = json.loads(r.out)
        assert (j["workflow_id"], j["action"], j["accepted"]) == (twice, "withdraw", True)
        assert "withdraw by alice accepted" in j["message"] and j["web_ui"].endswith(twice)
        res = await dev_env.client.get_workflow_handle(twice).result()
        assert res["status"] == "withdrawn" and "nothing applied" in res["detail"]
        await ok("confirm", wid, "--as", "sam", "--reason", "agreed")
        res = await dev_env.client.get_workflow_handle(wid).result()
        assert res["status"] == "applied" and res["approved_by"] == ["alice", "sam"]
        assert (await values(store, "global_betting_enabled")) == {"global_betting_enabled": True}

        # a rotated key stops working at once
        old = tmp_path / "rita-old.key"
        shutil.copy(key_dir / "rita.key", old)
        await ok("operator", "rotate-key", "rita", "--as", "alice", "--generate-key")
        before = await dump(etcd, prefix)
        r = await ok("switch", "set", "hedge_enabled", "false", "--as", "rita", "--reason", "x", code=3,
                     ROLLBACKCTL_KEY_FILE=str(old))
        assert "refused (removed key)" in r.err and await dump(etcd, prefix) == before
        await ok("switch", "set", "hedge_enabled", "false", "--as", "rita", "--reason", "x")
        r = await ok("audit", "verify")
        assert "audit trail OK" in r.out

        histories = []
        async for wf in dev_env.client.list_workflows(f"TaskQueue = '{task_queue}'"):
            h = await dev_env.client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
            histories.append(payload_text(json.loads(h.to_json())))
    assert len(histories) >= 6

    stored = "\n".join(f"{k} {v.decode(errors='replace')}" for k, v, _ in await dump(etcd, prefix))
    places = {"cli output": "\n".join(outputs), "worker logs": caplog.text, "histories": "\n".join(histories),
              "etcd": stored}
    key_files = [*key_dir.glob("*.key"), old]
    assert len(key_files) >= 5
    for f in key_files:
        for secret in secrets_of(f):
            for where, text in places.items():
                assert secret not in text, f"private key material of {f.name} found in {where}"
    # ... while the public keys and signatures are there (the test would be vacuous otherwise)
    assert (await store.operator("rita")).public_key in places["etcd"]
    assert '"signatures"' in places["etcd"] and "signature" in places["histories"]


async def test_canary_start_signed_by_the_cli_waits_for_a_second_super_admin(dev_env, store, etcd_server, prefix,
                                                                             task_queue, tmp_path):
    """`canary start phase3` signs its start for the id it tries; the plan turns global_betting_enabled on,
    so nothing is applied until a second super admin confirms (`rollbackctl confirm <id>`, signed)."""
    from tests.support.canary_helpers import Scripted

    env = {"ROLLBACKCTL_ETCD_ENDPOINTS": etcd_server.endpoint, "ROLLBACKCTL_ETCD_PREFIX": prefix,
           "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
           "ROLLBACKCTL_TASK_QUEUE": task_queue, "ROLLBACKCTL_KEY_DIR": str(tmp_path / "keys")}

    async def ok(*args: str, code: int = 0):
        r = await cli(*args, env=env)
        assert r.code == code, (args, r.code, r.out, r.err)
        return r

    async def canary_status(wid: str, pred, timeout: float = 30.0) -> dict:
        s = None
        for _ in range(int(timeout / 0.2)):
            s = json.loads((await ok("canary", "status", wid, "--json")).out)
            if pred(s):
                return s
            await asyncio.sleep(0.2)
        raise AssertionError(f"condition not reached; last status: {s}")

    async with signing_worker(dev_env, store, Scripted(), task_queue):
        await ok("init", "--super-admin", "alice", "--generate-key")
        for name in ("sam", "rita"):
            await ok("operator", "rotate-key", name, "--as", "alice", "--generate-key")
        r = await ok("canary", "start", "phase2", "--as", "rita", "--break-glass", "hurry", code=3)
        assert "--break-glass needs a super_admin" in r.err
        r = await ok("canary", "start", "phase3", "--as", "alice", "--time-scale", "14400", "--reason", "launch")
        wid = re.search(r"^workflow (canary-phase3-\d+)$", r.out, re.M).group(1)
        assert "two-person rule: the plan sets global_betting_enabled" in r.out
        assert f"rollbackctl confirm {wid} --as OTHER" in r.out
        s = await canary_status(wid, lambda s: s["status"] == "awaiting_approval")
        assert "still needed: one of sam" in s["waiting_for"]
        assert (await values(store, "global_betting_enabled")) == {"global_betting_enabled": False}
        r = await ok("confirm", wid, "--as", "alice", code=3)
        assert "alice already approved" in r.err
        # the same asked twice by mistake: its requester withdraws the second (signed); nothing applied
        r = await ok("switch", "set", "global_betting_enabled", "true", "--as", "alice", "--reason", "again", code=6)
        twice = re.search(r"rollbackctl confirm (change-\S+)", r.out).group(1)
        r = await ok("status", twice)
        assert "or withdraw (its starter, a higher role, or super_admin)" in r.out
        r = await ok("withdraw", twice, "--as", "alice", code=2)  # argparse: --reason is required
        r = await ok("withdraw", twice, "--as", "alice", "--reason", "asked twice", "--json")
        j = json.loads(r.out)
        assert (j["workflow_id"], j["action"], j["accepted"]) == (twice, "withdraw", True)
        assert "withdraw by alice accepted" in j["message"] and j["web_ui"].endswith(twice)
        res = await dev_env.client.get_workflow_handle(twice).result()
        assert res["status"] == "withdrawn" and "nothing applied" in res["detail"]
        r = await ok("canary", "pause", "phase3", "--as", "rita", code=4)
        assert "has not started" in r.err
        await ok("confirm", wid, "--as", "sam", "--reason", "agreed")
        await canary_status(wid, lambda s: s["stage"] == 1 and s["part"] == "observe")
        assert (await values(store, "global_betting_enabled")) == {"global_betting_enabled": True}
        await ok("canary", "abort", "phase3", "--as", "rita", "--reason", "cli test over")
        res = await dev_env.client.get_workflow_handle(wid).result()
        assert res["status"] == "aborted", res
        assert (await values(store, "global_betting_enabled")) == {"global_betting_enabled": False}
        rec = [a for a in await store.audit() if a.source == wid][0]
        assert [(s["request"]["actor"], s["request"]["action"]) for s in rec.model_extra["signatures"]] == [
            ("alice", "canary.start"), ("sam", "confirm")]
        r = await ok("audit", "verify")
        assert "audit trail OK" in r.out
