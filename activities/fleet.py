"""Wait for the fleet: every live consumer's receipt at a revision (contracts/fleet.py).

One read of `<prefix>consumers/`, then a watch on it from the revision of that read: no polling, and
a receipt written between the two is not missed. A consumer whose lease ends meanwhile (a dead
instance, or a clean stop) drops out; one that registers meanwhile counts too (it loaded the matrix
before it registered, so its first receipt already says what it applied). The clock starts when the
wait starts, just after the write (the activity runs right after `switch.apply`): a consumer's
time-to-apply is counted from there, so the scheduling gap of a few milliseconds is not counted.
"""

from __future__ import annotations

import asyncio
import json
import time

from contracts.fleet import FleetApplied, FleetWaitInput, Straggler
from core.aio import within
from core.etcd import Etcd, EtcdError


def _receipt(value: bytes) -> dict | None:
    try:
        r = json.loads(value)
    except ValueError:
        return None
    return r if isinstance(r, dict) and isinstance(r.get("applied_revision"), int) else None


async def wait_fleet(etcd: Etcd, prefix: str, inp: FleetWaitInput, clock=time.monotonic) -> FleetApplied:
    base = f"{prefix}consumers/"
    start = clock()
    live: dict[str, dict] = {}
    applied_at: dict[str, float] = {}
    dropped: list[str] = []

    def see(cid: str, r: dict | None, now: float) -> None:
        if r is None:
            return
        live[cid] = r
        if r["applied_revision"] >= inp.revision and cid not in applied_at:
            applied_at[cid] = now

    def drop(cid: str) -> None:  # its lease ended: it no longer counts (named if it had not applied)
        if live.pop(cid, None) is not None and cid not in applied_at:
            dropped.append(cid)

    def done() -> bool:
        return all(cid in applied_at for cid in live)

    async def read() -> int:
        """(Re)read every receipt: the first time, and after a dropped watch (what changed meanwhile)."""
        kvs, rev = await etcd.get_prefix(base)
        now = clock() - start
        present = {kv.key[len(base):] for kv in kvs}
        for cid in [c for c in live if c not in present]:
            drop(cid)
        for kv in kvs:
            see(kv.key[len(base):], _receipt(kv.value), now)
        return rev

    async def follow(rev: int) -> None:
        while True:
            try:
                async for batch in etcd.watch_prefix(base, rev + 1):
                    now = clock() - start
                    for ev in batch:
                        cid = ev.kv.key[len(base):]
                        rev = max(rev, ev.kv.mod_revision)
                        if ev.type == "delete":
                            drop(cid)
                        else:
                            see(cid, _receipt(ev.kv.value), now)
                    if done():
                        return
            except EtcdError:  # the watch dropped (etcd restarting, compaction): read again, watch from there
                while True:  # until etcd answers or the caller's deadline cancels this
                    await asyncio.sleep(0.1)
                    try:
                        rev = await read()
                        break
                    except EtcdError:
                        continue
                if done():
                    return

    rev = await read()  # etcd unreachable here: the caller's error (nothing could be said)
    if not done():
        try:
            await within(max(0.0, inp.timeout_s - (clock() - start)), follow(rev))
        except (TimeoutError, EtcdError):
            pass  # what was seen by then is the answer: who had not applied is named
    waited = clock() - start
    wall = time.time()
    ids = sorted(set(live) | set(applied_at))
    on_time = {c: round(applied_at[c], 4) for c in ids if c in applied_at and applied_at[c] <= inp.class_s}
    stragglers = []
    for c in ids:
        if c in on_time:
            continue
        r = live.get(c, {})
        seen = r.get("at")
        stragglers.append(Straggler(
            id=c, applied_revision=int(r.get("applied_revision", inp.revision if c in applied_at else 0)),
            applied_after_s=round(applied_at[c], 4) if c in applied_at else None,
            seen_s_ago=round(wall - float(seen), 1) if isinstance(seen, (int, float)) else None))
    return FleetApplied(revision=inp.revision, class_s=inp.class_s, consumers=ids, on_time=on_time,
                        stragglers=stragglers, dropped=sorted(set(dropped)), waited_s=round(waited, 4))
