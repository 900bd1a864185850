"""The console in-process for tests: real etcd (the `store` fixture), optionally a Temporal client, served
by uvicorn on a free loopback port (browser tests) or called through httpx's ASGI transport (HTTP tests)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
from contextlib import asynccontextmanager

import httpx
import uvicorn

from core import procs
from core.settings import ConsoleSettings
from core.watcher import SwitchWatcher
from rollbackctl.console import auth
from rollbackctl.console.app import Console
from rollbackctl.console.data import ConsoleData


def console_for(store, client=None, port: int = 8780, live_s: float = 0.3):
    watcher = SwitchWatcher(store.etcd, store.prefix, observe=False)
    settings = ConsoleSettings(listen=f"127.0.0.1:{port}", live_s=live_s)
    return Console(ConsoleData(store, client, watcher), settings), watcher


@asynccontextmanager
async def served(store, client=None, live_s: float = 0.3):
    """The console listening on 127.0.0.1:<free port>, for browsers at http://localhost:<port>."""
    port = procs.free_port()
    console, watcher = console_for(store, client, port, live_s)
    await watcher.start()
    server = uvicorn.Server(uvicorn.Config(console.app(), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off", timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield console
    finally:
        console.closing.set()  # live views end their streams, so the server stops at once
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        await watcher.stop()


@asynccontextmanager
async def asgi(store, client=None):
    console, watcher = console_for(store, client)
    await watcher.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=console.app()), base_url=console.origin,
                                     headers={"Origin": console.origin}, follow_redirects=False) as c:
            yield console, c
    finally:
        await watcher.stop()


async def pending(store, operator: str, label: str = "") -> dict:
    """A pending registration as the console writes it (the key is random bytes: what approval checks is
    that it is named whole, not that it is a valid key)."""
    pub = secrets.token_bytes(77)
    cid = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
    rec = {"operator": operator, "credential_id": cid, "label": label, "alg": -7,
           "public_key": base64.urlsafe_b64encode(pub).decode().rstrip("="), "code": auth.passkey_code(pub),
           "registered_at": "2026-12-05T00:00:00.000Z", "sign_count": 0}
    await store.etcd.put(store.pending_passkey_key(cid), json.dumps(rec).encode())
    return rec


async def signed_in(console: Console, store, operator: str, approver: str = "sam") -> tuple[auth.Session, dict]:
    """An approved passkey for `operator` and a session of it (what a passkey sign-in leaves behind)."""
    rec = await pending(store, operator)
    await store.approve_passkey(operator, rec["credential_id"], rec["public_key"], rec["code"], actor=approver)
    return console.sessions.new(operator, rec["credential_id"]), rec


def cookie(s: auth.Session, **headers: str) -> dict[str, str]:
    """Request headers carrying the session's cookie (as the browser sends it)."""
    return {"Cookie": f"{auth.SESSION_COOKIE}={s.id}", **headers}


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
