"""The etcd client keeps etcd's own client rules (core/etcd.py), against a real etcd behind proxies.

- etcd clientv3 (client/v3/retry.go): reads are retried on Unavailable; "mutable requests (e.g. Put,
  Delete, Txn) should only be retried when ... initial connection has not been established ...
  otherwise it violates write-at-most-once semantics" (isSafeRetryMutableRPC).
- Errors are etcd's: a gRPC status and an exact description (api/v3rpc/rpctypes/error.go).
- The switch store retries writes anyway (Temporal retries its activity), because every write it makes
  is guarded: proven here for every write path by sending each committed transaction again.
"""

from __future__ import annotations

import uuid

import grpc
import pytest

from contracts.changes import SeenRecord
from activities.switch_store import SwitchStore
from contracts.roles import Role
from core import etcd as etcd_mod
from core.etcd import Etcd, EtcdOutcomeUnknown, Failure, Put, classify
from tests.support.store_helpers import dump, req


@pytest.mark.parametrize("code,details,kind", [
    (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader", Failure.ELSEWHERE),
    (grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out", Failure.ELSEWHERE),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", Failure.ELSEWHERE),
    (grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token", Failure.TOKEN),
    (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied", Failure.AUTH),
    (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password", Failure.AUTH),
    (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted", Failure.COMPACTED),
    # a description that merely mentions a word is not that error (no substring matching)
    (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided (token)", Failure.OTHER),
    (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision", Failure.OTHER),
])
def test_errors_are_classified_by_status_and_etcds_description(code, details, kind):
    assert classify(code, details) is kind


async def _connected(client: Etcd) -> None:
    await client.get("/warm-up")  # channel READY through the proxy


async def test_an_unanswered_write_is_not_retried_elsewhere_and_says_its_outcome_is_unknown(etcd_server, proxies):
    """A Txn held at the first endpoint times out: the client does not send it to the second endpoint
    (at most once) and says it may have been applied; released, it may land: the outcome was unknown,
    and only a guarded retry (the store's) is safe."""
    p = proxies(etcd_server.endpoint)
    key = f"/rules-{uuid.uuid4().hex[:8]}/k"
    c = Etcd([p.endpoint, etcd_server.endpoint], timeout=1.0)
    direct = Etcd([etcd_server.endpoint])
    try:
        await _connected(c)
        p.hold()
        guard = [etcd_mod.Compare(key, "create", "==", 0)]  # as every store write is guarded
        with pytest.raises(EtcdOutcomeUnknown, match="may or may not have been applied"):
            await c.txn(guard, [Put(key, b"v1")])
        assert await direct.get(key) is None  # not sent to the second endpoint
        p.open()  # the held request reaches etcd after all, followed by the client's cancel: whether etcd
        # applied it depends on which it processed first -- exactly why the client cannot know
        ok, _ = await direct.txn(guard, [Put(key, b"guarded retry")])
        got = (await direct.get(key)).value
        assert (ok, got) in ((True, b"guarded retry"), (False, b"v1"))  # a guarded retry never writes twice
    finally:
        await c.close()
        await direct.close()


async def test_an_unanswered_read_moves_to_the_next_endpoint(etcd_server, proxies):
    p = proxies(etcd_server.endpoint)
    c = Etcd([p.endpoint, etcd_server.endpoint], timeout=1.0)
    try:
        await _connected(c)
        direct = Etcd([etcd_server.endpoint])
        await direct.put("/rules-read/k", b"x")
        await direct.close()
        p.hold()
        got = await c.get("/rules-read/k")
        assert got is not None and got.value == b"x", (got, c.endpoint)  # reads repeat safely: the next endpoint
        assert c.endpoint == etcd_server.endpoint
    finally:
        p.open()
        await c.close()


async def test_a_write_that_could_not_connect_goes_to_the_next_endpoint(etcd_server, proxies):
    """Refused before anything was sent: provably not applied, so the next endpoint takes it."""
    p = proxies(etcd_server.endpoint)
    p.cut()
    key = f"/rules-{uuid.uuid4().hex[:8]}/k"
    c = Etcd([p.endpoint, etcd_server.endpoint], timeout=1.0, connect_timeout=0.5)
    try:
        ok, _ = await c.txn([], [Put(key, b"once")])
        assert ok and (await c.get(key)).value == b"once"
    finally:
        await c.close()


class RecordingEtcd(Etcd):
    """An etcd client that keeps every committed transaction (compares and operations) it sent."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.committed: list[tuple[list, list]] = []
        self.puts: list[str] = []

    async def txn(self, compare, success, failure=()):
        ok, rev = await super().txn(compare, success, failure)
        if ok:
            self.committed.append((list(compare), list(success)))
        return ok, rev

    async def put(self, key, value):
        self.puts.append(key)
        return await super().put(key, value)


async def test_every_write_the_store_makes_is_guarded_so_a_retried_commit_cannot_land_twice(etcd_server, prefix):
    """The store may retry after EtcdOutcomeUnknown because of this: each of its write paths is one guarded
    transaction, and sending any committed one again fails its compares and changes nothing."""
    rec = RecordingEtcd([etcd_server.endpoint])
    store = SwitchStore(rec, prefix)
    try:
        await store.init(super_admin="alice", actor="alice")  # init, add_operator (bootstrap)
        await store.add_operator("rita", Role.RISK_MANAGER, actor="alice")
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from core import identity

        await store.rotate_key("rita", identity.public_key_text(Ed25519PrivateKey.generate()), actor="alice")
        await store.apply(req("rita", {"hedge_enabled": False}))  # apply (change id marker)
        await store.apply(req("alice", {"hedge_max_leverage": 2.0}, expected={"hedge_max_leverage": 3.0}))
        await store.record_seen(SeenRecord(event_id="E9", event="acknowledged", by="o", at="t", dedup_key="w/p1:L1",
                                           source="w"))
        await store.advance_counter("canary/phase3/seq", 4)
        assert rec.puts == []  # no unguarded write path
        assert len(rec.committed) >= 8
        for cmp, ops in rec.committed:
            assert cmp, f"an unguarded transaction: {ops}"
        before = await dump(rec, prefix)
        for cmp, ops in rec.committed:  # each sent again, as a blind retry would
            ok, _ = await rec.txn(cmp, ops)
            assert not ok, f"a repeated write committed again: {[o.key for o in ops]}"
        assert await dump(rec, prefix) == before
    finally:
        await rec.close()
