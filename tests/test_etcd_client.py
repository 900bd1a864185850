"""core.etcd on a real etcd: several endpoints (failover), unreachable and silent endpoints
(fast, clear errors), transactions, compaction, watches."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from activities.switch_store import SwitchStore
from core import procs
from core.etcd import Compare, Etcd, EtcdCompacted, EtcdOutcomeUnknown, EtcdUnavailable, Put
from core.settings import EtcdSettings
from core.watcher import SwitchWatcher
from tests.support.store_helpers import req
from tests.support.proxy import Proxy
from tests.support.waits import wait_until


def dead_endpoint() -> str:
    return f"127.0.0.1:{procs.free_port()}"  # nothing listens: connection refused


@pytest.fixture
def silent_endpoint():
    """Accepts TCP connections (the kernel does) and never says a word."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield f"127.0.0.1:{s.getsockname()[1]}"
    s.close()


async def test_kv_and_txn(etcd, prefix):
    k = f"{prefix}k"
    rev = await etcd.put(k, b"1")
    kv = await etcd.get(k)
    assert (kv.value, kv.mod_revision, kv.version) == (b"1", rev, 1)
    ok, _ = await etcd.txn([Compare(k, "mod", "==", rev)], [Put(k, b"2")])
    assert ok
    ok, _ = await etcd.txn([Compare(k, "mod", "==", rev)], [Put(k, b"3")])  # stale revision
    assert not ok and (await etcd.get(k)).value == b"2"
    ok, _ = await etcd.txn([Compare(f"{prefix}new", "create", "==", 0), Compare(k, "value", "==", b"2")],
                           [Put(f"{prefix}new", b"x")])
    assert ok
    kvs, _ = await etcd.get_prefix(prefix)
    assert [kv.key for kv in kvs] == [f"{prefix}k", f"{prefix}new"]
    assert await etcd.delete_prefix(prefix) == 2 and await etcd.get(k) is None


async def test_read_takes_keys_and_prefixes_in_one_revision(etcd, prefix):
    """`read` (what an audited change reads before it writes, in one round trip): each key's KV or None,
    each prefix's KVs in key order, all at the revision the reply names (one Txn of ranges; etcd's
    rpc.proto on Txn: "A MultiOp is applied atomically", its lookups included)."""
    await etcd.put(f"{prefix}s/b", b"2")
    await etcd.put(f"{prefix}s/a", b"1")
    rev = await etcd.put(f"{prefix}one", b"x")
    singles, ranges, at = await etcd.read([f"{prefix}one", f"{prefix}none"], [f"{prefix}s/", f"{prefix}empty/"])
    assert at == rev
    assert singles[f"{prefix}one"].value == b"x" and singles[f"{prefix}none"] is None
    assert [(kv.key, kv.value) for kv in ranges[f"{prefix}s/"]] == [(f"{prefix}s/a", b"1"), (f"{prefix}s/b", b"2")]
    assert ranges[f"{prefix}empty/"] == []


async def test_a_read_txn_fails_over_like_a_range_a_write_txn_does_not(etcd_server, prefix):
    """clientv3 retries only what cannot have changed anything (retry.go: a write is nonRepeatable); a Txn
    of ranges alone writes nothing, so a `read` cut off mid-call moves on to the next endpoint, where a
    Txn that writes says its outcome is unknown."""
    proxy = Proxy(etcd_server.endpoint).start()
    try:
        async with Etcd([proxy.endpoint, etcd_server.endpoint], timeout=30) as e:
            await e.put(f"{prefix}a", b"1")
            ch = e._channel
            proxy.hold()
            read = asyncio.create_task(e.read([f"{prefix}a"]))
            write = asyncio.create_task(e.txn([], [Put(f"{prefix}b", b"2")]))
            await wait_until(lambda: len(ch._active_calls) == 2, timeout=10, what="both calls on the channel")
            await e._rotate(ch)
            singles, _, _ = await read
            assert singles[f"{prefix}a"].value == b"1" and e.endpoint == etcd_server.endpoint
            with pytest.raises(EtcdOutcomeUnknown, match="may or may not have been applied"):
                await write
    finally:
        proxy.close()


async def test_fails_over_from_a_dead_first_endpoint(etcd_server, prefix):
    async with Etcd([dead_endpoint(), etcd_server.endpoint]) as e:
        store = SwitchStore(e, prefix)
        await store.init(super_admin="alice")
        res = await store.apply(req("alice", {"hedge_enabled": False}))
        assert res.changes[0].new is False
        assert e.endpoint == etcd_server.endpoint


async def test_fails_over_when_the_current_endpoint_drops(etcd_server, prefix):
    proxy = Proxy(etcd_server.endpoint).start()
    try:
        async with Etcd([proxy.endpoint, etcd_server.endpoint]) as e:
            await e.put(f"{prefix}a", b"1")
            assert e.endpoint == proxy.endpoint
            proxy.cut()
            assert (await e.get(f"{prefix}a")).value == b"1"  # the same call moved on
            assert e.endpoint == etcd_server.endpoint
    finally:
        proxy.close()


async def test_watcher_over_a_dead_first_endpoint(store, etcd_server, prefix):
    seen: list = []
    async with Etcd([dead_endpoint(), etcd_server.endpoint]) as e:
        w = SwitchWatcher(e, prefix, on_change=seen.append)
        await asyncio.wait_for(w.start(), 10)
        try:
            await store.apply(req("rita", {"betting_traffic_pct": 5}))
            await wait_until(lambda: any(u.value == 5 for u in seen), 5, "the update")
        finally:
            await w.stop()


