"""The console in-process for tests: real etcd (the `store` fixture), optionally a Temporal client, served
by uvicorn on a free loopback port (browser tests) or called through httpx's ASGI transport (HTTP tests)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import shutil
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
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


# -- a real browser (Playwright driving Debian's Chromium) ------------------------------------------------
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = os.environ.get("CONSOLE_SCREENSHOTS")
AUTHENTICATOR = {"protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
                 "isUserVerified": True, "automaticPresenceSimulation": True}
WAIT_MS = 15_000


@pytest_asyncio.fixture
async def browser():
    from playwright.async_api import async_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: apt-get install chromium (`make test` installs it as root)")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        await b.close()


async def device(browser, origin: str, enforce_csp: bool = False):
    """A browser context of its own (one operator's device) with a virtual platform authenticator."""
    # bypass_csp: Playwright evaluates its wait predicates as strings, which the console's CSP (no eval) refuses
    ctx = await browser.new_context(base_url=origin, accept_downloads=True, viewport={"width": 1360, "height": 900},
                                    bypass_csp=not enforce_csp)
    page = await ctx.new_page()
    cdp = await ctx.new_cdp_session(page)
    await cdp.send("WebAuthn.enable")
    auth_id = (await cdp.send("WebAuthn.addVirtualAuthenticator", {"options": AUTHENTICATOR}))["authenticatorId"]
    page.authenticator = (cdp, auth_id)
    return page


async def shot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


async def register(page, name: str) -> str:
    await page.goto("/register")
    await page.fill("input[name=operator]", name)
    await page.fill("input[name=label]", f"{name}'s test device")
    await page.click("#register-form button")
    await page.wait_for_selector("#register-done:not([hidden])", timeout=WAIT_MS)
    return (await page.text_content("#register-code")).strip()


async def sign_in(page) -> str:
    """Press "Sign in with a passkey"; the message the page shows (it navigates on success)."""
    if "/login" not in page.url:
        await page.goto("/login")
    await page.click("#login-form button")
    await page.wait_for_selector("#login-msg.bad, header .who", timeout=WAIT_MS)  # refused, or a signed-in page
    if "/login" not in page.url:
        return "signed in as " + (await page.text_content("header .who > span:nth-child(2)")).strip()
    return (await page.text_content("#login-msg")).strip()


async def approve(store, name: str, code: str, by: str) -> None:
    """What `rollbackctl passkey approve NAME CODE --as BY` does once the signature is checked."""
    (p,) = [p for p in await store.pending_passkeys() if p["operator"] == name and p["code"] == code]
    await store.approve_passkey(name, p["credential_id"], p["public_key"], code, actor=by)


