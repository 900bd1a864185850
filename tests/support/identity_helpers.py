"""Helpers for tests of signed requests: operators' keys, signing like the CLI, a worker with signing on."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from temporalio.client import WorkflowUpdateFailedError
from temporalio.worker import Worker

from tests.support.wf_helpers import PagedWorker

from activities.requests import RequestActivities
from activities.switch_activities import SwitchActivities
from core import identity
from tests.support.store_helpers import dump
from contracts.progress import Decision
from workflows.registry import WORKFLOWS

NAMES = ("alice", "sam", "rita", "oscar", "vic")
SIGNED_HISTORIES = __import__("pathlib").Path(__file__).parent.parent / "histories" / "signed"


async def save_signed_history(handle, name: str) -> None:
    """With RECORD_HISTORIES=1, write tests/histories/signed/<name>.json in Temporal's export format: signed
    decisions are bound to the workflow id, so a replay must use the one in its started event (tests/test_replay.py)."""
    import os

    from tests.support.histories_io import export

    if os.environ.get("RECORD_HISTORIES") != "1":
        return
    SIGNED_HISTORIES.mkdir(parents=True, exist_ok=True)
    hist = await handle.fetch_history()
    (SIGNED_HISTORIES / f"{name}.json").write_text(export(hist))


class Signers:
    """One Ed25519 key per operator of the `store` fixture; signs what the CLI would sign."""

    def __init__(self) -> None:
        self.keys: dict[str, Ed25519PrivateKey] = {n: Ed25519PrivateKey.generate() for n in NAMES}

    def public(self, name: str) -> str:
        return identity.public_key_text(self.keys[name])

    async def register(self, store) -> None:
        for name in NAMES:
            await store.rotate_key(name, self.public(name), actor="system", bootstrap=True)

    def request(self, actor: str, key: Ed25519PrivateKey | None = None, **fields: Any) -> identity.Proof:
        fields.setdefault("nonce", identity.new_nonce())
        return identity.sign(key or self.keys[actor], identity.SignedRequest(actor=actor, **fields))

    def decision(self, wid: str, kind: str, step: str, d: Decision, key: Ed25519PrivateKey | None = None) -> Decision:
        """`d` signed as the CLI signs it (for workflow `wid`, decision `kind`, at `step`)."""
        return d.signed(key or self.keys[d.actor], kind, wid, step)

    def start(self, inp, action: str, wid: str, key: Ed25519PrivateKey | None = None):
        inp.proof = identity.sign_start(key or self.keys[inp.requested_by], inp, action, wid)
        return inp


def signing_worker(env, store, standins, task_queue: str, critical_lane: bool = False) -> Worker:
    """A worker as production runs it: signing on, signed direct requests, stand-in core and paging
    (`critical_lane`: and the critical lane's queue, for a critical rollback the CLI starts)."""
    sa = SwitchActivities(store, signing=True)
    ra = RequestActivities(store)
    return PagedWorker(env.client, task_queue=task_queue, workflows=WORKFLOWS, standins=standins,
                       activities=[*sa.methods(), ra.apply, *standins.methods()], critical_lane=critical_lane)


class Unchanged:
    """`async with Unchanged(etcd, prefix):` asserts the prefix is byte-for-byte the same after the block
    (but for keys under `except_` prefixes, e.g. a canary's id counter, bookkeeping that moves on any start)."""

    def __init__(self, etcd, prefix: str, except_: tuple[str, ...] = ()):
        self.etcd, self.prefix, self.except_ = etcd, prefix, tuple(prefix + e for e in except_)

    def _keep(self, kvs: list) -> list:
        return [kv for kv in kvs if not self.except_ or not kv[0].startswith(self.except_)]

    async def __aenter__(self):
        self.before = self._keep(await dump(self.etcd, self.prefix))

    async def __aexit__(self, *exc):
        if exc[0] is None:
            assert self._keep(await dump(self.etcd, self.prefix)) == self.before, "a refused request changed etcd"


async def refused(call, *fragments: str) -> str:
    """The Update is refused by its validator with a message containing every fragment; returns it."""
    with pytest.raises(WorkflowUpdateFailedError) as e:
        await call
    msg = str(e.value.cause)
    for f in fragments:
        assert f in msg, msg
    return msg
