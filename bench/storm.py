"""The critical path under a storm: a critical cross-module rollback started while 200 P0 incidents open
and 200 rollbacks run, start -> its change set applied at the simulator (issue target: p99 <= 300 ms).

One run, paired figures: the critical rollback on a quiet stack first; then, for each isolation variant
(VARIANTS below), a fresh storm (`bench.concurrency` and `bench.incidents` at full size, started together)
with one critical rollback a second while it lasts. Each sample is signed as the CLI signs and timed from
just before its start request to the moment the simulator reports the revision of that rollback's own
change set (its audit record, followed with a watch on the audit prefix: the storm's rollbacks change the
same switches, so a switch's value alone would not say whose change arrived). Each is terminated once
applied."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import timedelta

import httpx

from bench.stack import BenchStack, wait_applied
from bench.stats import summary
from core.aio import wait_set
from core.etcd import EtcdUnavailable
from core.temporal_client import connect
from manual.rollback import Durations, Scope, Severity
from workflows.models import RollbackInput

QUICK = Durations(observe=timedelta(seconds=1), check_interval=timedelta(seconds=1))


class AuditRevisions:
    """The commit revision of each workflow's change set, from a watch on `<prefix>audit/`."""

    def __init__(self, st: BenchStack):
        self.st = st
        self.by_source: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "AuditRevisions":
        rev = await self.st.etcd.put(f"{self.st.store.prefix}bench/storm-mark", b"1")
        self._task = asyncio.create_task(self._follow(rev))
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _follow(self, rev: int) -> None:
        while True:
            try:
                async for batch in self.st.etcd.watch_prefix(f"{self.st.store.prefix}audit/", rev):
                    for ev in batch:
                        rev = ev.kv.mod_revision + 1
                        if ev.type == "put":
                            src = json.loads(ev.kv.value).get("source") or ""
                            self.by_source.setdefault(src, ev.kv.mod_revision)
                    self._changed.set()
            except EtcdUnavailable:
                continue

    async def revision_of(self, wid: str, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while wid not in self.by_source:
            self._changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{wid}: no audit record within {timeout:g}s")
            await wait_set(self._changed, left)
        return self.by_source[wid]


# What each isolation measure buys, in one run: the critical rollback started
#   shared   - on the main task queue at the default priority (what there was before the critical lane),
#   priority - on the main task queue at the critical lane's priority (Temporal's priority key 1),
#   lane     - on the critical lane: its own queue and worker slots, priority 1 (what `rollback start` does).
# All three flip in a local activity and start with eager start requested (a no-op here and in the CLI: eager
# start needs a worker in the starting process; the worker's own starts get it).
#   process  - the same, with a worker process of its own serving the critical lane beside the stack's worker
#              (which serves both queues): its own CPU share and event loop under the storm's load.
VARIANTS = ("shared", "priority", "lane", "process")


async def critical_sample(st: BenchStack, client, http: httpx.AsyncClient, audit: AuditRevisions,
                          tag: str, variant: str = "lane") -> float:
    """ms from a signed start of a critical cross-module rollback to its change set applied."""
    from temporalio.common import Priority

    from manual.rollback import CRITICAL_PRIORITY_KEY

    inc = f"storm-crit-{tag}-{uuid.uuid4().hex[:8]}"
    wid = f"rollback-{inc}"
    inp = st.sign_start(RollbackInput(incident_id=inc, summary="bench", severity=Severity.CRITICAL,
                                      scope=Scope.CROSS, requested_by="oscar", reason="storm benchmark",
                                      drill=True, durations=QUICK), "rollback.start", wid)
    queue = st.temporal.task_queue if variant in ("shared", "priority") else st.temporal.critical_task_queue
    lane = {} if variant == "shared" else {"priority": Priority(priority_key=CRITICAL_PRIORITY_KEY)}
    t0 = time.time()
    h = await client.start_workflow("RollbackWorkflow", inp, id=wid, task_queue=queue, request_eager_start=True,
                                    **lane)
    rev = await audit.revision_of(wid)
    at = await wait_applied(http, st.core.url.rstrip("/"), rev, timeout=60.0, every=0.002)
    await h.terminate("benchmark sample taken")
    return (at - t0) * 1000


async def storm_samples(st: BenchStack, client, http, audit: AuditRevisions, variant: str, rollbacks: int,
                        incidents: int, samples: int) -> tuple[list[float], float]:
    """Start the storm; one critical rollback at a time, one a second at most, while it lasts (an on-call's
    flip in the middle of it: back to back they would be a storm of critical pages of their own)."""
    from bench import concurrency
    from bench import incidents as incidents_bench

    t0 = time.monotonic()
    storm = [asyncio.create_task(concurrency.run(st, rollbacks=rollbacks)),
             asyncio.create_task(incidents_bench.run(st, incidents=incidents, wait_paged=False))]
    out: list[float] = []
    try:
        while not all(t.done() for t in storm) and len(out) < samples:
            began = time.monotonic()
            out.append(await critical_sample(st, client, http, audit, variant, variant))
            print(f"    {variant}: critical rollback {len(out)} in the storm: {out[-1]:.0f} ms", flush=True)
            await asyncio.wait(storm, timeout=max(0.0, 1.0 - (time.monotonic() - began)))
    finally:
        for t in storm:  # the samples are what this measures: the storm's own figures are concurrency's and
            t.cancel()   # incidents' (what is left is terminated by the reset before the next storm)
        await asyncio.gather(*storm, return_exceptions=True)
    return out, time.monotonic() - t0


async def run(st: BenchStack, rollbacks: int = 200, incidents: int = 200, quiet: int = 10,
              samples: int = 20) -> dict:
    from bench.stack import reset
    from bench.takeover import _spawn_standby

    client = await connect(st.temporal)
    out: dict = {}
    async with httpx.AsyncClient(timeout=10) as http, AuditRevisions(st) as audit:
        out["quiet_lane_start_to_applied_ms"] = summary(
            [await critical_sample(st, client, http, audit, "quiet") for _ in range(quiet)])
        for variant in VARIANTS:
            await reset(st)
            extra = _spawn_standby(st, 0, ROLLBACKCTL_WORKER_LANES="critical") if variant == "process" else None
            try:
                got, wall = await storm_samples(st, client, http, audit, variant, rollbacks, incidents, samples)
            finally:
                if extra is not None:
                    extra.terminate()
                    extra.wait(30)
            out[f"storm_{variant}_start_to_applied_ms"] = summary(got)
            out[f"storm_{variant}_samples_over_s"] = round(wall, 1)
    out["storm"] = f"{rollbacks} rollbacks and {incidents} P0 incidents started at once, for each variant"
    out["critical_task_queue"] = st.temporal.critical_task_queue
    return out
