"""The one loopback TCP proxy of the tests: a network partition (cut), a silent link (freeze), bytes held
one way (hold), and back (open). Runs in its own thread and event loop, so it keeps forwarding (or
keeps holding) whatever the test's own loop is blocked on."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable


class Proxy:
    """Forwards 127.0.0.1:<port> to `upstream`, in its own thread and event loop.

    hold():   bytes from the client stop at the proxy (counted in `held`); answers still flow.
    freeze(): nothing flows either way; connections stay open (no RST, no FIN).
    open():   everything held or frozen is delivered, in order, and flows again.
    cut():    every connection reset and new ones refused.
    """

    def __init__(self, upstream: str):
        host, _, port = upstream.rpartition(":")
        self.up_host, self.up_port = host, int(port)
        self.port = 0
        self.held = 0  # bytes from clients that arrived while held/frozen
        self.connections = 0
        self._cut = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxy", daemon=True)
        self._up: asyncio.Event | None = None  # client -> upstream may flow
        self._down: asyncio.Event | None = None  # upstream -> client may flow
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _call(self, fn: Callable[[], Any]) -> Any:
        async def run():
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    def start(self) -> "Proxy":
        self._thread.start()

        async def setup():
            self._up, self._down = asyncio.Event(), asyncio.Event()
            self._up.set()
            self._down.set()
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            return self._server.sockets[0].getsockname()[1]

        self.port = asyncio.run_coroutine_threadsafe(setup(), self._loop).result(timeout=10)
        return self

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if self._cut:
            w.transport.abort()
            return
        try:
            ur, uw = await asyncio.open_connection(self.up_host, self.up_port)
        except OSError:
            w.transport.abort()
            return
        self.connections += 1
        self._writers |= {w, uw}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, gate: asyncio.Event, up: bool) -> None:
            try:
                while data := await src.read(65536):
                    if not gate.is_set():
                        if up:
                            self.held += len(data)
                        await gate.wait()
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()
                self._writers.discard(dst)

        asyncio.create_task(pump(r, uw, self._up, True))
        asyncio.create_task(pump(ur, w, self._down, False))

    def hold(self) -> None:
        def f():
            self.held = 0
            self._up.clear()
        self._call(f)

    def freeze(self) -> None:
        def f():
            self._up.clear()
            self._down.clear()
        self._call(f)

    def open(self) -> None:
        def f():
            self._cut = False
            self._up.set()
            self._down.set()
        self._call(f)

    def cut(self) -> None:
        def f():
            self._cut = True
            self._up.set()
            self._down.set()
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()
        self._call(f)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self.cut()

        async def shutdown():
            if self._server is not None:
                self._server.close()
            for t in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                t.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
