"""Worker subprocesses each behind its own etcd and Temporal proxy, and what their history shows.

The proxies make crash points deterministic without any hook in the product:
- `etcd.hold()` before a step: the worker that picks the step up stops at its first etcd call
  (`held > 0` tells which worker has the task and that it is inside the step);
- then `temporal.freeze()` and `etcd.open()`: the step's etcd transaction commits, but nothing the
  worker does afterwards reaches Temporal; SIGKILL once etcd shows the audit record. That is
  "killed after the transaction, before the activity's completion was recorded".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timezone

from temporalio.api.enums.v1 import EventType

from tests.support.infra import WorkerProc, Workers
from tests.support.proxy import Proxy
from tests.support.waits import wait_until


@dataclass
class Node:
    w: WorkerProc
    etcd: Proxy
    temporal: Proxy

    @property
    def name(self) -> str:
        return self.w.name


class Crew:
    def __init__(self, workers: Workers, proxies, etcd_endpoint: str, temporal_address: str, client, task_queue: str):
        self.workers, self.proxies = workers, proxies
        self.etcd_endpoint, self.temporal_address = etcd_endpoint, temporal_address
        self.client, self.task_queue = client, task_queue
        self.nodes: list[Node] = []
        self.startup_s: list[float] = []

    def spawn(self, name: str, hold_etcd: bool = False) -> Node:
        pe, pt = self.proxies(self.etcd_endpoint), self.proxies(self.temporal_address)
        if hold_etcd:
            pe.hold()
        w = self.workers.start(name, ROLLBACKCTL_ETCD_ENDPOINTS=pe.endpoint, TEMPORAL_ADDRESS=pt.endpoint)
        n = Node(w, pe, pt)
        self.nodes.append(n)
        return n

    async def ready(self, n: Node) -> Node:
        self.startup_s.append(await self.workers.wait_polling(self.client, self.task_queue, n.w))
        return n

    async def start(self, name: str, hold_etcd: bool = False) -> Node:
        return await self.ready(self.spawn(name, hold_etcd))

    async def holder(self, candidates: list[Node], timeout: float = 30.0) -> Node:
        """The one candidate whose held etcd proxy saw bytes: it has the task and waits inside the step."""
        def who():
            hit = [n for n in candidates if n.etcd.held > 0]
            return hit[0] if hit else None
        return await wait_until(who, timeout, "a worker to start the step (etcd bytes held)", every=0.01)


def _ts(ev) -> float:
    return ev.event_time.ToDatetime().replace(tzinfo=timezone.utc).timestamp()


async def task_starts(handle) -> list[tuple[float, str]]:
    """(time, worker identity) of every workflow task started, in order."""
    out = []
    async for ev in handle.fetch_history_events():
        if ev.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            out.append((_ts(ev), ev.workflow_task_started_event_attributes.identity))
    return out


async def event_counts(handle) -> dict[str, int]:
    out: dict[str, int] = {}
    async for ev in handle.fetch_history_events():
        name = EventType.Name(ev.event_type).removeprefix("EVENT_TYPE_")
        out[name] = out.get(name, 0) + 1
    return out


async def takeover_s(handle, killed_at: float, successor: WorkerProc) -> float:
    """From the SIGKILL to the successor starting the workflow's next task (from the history)."""
    for t, ident in await task_starts(handle):
        if t >= killed_at and ident == successor.identity:
            return t - killed_at
    raise AssertionError(f"{successor.name} never started a task of {handle.id} after the kill")


async def patched(handle, patch_id: str) -> bool:
    """Whether the workflow's history holds the marker of `workflow.patched(patch_id)`."""
    async for ev in handle.fetch_history_events():
        if ev.event_type == EventType.EVENT_TYPE_MARKER_RECORDED and patch_id.encode() in ev.SerializeToString():
            return True
    return False


def now() -> float:
    return time.time()
