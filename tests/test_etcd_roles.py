"""Only the worker holds etcd write credentials: an etcd with auth on, a read-only role for operators'
machines and a read-write role for the worker (set up with the venv's etcdctl, as in production).
An operator's own write is refused by etcd itself; the same change, signed by the CLI, is applied by
the worker."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from activities.switch_store import SwitchStore
from contracts.roles import Role
from core.etcd import Etcd, EtcdAuthError
from tests.support.identity_helpers import Signers, signing_worker
from tests.support.standins import StandIns
from tests.support.store_helpers import EtcdProcess, dump, req, run_cli

PREFIX = "/perps/"
USERS = {"root": "root-pw", "rollbackctl-worker": "worker-pw", "oncall-laptop": "laptop-pw"}


@pytest.fixture(scope="module")
def roles_etcd():
    d = Path(tempfile.mkdtemp(prefix="rbctl-etcd-roles-"))
    srv = EtcdProcess(d, []).start()
    try:
        for args in (
            ("user", "add", f"root:{USERS['root']}"),
            ("role", "add", "switch-writer"),
            ("role", "grant-permission", "switch-writer", "readwrite", PREFIX, "--prefix=true"),
            ("role", "add", "switch-reader"),
            ("role", "grant-permission", "switch-reader", "read", PREFIX, "--prefix=true"),
            ("user", "add", f"rollbackctl-worker:{USERS['rollbackctl-worker']}"),
            ("user", "grant-role", "rollbackctl-worker", "switch-writer"),
            ("user", "add", f"oncall-laptop:{USERS['oncall-laptop']}"),
            ("user", "grant-role", "oncall-laptop", "switch-reader"),
            ("auth", "enable"),
        ):
            r = srv.etcdctl(*args)
            assert r.returncode == 0, (args, r.stderr)
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(d, ignore_errors=True)


def client(srv, user: str) -> Etcd:
    return Etcd([srv.endpoint], username=user, password=USERS[user])


def laptop_env(roles_etcd, dev_env, task_queue: str, prefix: str, tmp_path, signers: Signers, *names: str) -> dict:
    """An operator's machine: the read-only etcd user, and the private keys of `names` in a 0700 directory."""
    key_dir = tmp_path / "keys"
    key_dir.mkdir(mode=0o700)
    for name in names:
        fd = os.open(key_dir / f"{name}.key", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, signers.keys[name].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
        os.close(fd)
    return {"ROLLBACKCTL_ETCD_ENDPOINTS": roles_etcd.endpoint, "ROLLBACKCTL_ETCD_PREFIX": prefix,
            "ROLLBACKCTL_ETCD_USERNAME": "oncall-laptop", "ROLLBACKCTL_ETCD_PASSWORD": USERS["oncall-laptop"],
            "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
            "ROLLBACKCTL_TASK_QUEUE": task_queue, "ROLLBACKCTL_KEY_DIR": str(key_dir)}


async def test_operators_read_only_the_worker_writes(roles_etcd, dev_env, task_queue, tmp_path):
    signers = Signers()
    async with client(roles_etcd, "root") as root:  # bootstrap, once, by an administrator
        admin = SwitchStore(root, PREFIX)
        await admin.init(super_admin="alice", public_key=signers.public("alice"))
        await admin.add_operator("rita", Role.RISK_MANAGER, actor="alice", public_key=signers.public("rita"))
    laptop = laptop_env(roles_etcd, dev_env, task_queue, PREFIX, tmp_path, signers, "rita")

    async with client(roles_etcd, "rollbackctl-worker") as w, client(roles_etcd, "oncall-laptop") as o:
        mine = SwitchStore(o, PREFIX)
        assert (await mine.get("hedge_enabled")).value is True  # operators read
        before = await dump(o, PREFIX)
        with pytest.raises(EtcdAuthError, match="permission denied"):  # ... and cannot write, whatever they run
            await mine.apply(req("rita", {"hedge_enabled": False}))
        r = await asyncio.to_thread(run_cli, "switch", "set", "hedge_enabled", "false", "--as", "rita", "--reason", "x",
                                    env={**laptop, "ROLLBACKCTL_SIGNING": "off"})
        assert r.code == 3 and "permission denied" in r.err, r.err
        assert await dump(o, PREFIX) == before

        async with signing_worker(dev_env, SwitchStore(w, PREFIX), StandIns(), task_queue):
            r = await asyncio.to_thread(run_cli, "switch", "set", "hedge_enabled", "false", "--as", "rita", "--reason",
                                        "hedge venue unstable", env=laptop, timeout=60)
        assert r.code == 0, r.out + r.err
        assert (await mine.get("hedge_enabled")).value is False
        rec = (await mine.audit())[-1]
        assert rec.actor == "rita" and rec.model_extra["signatures"][0]["request"]["actor"] == "rita"
        nonce = rec.model_extra["signatures"][0]["request"]["nonce"]
        assert await o.get(mine.nonce_key(nonce)) is not None  # recorded with the change, by the worker


async def test_every_operator_command_runs_with_a_read_only_etcd_user(roles_etcd, dev_env, task_queue, tmp_path):
    """Production shape: the CLI holds the read-only etcd user; only the worker's user may write. Every
    command that changes or approves anything still works (the canary's id counter included: its workflow
    moves it), and etcd shows only the worker wrote."""
    import json
    import re

    from activities.requests import RequestActivities
    from activities.switch_activities import SwitchActivities
    from tests.support.incident_helpers import GuardStandIn, clear, open_incident, until
    from tests.support.wf_helpers import PagedWorker, stop_pager
    from workflows.registry import WORKFLOWS

    prefix = f"/perps-ro-{os.urandom(3).hex()}/"
    signers = Signers()
    for args in (("role", "grant-permission", "switch-writer", "readwrite", prefix, "--prefix=true"),
                 ("role", "grant-permission", "switch-reader", "read", prefix, "--prefix=true")):
        r = roles_etcd.etcdctl("--user", f"root:{USERS['root']}", *args)
        assert r.returncode == 0, r.stderr
    async with client(roles_etcd, "root") as root:
        admin = SwitchStore(root, prefix)
        await admin.init(super_admin="alice", public_key=signers.public("alice"))
        for name, role in (("rita", Role.RISK_MANAGER), ("sam", Role.SUPER_ADMIN), ("oscar", Role.ON_CALL)):
            await admin.add_operator(name, role, actor="alice", public_key=signers.public(name))
    laptop = laptop_env(roles_etcd, dev_env, task_queue, prefix, tmp_path, signers, "alice", "rita", "sam", "oscar")
    quick = ["--observe", "1s", "--interval", "500ms", "--restore-observe", "1s"]

    async def cli(*args: str, want: int = 0):
        r = await asyncio.to_thread(run_cli, *args, env=laptop, timeout=90)
        assert r.code == want, f"rollbackctl {' '.join(args)} -> {r.code}\n{r.out}\n{r.err}"
        return r

    async def waits(wid: str, expects: str):
        for _ in range(400):  # the CLI's own view (polled, bounded)
            r = await cli("status", wid, "--json")
            aw = json.loads(r.out)["awaiting"]
            if aw is not None and aw["expects"] == expects:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{wid} never waited for {expects}")

    async with client(roles_etcd, "rollbackctl-worker") as w, client(roles_etcd, "oncall-laptop") as o:
        store = SwitchStore(w, prefix)
        si, guard = StandIns(), GuardStandIn()
        sa, ra = SwitchActivities(store, signing=True), RequestActivities(store)
        async with PagedWorker(dev_env.client, task_queue=task_queue, workflows=WORKFLOWS, standins=si,
                               activities=[*sa.methods(), ra.apply, *si.methods(), guard.undo_guard],
                               critical_lane=True):  # as worker.py: `rollback start` below is critical
            # direct changes, the two-person rule, operators
            await cli("switch", "set", "hedge_max_leverage", "2", "--as", "rita", "--reason", "thin margin")
            r = await cli("switch", "set", "global_betting_enabled", "true", "--as", "alice", "--reason", "launch",
                          want=6)
            change = re.search(r"change-[A-Za-z0-9_-]{24}", r.out + r.err).group(0)
            await cli("confirm", change, "--as", "sam")
            await cli("operator", "add", "nina", "on_call", "--as", "alice", "--generate-key")
            await cli("operator", "rotate-key", "nina", "--as", "alice", "--generate-key")
            # a rollback: start, confirm, fix (restore)
            await cli("rollback", "start", "--severity", "critical_path_failure", "--scope", "single_module",
                      "--switch", "hedging", "--incident", "RO-1", "--as", "oscar", "--reason", "hedge venue down", *quick)
            await waits("rollback-RO-1", "confirm")
            # the Web UI's list shows what it is and why (the start's static summary)
            desc = await dev_env.client.get_workflow_handle("rollback-RO-1").describe()
            assert await desc.static_summary() == "rollback by oscar: hedge venue down"
            await cli("confirm", "rollback-RO-1", "--as", "oscar")
            await waits("rollback-RO-1", "fix")
            await cli("fix", "rollback-RO-1", "--as", "rita", "--reference", "pr-1", "--tests-passed")
            # a degradation: start, confirm, fix
            await cli("degrade", "1", "--incident", "RO-2", "--as", "oscar", "--reason", "drill", *quick)  # (its restore has a 5% stage too)
            await waits("degrade-1-RO-2", "confirm")
            await cli("confirm", "degrade-1-RO-2", "--as", "oscar")
            await waits("degrade-1-RO-2", "fix")
            await cli("fix", "degrade-1-RO-2", "--as", "alice", "--reference", "pr-2", "--tests-passed")
            # betting was turned on above: re-enabling it falls under the two-person rule, a second super admin
            await cli("fix", "degrade-1-RO-2", "--as", "sam", "--reference", "pr-2", "--tests-passed")
            # its restore goes through the 5% stage: let it finish before the canary takes betting_traffic_pct
            # (else the restore's compare-and-swap finds the canary's value and stops, restore_blocked: correct)
            await asyncio.wait_for(dev_env.client.get_workflow_handle("degrade-1-RO-2").result(), 60)
            # a canary: start (the id counter), pause, extend, resume, promote, abort
            r = await cli("canary", "start", "phase2", "--as", "rita", "--reason", "launch", "--time-scale", "1000")
            wid = re.search(r"canary-phase2-\d+", r.out).group(0)
            for args in (("pause", "--as", "oscar", "--reason", "watch it"), ("extend", "--as", "oscar", "--by", "1h"),
                         ("resume", "--as", "rita", "--reason", "fine"), ("promote", "--as", "rita"),
                         ("abort", "--as", "rita", "--reason", "done testing")):
                await cli("canary", args[0], "phase2", *args[1:])
            assert int((await o.get(f"{prefix}canary/phase2/seq")).value) == int(wid.rsplit("-", 1)[1])
            # a P0 incident: ack, tick, resolve
            h = await open_incident(dev_env, task_queue, "hot_wallet", values={"hot_wallet_usd": 40_000})
            await until(h, dev_env, lambda s: s.ready)
            await cli("ack", h.id, "--as", "oscar")
            await cli("tick", h.id, "cold_transfer", "--as", "oscar", "--note", "moved")
            await clear(h, {"hot_wallet_usd": 2_000_000})
            await until(h, dev_env, lambda s: s.condition == "clear")
            await cli("resolve", h.id, "--as", "oscar", "--reason", "refilled")
            await cli("audit", "verify")
            # each ended on its own (restored, aborted), with the worker still there: one left running on the
            # shared dev server would count as "a rollback in progress" for every later test's P0 monitor
            ends = {}
            for w_id in ("rollback-RO-1", "degrade-1-RO-2", wid, h.id):
                try:
                    res = await asyncio.wait_for(dev_env.client.get_workflow_handle(w_id).result(), 60)
                except TimeoutError:
                    r = await cli("status", w_id, "--json")
                    raise AssertionError(f"{w_id} still running: {json.loads(r.out)['awaiting']}") from None
                ends[w_id] = getattr(res, "status", None) or (res.get("status") if isinstance(res, dict) else res)
            assert ends["rollback-RO-1"] == "restored" and ends["degrade-1-RO-2"] == "restored", ends
            await stop_pager(dev_env.client, task_queue)
        # what was written, was written by the worker's etcd user: the laptop's own write is refused
        r = await asyncio.to_thread(run_cli, "switch", "set", "hedge_enabled", "false", "--as", "rita", "--reason", "x",
                                    env={**laptop, "ROLLBACKCTL_SIGNING": "off"})
        assert r.code == 3 and "permission denied" in r.err
        actions = [a.action for a in await SwitchStore(o, prefix).audit()]
        assert {"switch.set", "operator.add", "operator.rotate_key", "rollback.apply", "plan.apply"} <= set(actions)


async def test_console_writes_only_its_own_keys_and_passkeys_are_approved_through_the_worker(
        roles_etcd, dev_env, task_queue, tmp_path):
    """Production shape of the console: its etcd user reads the prefix and writes `<prefix>console/` only
    (pending registrations, sign counters), as the README prescribes. A super admin approves a passkey with
    the signed CLI from a read-only laptop; the worker writes the operator record and the audit."""
    from activities.audit_verify import verify_store
    from tests.support.console_helpers import pending

    prefix = f"/perps-console-{os.urandom(3).hex()}/"
    signers = Signers()
    for args in (("role", "grant-permission", "switch-writer", "readwrite", prefix, "--prefix=true"),
                 ("role", "grant-permission", "switch-reader", "read", prefix, "--prefix=true"),
                 ("role", "add", f"console-writer-{prefix.strip('/')}"),
                 ("role", "grant-permission", f"console-writer-{prefix.strip('/')}", "readwrite", f"{prefix}console/",
                  "--prefix=true"),
                 ("user", "add", f"console-{prefix.strip('/')}:console-pw"),
                 ("user", "grant-role", f"console-{prefix.strip('/')}", "switch-reader"),
                 ("user", "grant-role", f"console-{prefix.strip('/')}", f"console-writer-{prefix.strip('/')}")):
        r = roles_etcd.etcdctl("--user", f"root:{USERS['root']}", *args)
        assert r.returncode == 0, (args, r.stderr)
    async with client(roles_etcd, "root") as root:
        admin = SwitchStore(root, prefix)
        await admin.init(super_admin="alice", public_key=signers.public("alice"))
        await admin.add_operator("rita", Role.RISK_MANAGER, actor="alice", public_key=signers.public("rita"))
    laptop = laptop_env(roles_etcd, dev_env, task_queue, prefix, tmp_path, signers, "alice")
    async with Etcd([roles_etcd.endpoint], username=f"console-{prefix.strip('/')}", password="console-pw") as c, \
            client(roles_etcd, "rollbackctl-worker") as w:
        console_store = SwitchStore(c, prefix)
        rec = await pending(console_store, "rita")  # what /auth/register/finish writes
        await c.put(f"{prefix}console/counters/{rec['credential_id']}", b'{"sign_count": 1}')
        with pytest.raises(EtcdAuthError, match="permission denied"):  # it cannot approve a passkey itself
            await c.put(console_store.operator_key("rita"), b"{}")
        with pytest.raises(EtcdAuthError, match="permission denied"):
            await console_store.apply(req("rita", {"hedge_enabled": False}))
        async with signing_worker(dev_env, SwitchStore(w, prefix), StandIns(), task_queue):
            r = await asyncio.to_thread(run_cli, "passkey", "approve", "rita", rec["code"].lower(), "--as", "alice",
                                        env=laptop, timeout=60)
            assert r.code == 0 and f"passkey {rec['code']} of rita approved by alice (signed" in r.out, r.out + r.err
            r = await asyncio.to_thread(run_cli, "passkey", "list", env=laptop, timeout=60)
            assert r.code == 0 and "approved" in r.out and rec["code"] in r.out, r.out + r.err
        op = await console_store.operator("rita")
        assert [pk.public_key for pk in op.passkeys] == [rec["public_key"]] and await console_store.pending_passkeys() == []
        last = (await console_store.audit())[-1]
        assert last.action == "operator.approve_passkey" and last.actor == "alice"
        sig = last.model_extra["signatures"][0]["request"]
        assert sig["action"] == "operator.approve_passkey" and sig["values"]["public_key"] == rec["public_key"]
        assert (await verify_store(console_store)).ok
