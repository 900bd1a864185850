"""Concurrent writers on one switch (and across switches): no lost update, one audit record per
successful change set, the audit chain intact. Writers use separate etcd clients, as separate
processes would."""

from __future__ import annotations

import asyncio

import pytest

from activities.switch_store import Conflict, SwitchStore
from core.etcd import Etcd
from tests.support.store_helpers import req
from tests.support.store_helpers import audit_raw, verify_chain

N = 20
NAME = "liquidation_check_interval_ms"  # int, default 500


@pytest.fixture
async def clients(etcd_server):
    cs = [Etcd([etcd_server.endpoint]) for _ in range(4)]
    yield cs
    for c in cs:
        await c.close()


async def _records_for(store, name):
    return [r for r in await store.audit() if any(c.switch == name for c in r.changes) and r.action != "init"]


async def test_compare_and_swap_increments_lose_nothing(store, clients, prefix):
    """Each writer reads the value and writes value + 1 expecting what it read (`expected`):
    20 increments end at default + 20 whatever the interleaving."""
    stores = [SwitchStore(clients[i % len(clients)], prefix) for i in range(N)]
    conflicts = 0

    async def incr(s: SwitchStore, i: int) -> None:
        nonlocal conflicts
        while True:
            cur = (await s.get(NAME)).value
            try:
                await s.apply(req("rita", {NAME: cur + 1}, expected={NAME: cur}, reason=f"writer {i}"))
                return
            except Conflict:
                conflicts += 1

    await asyncio.wait_for(asyncio.gather(*[incr(s, i) for i, s in enumerate(stores)]), 60)
    assert (await store.get(NAME)).value == 500 + N
    recs = await _records_for(store, NAME)
    assert len(recs) == N
    assert [(r.changes[0].old, r.changes[0].new) for r in recs] == [(500 + i, 501 + i) for i in range(N)]
    assert conflicts > 0, "the writers never overlapped: the test proved nothing"
    verify_chain(await audit_raw(store.etcd, prefix))


async def test_blind_writers_all_land_and_each_saw_the_latest(store, clients, prefix):
    """Without `expected` every change set lands (retried on a moved revision), and each audit
    record's old value is the previous record's new value: no write was based on a stale read."""
    stores = [SwitchStore(clients[i % len(clients)], prefix) for i in range(N)]
    values = [1000 + i for i in range(N)]
    results = await asyncio.wait_for(asyncio.gather(*[
        s.apply(req("rita", {NAME: v, "hedge_enabled": v % 2 == 0}, reason=f"writer {v}"))
        for s, v in zip(stores, values)]), 60)
    assert all(not r.replayed for r in results)
    recs = await _records_for(store, NAME)
    assert len(recs) == N
    assert sorted(r.changes[0].new for r in recs) == values
    for kind in (NAME, "hedge_enabled"):
        chain = [next(c for c in r.changes if c.switch == kind) for r in recs]
        assert chain[0].old == {NAME: 500, "hedge_enabled": True}[kind]
        for a, b in zip(chain, chain[1:]):
            assert b.old == a.new, f"{kind}: a write was based on a stale value (lost update)"
    assert (await store.get(NAME)).value == recs[-1].changes[0].new
    # the audit records are in commit order: revisions strictly increase with the ids
    revs = [r.revision for r in recs]
    assert revs == sorted(revs) and len(set(revs)) == N
    verify_chain(await audit_raw(store.etcd, prefix))


async def test_writers_on_different_switches_all_land(store, clients, prefix):
    names = ["hedge_max_leverage", "betting_traffic_pct", "force_hl_latency_ms", "normal_threshold",
             "betting_threshold", "hedge_dry_run", "routing_mode", "auto_mode_switch"]
    values = [2.0, 50, 750, 20_000, 60_000, True, "NORMAL_MODE", True]
    base = len(await store.audit())
    await asyncio.wait_for(asyncio.gather(*[
        SwitchStore(clients[i % len(clients)], prefix).apply(req("rita", {n: v}))
        for i, (n, v) in enumerate(zip(names, values))]), 60)
    snap = await store.snapshot()
    assert {n: snap.switches[n].value for n in names} == dict(zip(names, values))
    assert len(await store.audit()) == base + len(names)
    verify_chain(await audit_raw(store.etcd, prefix))
