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
from manual.roles import Role
from rollbackctl.etcd import Etcd, EtcdAuthError
from tests.identity_helpers import Signers, signing_worker
from tests.standins import StandIns
from tests.test_store_helpers import EtcdProcess, dump, req, run_cli

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


async def test_operators_read_only_the_worker_writes(roles_etcd, dev_env, task_queue, tmp_path):
    signers = Signers()
    async with client(roles_etcd, "root") as root:  # bootstrap, once, by an administrator
        admin = SwitchStore(root, PREFIX)
        await admin.init(super_admin="alice", public_key=signers.public("alice"))
        await admin.add_operator("rita", Role.RISK_MANAGER, actor="alice", public_key=signers.public("rita"))
    key_dir = tmp_path / "keys"
    key_dir.mkdir(mode=0o700)
    fd = os.open(key_dir / "rita.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, signers.keys["rita"].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    os.close(fd)
    laptop = {"ROLLBACKCTL_ETCD_ENDPOINTS": roles_etcd.endpoint, "ROLLBACKCTL_ETCD_PREFIX": PREFIX,
              "ROLLBACKCTL_ETCD_USERNAME": "oncall-laptop", "ROLLBACKCTL_ETCD_PASSWORD": USERS["oncall-laptop"],
              "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
              "ROLLBACKCTL_TASK_QUEUE": task_queue, "ROLLBACKCTL_KEY_DIR": str(key_dir)}

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
