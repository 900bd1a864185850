"""Temporal Cloud's shape: the critical rollback with every Temporal RPC delayed (issue 21, item 7).

A TCP proxy on loopback (its own thread and event loop) holds each chunk for half the added round
trip in each direction, so every gRPC exchange between Temporal and both its clients (the one
starting the rollback, and a worker run here with the production activities) costs 0, 20 or 50 ms
more, as a Temporal cluster in another building or region would. etcd and the simulator stay local
(they are in the region). Each delay gets its own task queue and worker, in one run, so the figures
are paired: start (eager, signed) -> routing_mode=HL_MODE applied at the simulator.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import datetime, timezone

import httpx

from bench.critical_rollback import _internalization_on, _ms, _wait_switch, QUICK
from bench.stack import BenchStack
from bench.stats import summary
from core.settings import PagingSettings, TemporalSettings, TradingCoreSettings
from core.temporal_client import connect
from manual.rollback import Scope, Severity
from workflows.models import RollbackInput
from workflows.rollback import RollbackWorkflow


class DelayProxy:
    """127.0.0.1:<port> -> upstream, each direction's bytes delivered `one_way_s` after they arrived, in order."""

    def __init__(self, upstream: str, one_way_s: float):
        host, _, port = upstream.rpartition(":")
        self.up = (host, int(port))
        self.one_way_s = one_way_s
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="delay-proxy", daemon=True)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        q: asyncio.Queue = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await q.get()
                if data is None:
                    w.close()
                    return
                wait = due - self.loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                w.write(data)
                await w.drain()

        t = asyncio.create_task(deliver())
        try:
            while data := await r.read(65536):
                q.put_nowait((self.loop.time() + self.one_way_s, data))
        except OSError:
            pass
        q.put_nowait((0.0, None))
        await t

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(*self.up)
        except OSError:
            cw.close()
            return
        await asyncio.gather(self._pipe(cr, uw), self._pipe(ur, cw), return_exceptions=True)

    def start(self) -> "DelayProxy":
        self.thread.start()

        async def listen():
            server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            return server, server.sockets[0].getsockname()[1]

        self.server, self.port = asyncio.run_coroutine_threadsafe(listen(), self.loop).result(10)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


async def _samples(st: BenchStack, client, tq: str, http: httpx.AsyncClient, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        await _internalization_on(st, http)
        inc = f"bench-remote-{uuid.uuid4().hex[:10]}"
        wid = f"rollback-{inc}"
        inp = st.sign_start(RollbackInput(incident_id=inc, summary="bench", severity=Severity.CRITICAL,
                                          scope=Scope.CROSS, requested_by="oscar", reason="benchmark", drill=True,
                                          durations=QUICK), "rollback.start", wid)
        t0 = datetime.now(timezone.utc)
        h = await client.start_workflow(RollbackWorkflow.run, inp, id=wid, task_queue=tq, request_eager_start=True)
        out.append(_ms(await _wait_switch(http, st.core.url, "routing_mode", "HL_MODE"), t0))
        await h.terminate("benchmark sample taken")
    return out


async def run(st: BenchStack, runs: int = 20, delays_ms: tuple[int, ...] = (0, 20, 50)) -> dict:
    from worker import activity_methods, activity_objects, build_worker

    import os

    res: dict = {"runs": runs}
    saved = dict(os.environ)
    os.environ.update(st.env)  # the stack's paging sinks and core, as its own worker has them
    try:
        paging, core = PagingSettings(), TradingCoreSettings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    async with httpx.AsyncClient() as http:
        for d in delays_ms:
            proxy = DelayProxy(st.temporal.temporal_address, d / 2000).start()
            try:
                s = TemporalSettings(temporal_address=proxy.address)
                client = await connect(s)
                tq = f"bench-remote-{d}ms-{uuid.uuid4().hex[:6]}"
                objs = activity_objects(st.store, http, client, core, paging)
                async with build_worker(client, tq, activity_methods(objs)):
                    res[f"added_{d}ms_rtt_start_to_hl_mode_applied_ms"] = summary(
                        await _samples(st, client, tq, http, runs))
            finally:
                proxy.stop()
    base = res["added_0ms_rtt_start_to_hl_mode_applied_ms"]["p50"]
    for d in delays_ms[1:]:
        res[f"added_{d}ms_p50_minus_local_ms"] = round(res[f"added_{d}ms_rtt_start_to_hl_mode_applied_ms"]["p50"] - base, 1)
    return res
