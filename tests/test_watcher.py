"""The consumer-side watcher on a real etcd: current values, a callback per change, and no change
missed across a dropped connection, an etcd restart and a compacted revision."""

from __future__ import annotations

import asyncio

import pytest

from manual import switches
from core.etcd import Etcd, EtcdUnavailable
from core.watcher import SwitchUpdate, SwitchWatcher
from tests.support.store_helpers import req
from tests.support.proxy import Proxy
from tests.support.waits import wait_until


class Seen:
    def __init__(self) -> None:
        self.updates: list[SwitchUpdate] = []

    def __call__(self, u: SwitchUpdate) -> None:
        self.updates.append(u)

    def has(self, name: str, value) -> bool:
        return any(u.name == name and u.value == value for u in self.updates)


@pytest.fixture
async def proxy(etcd_server):
    p = Proxy(etcd_server.endpoint).start()
    yield p
    p.close()


async def _watch(endpoints: list[str], prefix: str, cb, **kw) -> tuple[SwitchWatcher, Etcd]:
    client = Etcd(endpoints, **kw)
    w = SwitchWatcher(client, prefix, on_change=cb)
    await asyncio.wait_for(w.start(), 10)
    return w, client


async def _live(w: SwitchWatcher, store, seen: "Seen") -> None:
    """Wait until the watch stream itself is delivering (a change made now arrives)."""
    await store.apply(req("rita", {"force_hl_latency_ms": 501 + len(seen.updates)}))
    await wait_until(lambda: w.values["force_hl_latency_ms"] == 501 + len(seen.updates) - 1
                     and seen.has("force_hl_latency_ms", w.values["force_hl_latency_ms"]), 5, "the watch stream")
    seen.updates.clear()


async def _apply_when_up(store, request, timeout: float = 20.0):
    """Apply once etcd accepts writes again (the same change id: a retry is a no-op)."""
    async def attempt():
        try:
            return await store.apply(request)
        except EtcdUnavailable:
            return None
    return await wait_until(attempt, timeout, "etcd to accept writes", every=0.1)


async def test_loads_every_switch_and_calls_back_on_each_change(store, etcd_server, prefix):
    seen = Seen()
    w, client = await _watch([etcd_server.endpoint], prefix, seen)
    try:
        assert w.values == switches.defaults() and seen.updates == []
        res = await store.apply(req("rita", {"hedge_enabled": False, "routing_mode": "NORMAL_MODE"}))
        await wait_until(lambda: seen.has("hedge_enabled", False) and seen.has("routing_mode", "NORMAL_MODE"),
                         5, "both updates")
        assert {u.name for u in seen.updates} == {"hedge_enabled", "routing_mode"}
        assert all(u.revision == res.revision for u in seen.updates)
        assert seen.updates[0].record["updated_by"] == "rita"
        assert w.values["hedge_enabled"] is False and w.revisions["hedge_enabled"] == res.revision
        assert w.values == (await store.snapshot()).values()
    finally:
        await w.stop()
        await client.close()


async def test_async_callback_and_a_failing_callback_do_not_stop_it(store, etcd_server, prefix):
    got: list[str] = []

    async def cb(u: SwitchUpdate) -> None:
        await asyncio.sleep(0)
        if u.value == 7:
            raise RuntimeError("consumer bug")
        got.append(f"{u.name}={u.value}")

    w, client = await _watch([etcd_server.endpoint], prefix, cb)
    try:
        await store.apply(req("rita", {"betting_traffic_pct": 7}))
        await store.apply(req("rita", {"betting_traffic_pct": 8}))
        await wait_until(lambda: "betting_traffic_pct=8" in got, 5, "the update after the failing callback")
        assert w.values["betting_traffic_pct"] == 8
    finally:
        await w.stop()
        await client.close()


