"""Consumer-side switch watcher (used by the trading core / simulator).

Loads every switch, then follows the etcd watch from that revision. Exposes the current values
and calls back on each change. A dropped watch (etcd restart, network) resumes from the last seen
revision + 1, so no change is missed; a compacted revision re-reads everything and reports what
differs, then watches on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from core import metrics
from core.etcd import Etcd, EtcdCompacted, EtcdError, EtcdUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SwitchUpdate:
    name: str
    value: Any
    revision: int
    record: dict[str, Any]


Callback = Callable[[SwitchUpdate], Awaitable[None] | None]


def _observe_applied(name: str, rec: dict[str, Any], revision: int) -> None:
    """Propagation: the change's audited time (its record's updated_at, written in the same etcd
    transaction as its audit record) to now, once this consumer has applied it. Across hosts this
    includes their clock difference (NTP keeps it to milliseconds)."""
    metrics.WATCH_REVISION.set(revision)
    at = rec.get("updated_at")
    if not at:
        return
    try:
        t = datetime.fromisoformat(str(at).replace("Z", "+00:00"))
    except ValueError:
        return
    metrics.SWITCH_PROPAGATION.labels(name).observe(max(0.0, time.time() - t.timestamp()))


async def _cancelled(task: asyncio.Task | None) -> None:
    """Cancel a background task and wait until it has ended (its own errors are not the caller's)."""
    if task:
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass


class Receipt:
    """This consumer instance's receipt, `<prefix>consumers/<id>` = {"id", "applied_revision", "at", "host",
    "pid"}: the store revision it has applied, written after each change it applied and refreshed every
    `every_s` under a lease of `ttl_s`, so an instance that dies drops out when its lease expires (a clean
    stop revokes it at once). What `rollbackctl consumers` lists; a write that fails never stops the watch.
    The consumer's etcd user needs write access to `<prefix>consumers/` only."""

    def __init__(self, etcd: Etcd, prefix: str, consumer_id: str, ttl_s: int = 6, every_s: float = 2.0):
        import os
        import socket

        if not consumer_id or "/" in consumer_id or len(consumer_id) > 128:
            raise ValueError(f"consumer id {consumer_id!r}: 1-128 characters, no '/'")
        self.etcd, self.key, self.id = etcd, f"{prefix}consumers/{consumer_id}", consumer_id
        self.ttl_s, self.every_s = ttl_s, every_s
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.lease = 0
        self.revision = 0
        self.failures = 0
        self._task: asyncio.Task | None = None

    async def report(self, revision: int, renew: bool = False) -> None:
        self.revision = max(self.revision, revision)
        try:
            if renew or not self.lease:
                self.lease = await self.etcd.lease_grant(self.ttl_s)  # the old one expires by itself
            body = {"id": self.id, "applied_revision": self.revision, "at": time.time(), "host": self.host,
                    "pid": self.pid}
            await self.etcd.put(self.key, json.dumps(body, sort_keys=True).encode(), lease=self.lease)
        except EtcdError as e:
            self.failures += 1
            log.warning("consumer receipt %s not written (%s); retrying", self.key, e)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.report(self.revision, renew=True)

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh(), name="consumer-receipt")

    async def stop(self) -> None:
        await _cancelled(self._task)
        if self.lease:
            try:
                await self.etcd.lease_revoke(self.lease)  # gone at once, not after the TTL
            except EtcdError:
                pass


class SwitchWatcher:
    def __init__(self, etcd: Etcd, prefix: str = "/perps/", on_change: Callback | None = None, observe: bool = True,
                 consumer_id: str | None = None):
        self.etcd = etcd
        self.observe = observe  # record propagation (core/metrics.py): a consumer does; an exporter does not
        self.records: dict[str, dict[str, Any]] = {}  # each switch's last etcd record (value, updated_at/by)
        self.base = f"{prefix}switches/"
        self.on_change = on_change
        self.values: dict[str, Any] = {}
        self.revisions: dict[str, int] = {}
        self.revision = 0  # highest store revision seen
        self.reconnects = 0
        self.last_error: str | None = None  # why the watch last dropped (e.g. "etcdserver: no leader")
        self.errors: list[str] = []  # the last few reasons, oldest first
        self.ready = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.receipt = Receipt(etcd, prefix, consumer_id) if consumer_id else None

    async def start(self) -> None:
        await self._load(initial=True)
        self._task = asyncio.create_task(self._run(), name="switch-watcher")
        if self.receipt is not None:
            await self.receipt.report(self.revision)
            self.receipt.start()
        self.ready.set()

    async def stop(self) -> None:
        if self.receipt is not None:
            await self.receipt.stop()
        await _cancelled(self._task)

    async def _emit(self, upd: SwitchUpdate) -> None:
        if self.on_change is None:
            return
        try:
            r = self.on_change(upd)
            if asyncio.iscoroutine(r):
                await r
        except Exception:  # a consumer bug must not stop the watch
            log.exception("switch watcher callback failed for %s", upd.name)

    async def _load(self, initial: bool) -> None:
        while True:
            try:
                kvs, rev = await self.etcd.get_prefix(self.base)
                break
            except EtcdUnavailable:
                await asyncio.sleep(0.2)
        seen = set()
        for kv in kvs:
            name = kv.key[len(self.base):]
            seen.add(name)
            rec = json.loads(kv.value)
            changed = self.revisions.get(name) != kv.mod_revision
            self.values[name], self.revisions[name] = rec.get("value"), kv.mod_revision
            self.records[name] = rec
            if changed and not initial:
                await self._emit(SwitchUpdate(name, rec.get("value"), kv.mod_revision, rec))
        for name in [n for n in self.values if n not in seen]:
            self.values.pop(name)
            self.revisions.pop(name, None)
            if not initial:
                await self._emit(SwitchUpdate(name, None, rev, {}))
        self.revision = rev

    async def _run(self) -> None:
        delay = 0.05
        while True:
            try:
                async for events in self.etcd.watch_prefix(self.base, self.revision + 1):
                    delay = 0.05
                    for ev in events:
                        name = ev.kv.key[len(self.base):]
                        if ev.type == "put":
                            rec = json.loads(ev.kv.value)
                            self.values[name], self.revisions[name] = rec.get("value"), ev.kv.mod_revision
                            self.records[name] = rec
                        else:
                            rec = {}
                            self.values.pop(name, None)
                            self.records.pop(name, None)
                            self.revisions.pop(name, None)
                        self.revision = max(self.revision, ev.kv.mod_revision)
                        await self._emit(SwitchUpdate(name, rec.get("value"), ev.kv.mod_revision, rec))
                        if self.observe:
                            _observe_applied(name, rec, self.revision)
                    if self.receipt is not None:  # applied (callbacks ran): say so
                        await self.receipt.report(self.revision)
            except EtcdCompacted:
                log.warning("switch watch: revision %s compacted; re-reading all switches", self.revision + 1)
                await self._load(initial=False)
            except (EtcdUnavailable, EtcdError) as e:
                self.reconnects += 1
                metrics.WATCH_RECONNECTS.inc()
                self.last_error = str(e)
                self.errors = [*self.errors[-19:], self.last_error]
                log.warning("switch watch dropped (%s); resuming from revision %s", e, self.revision + 1)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