async def test_all_endpoints_dead_is_fast_and_names_each(prefix):
    a, b = dead_endpoint(), dead_endpoint()
    async with Etcd([a, b]) as e:
        t = time.monotonic()
        with pytest.raises(EtcdUnavailable) as err:
            await e.get(f"{prefix}x")
        assert time.monotonic() - t < 2.0
    msg = str(err.value)
    assert a in msg and b in msg and "refused" in msg.lower()


async def test_silent_endpoint_gives_up_after_the_connect_timeout(silent_endpoint, etcd_server, prefix):
    async with Etcd([silent_endpoint], connect_timeout=0.5) as e:
        t = time.monotonic()
        with pytest.raises(EtcdUnavailable, match="no answer within 0.5s"):
            await e.get(f"{prefix}x")
        assert time.monotonic() - t < 3.0
    async with Etcd([silent_endpoint, etcd_server.endpoint], connect_timeout=0.5) as e:
        t = time.monotonic()
        await e.put(f"{prefix}x", b"1")
        assert time.monotonic() - t < 3.0 and e.endpoint == etcd_server.endpoint


def test_settings(monkeypatch):
    monkeypatch.setenv("ROLLBACKCTL_ETCD_ENDPOINTS", "127.0.0.2:2379, etcd-2.internal:2379")
    monkeypatch.setenv("ROLLBACKCTL_ETCD_PREFIX", "/perps-staging/")
    monkeypatch.setenv("ROLLBACKCTL_ETCD_CONNECT_TIMEOUT_S", "0.5")
    s = EtcdSettings()
    assert s.endpoint_list() == ["127.0.0.2:2379", "etcd-2.internal:2379"] and s.prefix == "/perps-staging/"
    e = Etcd.from_settings(s)
    assert e.endpoints == s.endpoint_list() and e.connect_timeout == 0.5 and e.timeout == 5.0
    monkeypatch.setenv("ROLLBACKCTL_ETCD_ENDPOINTS", "nohostport")
    with pytest.raises(ValueError, match="not host:port"):
        EtcdSettings().endpoint_list()
    monkeypatch.setenv("ROLLBACKCTL_ETCD_PREFIX", "perps")
    with pytest.raises(ValueError, match="start and end with '/'"):
        EtcdSettings()


async def test_watch_from_a_compacted_revision_raises(etcd, prefix):
    r1 = await etcd.put(f"{prefix}w", b"1")
    r2 = await etcd.put(f"{prefix}w", b"2")
    await etcd.compact(r2)
    with pytest.raises(EtcdCompacted) as e:
        async for _ in etcd.watch_prefix(prefix, r1):
            pass
    assert e.value.compact_revision == r2
    # from the compaction point on it works
    async def first():
        async for evs in etcd.watch_prefix(prefix, r2):
            return evs
    evs = await asyncio.wait_for(first(), 5)
    assert [(ev.type, ev.kv.value) for ev in evs] == [("put", b"2")]


async def test_a_call_in_flight_when_another_call_fails_over_moves_on_too(etcd_server, prefix):
    """Calls share one channel; a call that fails over closes it (_rotate), and gRPC cancels every call
    still in flight on it: grpc.aio's Channel.close() cancels every active call, which surfaces as
    asyncio.CancelledError in the awaiting task (grpc/aio/_channel.py, _close: call.cancel() for each active
    call), though nobody cancelled that task. Such a read must go on to the next endpoint like the call
    that failed over; a write must say its outcome is unknown; neither may look like a cancellation of the
    caller (seen in CI: the fleet wait, cut off this way, missed a consumer)."""
    proxy = Proxy(etcd_server.endpoint).start()
    try:
        async with Etcd([proxy.endpoint, etcd_server.endpoint], timeout=30) as e:
            await e.put(f"{prefix}a", b"1")
            ch = e._channel
            proxy.hold()  # the requests below reach the proxy and stop there
            read = asyncio.create_task(e.get(f"{prefix}a"))
            write = asyncio.create_task(e.put(f"{prefix}b", b"2"))
            # both calls active on the channel: the set grpc.aio's Channel._close cancels ("Time to cancel
            # existing calls": call.cancel() for each)
            await wait_until(lambda: len(ch._active_calls) == 2, timeout=10, what="both calls on the channel")
            await e._rotate(ch)  # what another call's failover does: close the shared channel
            assert (await read).value == b"1" and e.endpoint == etcd_server.endpoint
            with pytest.raises(EtcdOutcomeUnknown, match="may or may not have been applied"):
                await write
    finally:
        proxy.close()


async def test_a_watch_cut_off_by_another_calls_failover_ends_as_a_dropped_stream(etcd_server, prefix):
    """The same for a watch: its caller must see EtcdUnavailable (and watch again), never a cancellation it
    did not ask for, which would end the watching task in silence."""
    async with Etcd([etcd_server.endpoint, etcd_server.endpoint]) as e:
        rev = await e.put(f"{prefix}a", b"1")
        events = e.watch_prefix(prefix, rev)
        assert [ev.kv.value for ev in await anext(events)] == [b"1"]
        nxt = asyncio.create_task(anext(events))
        ch = e._channel
        await wait_until(lambda: len(ch._active_calls) == 1, timeout=10, what="the watch on the channel")
        await e._rotate(ch)
        with pytest.raises(EtcdUnavailable, match="closed by another call's failover"):
            await nxt
        await events.aclose()