async def test_resumes_after_a_dropped_connection_without_missing_a_change(store, proxy, prefix):
    seen = Seen()
    w, client = await _watch([proxy.endpoint], prefix, seen)
    try:
        await _live(w, store, seen)
        proxy.cut()  # a partition: the stream dies, reconnects are refused
        await wait_until(lambda: w.reconnects >= 1, 5, "the watcher to notice the drop")
        a = await store.apply(req("rita", {"hedge_max_leverage": 2.0}))  # made while it is cut off
        b = await store.apply(req("rita", {"hedge_max_leverage": 2.5}))
        proxy.open()
        await wait_until(lambda: seen.has("hedge_max_leverage", 2.5), 10, "the changes made during the partition")
        # both changes, in order, with their own revisions (replayed from revision + 1, not re-read)
        assert [(u.value, u.revision) for u in seen.updates if u.name == "hedge_max_leverage"] == [
            (2.0, a.revision), (2.5, b.revision)]
        assert w.values == (await store.snapshot()).values()
    finally:
        await w.stop()
        await client.close()


async def test_recovers_from_a_compacted_revision(store, etcd, proxy, prefix):
    seen = Seen()
    w, client = await _watch([proxy.endpoint], prefix, seen)
    try:
        await _live(w, store, seen)
        proxy.cut()
        await wait_until(lambda: w.reconnects >= 1, 5, "the watcher to notice the drop")
        await store.apply(req("rita", {"hedge_max_leverage": 2.0, "betting_traffic_pct": 50}))
        last = await store.apply(req("rita", {"hedge_max_leverage": 1.5}))
        assert w.revision < last.revision - 1
        await etcd.compact(last.revision)  # the watcher's next revision is gone
        proxy.open()
        await wait_until(lambda: seen.has("hedge_max_leverage", 1.5) and seen.has("betting_traffic_pct", 50),
                         10, "the re-read after compaction")
        assert w.values == (await store.snapshot()).values()
        assert w.revision >= last.revision
        # and it keeps watching after the re-read
        after = await store.apply(req("rita", {"betting_traffic_pct": 60}))
        await wait_until(lambda: seen.has("betting_traffic_pct", 60), 5, "a change after the recovery")
        assert w.revisions["betting_traffic_pct"] == after.revision
    finally:
        await w.stop()
        await client.close()


async def test_notices_a_silent_link_and_resumes(store, proxy, prefix):
    """A link that goes silent (no RST, no FIN) is found by unanswered HTTP/2 pings, not hung on."""
    seen = Seen()
    w, client = await _watch([proxy.endpoint], prefix, seen, keepalive_s=5.0, timeout=1.0)
    try:
        await _live(w, store, seen)
        proxy.freeze()
        await wait_until(lambda: w.reconnects >= 1, 12, "an unanswered ping to reveal the silent link")
        await store.apply(req("rita", {"routing_mode": "BETTING_MODE"}))
        proxy.open()
        await wait_until(lambda: seen.has("routing_mode", "BETTING_MODE"), 10, "the change made meanwhile")
    finally:
        await w.stop()
        await client.close()


async def test_survives_an_etcd_restart(store, etcd_server, prefix):
    seen = Seen()
    w, client = await _watch([etcd_server.endpoint], prefix, seen)
    try:
        await store.apply(req("rita", {"betting_traffic_pct": 30}))
        await wait_until(lambda: seen.has("betting_traffic_pct", 30), 5, "the first change")
        etcd_server.restart()
        # a change made as soon as etcd takes writes again, while the watcher is reconnecting
        res = await _apply_when_up(store, req("rita", {"betting_traffic_pct": 31}, change_id="after-restart"))
        await wait_until(lambda: seen.has("betting_traffic_pct", 31), 15, "the change made after the restart")
        assert w.reconnects >= 1
        assert w.values["betting_traffic_pct"] == 31 and w.revisions["betting_traffic_pct"] == res.revision
        # still following
        await store.apply(req("rita", {"betting_traffic_pct": 32}))
        await wait_until(lambda: seen.has("betting_traffic_pct", 32), 5, "a later change")
        assert [u.value for u in seen.updates if u.name == "betting_traffic_pct"] == [30, 31, 32]
    finally:
        await w.stop()
        await client.close()
