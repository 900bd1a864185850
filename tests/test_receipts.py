"""Consumers' receipts (core/watcher.Receipt): each consumer instance says, under a lease, which store
revision it has applied. Real etcd: leases expire on etcd's own clock (an instance that dies without a
word drops out), a clean stop revokes its lease (gone at once), and `rollbackctl consumers` lists them."""

from __future__ import annotations

import asyncio
import json

from core.watcher import SwitchWatcher
from tests.support.fixtures_sim import apply
from tests.support.store_helpers import run_cli
from tests.support.waits import wait_for_value


async def receipts(store) -> dict[str, dict]:
    rows, _ = await store.consumers()
    return {r["id"]: r for r in rows}


async def test_every_instance_reports_what_it_applied_and_drops_out_when_gone(store):
    a = SwitchWatcher(store.etcd, store.prefix, observe=False, consumer_id="core-a")
    b = SwitchWatcher(store.etcd, store.prefix, observe=False, consumer_id="core-b")
    b.receipt.ttl_s, b.receipt.every_s = 2, 0.5
    await a.start()
    await b.start()
    try:
        res = await apply(store, "alice", routing_mode="BETTING_MODE")
        got = await wait_for_value(lambda: receipts(store), lambda r: all(
            r.get(i, {}).get("applied_revision", 0) >= res.revision for i in ("core-a", "core-b")), 10,
            "both instances to report the change applied")
        assert got["core-a"]["pid"] > 0 and got["core-a"]["host"]
        _, matrix = await store.consumers()
        assert matrix == res.revision
        # b dies without a word (its refresh stops; nothing revokes its lease): gone once etcd expires it
        b.receipt._task.cancel()
        await wait_for_value(lambda: receipts(store), lambda r: "core-b" not in r, 15, "b's lease to expire")
        assert "core-a" in await receipts(store)
    finally:
        await b.stop()
        await a.stop()
    assert await receipts(store) == {}  # a clean stop revokes at once


async def test_consumers_lists_stragglers(store, etcd_server):
    a = SwitchWatcher(store.etcd, store.prefix, observe=False, consumer_id="core-a")
    await a.start()
    try:
        res = await apply(store, "alice", hedge_max_leverage=4.5)
        await wait_for_value(lambda: receipts(store), lambda r: r["core-a"]["applied_revision"] >= res.revision, 10,
                             "core-a to apply")
        lease = await store.etcd.lease_grant(30)  # an instance stuck before the change
        await store.etcd.put(f"{store.prefix}consumers/core-old", json.dumps(
            {"id": "core-old", "applied_revision": res.revision - 1, "at": 0, "host": "h", "pid": 1}).encode(), lease=lease)
        env = {"ROLLBACKCTL_ETCD_ENDPOINTS": etcd_server.endpoint, "ROLLBACKCTL_ETCD_PREFIX": store.prefix}
        r = await asyncio.to_thread(run_cli, "consumers", "--json", env=env)
        assert r.code == 0, r.err
        out = json.loads(r.out)
        assert out["matrix_revision"] == res.revision
        assert {c["id"]: c["behind"] for c in out["consumers"]} == {"core-a": False, "core-old": True}
        r = await asyncio.to_thread(run_cli, "consumers", env=env)
        assert f"behind the last change ({res.revision}): core-old" in r.out, r.out
        await store.etcd.lease_revoke(lease)
    finally:
        await a.stop()
