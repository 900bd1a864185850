"""The console over HTTP (httpx through its ASGI app, real etcd): who may see what, CSRF, bad input,
passkey approval in the store. The browser tests (real Chromium, real passkeys) are test_console_browser.py."""

from __future__ import annotations

import json
from html import unescape

import pytest

from activities.audit_verify import verify_store
from activities.switch_store import Conflict, InvalidChange, PermissionDenied
from rollbackctl.console import auth
from rollbackctl.console.app import charts_of
from tests.support.console_helpers import asgi, cookie, pending, signed_in


async def test_pages_need_a_session_and_a_role(store):
    async with asgi(store) as (console, c):
        r = await c.get("/matrix")
        assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fmatrix"
        r = await c.get("/live/matrix")
        assert r.status_code == 401 and "sign in first" in r.json()["error"]
        vic, _ = await signed_in(console, store, "vic")
        r = await c.get("/matrix", headers=cookie(vic))
        assert r.status_code == 200 and "routing_mode" in unescape(r.text) and "Control matrix" in unescape(r.text)
        assert "HttpOnly" not in unescape(r.text) and r.headers["content-security-policy"].startswith("default-src 'self'")
        r = await c.get("/admin/passkeys", headers=cookie(vic))
        assert r.status_code == 403 and "vic is viewer; this needs super_admin or above" in unescape(r.text)
        sam, _ = await signed_in(console, store, "sam", approver="alice")
        r = await c.get("/admin/passkeys", headers=cookie(sam))
        assert r.status_code == 200 and "Awaiting approval" in unescape(r.text)


async def test_a_removed_passkey_ends_its_session_at_the_next_request(store):
    async with asgi(store) as (console, c):
        rita, rec = await signed_in(console, store, "rita")
        assert (await c.get("/audit", headers=cookie(rita))).status_code == 200
        await store.remove_passkey("rita", rec["credential_id"], actor="alice", reason="laptop lost")
        r = await c.get("/audit", headers=cookie(rita))
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        assert console.sessions.get(rita.id) is None
        last = (await store.audit())[-1]
        assert last.action == "operator.remove_passkey" and last.reason == "laptop lost"


async def test_csrf_and_origin_are_checked_and_nothing_changes(store):
    async with asgi(store) as (console, c):
        sam, _ = await signed_in(console, store, "sam", approver="alice")
        rec = await pending(store, "oscar")
        url = f"/admin/passkeys/{rec['credential_id']}/decline"
        r = await c.post(url, data={"csrf": "forged-" + sam.csrf[7:]}, headers=cookie(sam))
        assert r.status_code == 403 and "CSRF token is missing or wrong" in unescape(r.text)
        r = await c.post(url, data={"csrf": sam.csrf}, headers=cookie(sam, Origin="https://evil.example"))
        assert r.status_code == 403 and "cross-origin request refused" in unescape(r.text)
        assert [p["code"] for p in await store.pending_passkeys()] == [rec["code"]]  # still there
        r = await c.post(url, data={"csrf": sam.csrf}, headers=cookie(sam))
        assert r.status_code == 303 and await store.pending_passkeys() == []
        vic, _ = await signed_in(console, store, "vic")  # a viewer reads only
        rec2 = await pending(store, "oscar")
        r = await c.post(f"/admin/passkeys/{rec2['credential_id']}/decline", data={"csrf": vic.csrf}, headers=cookie(vic))
        assert r.status_code == 403 and len(await store.pending_passkeys()) == 1


@pytest.mark.parametrize("path,body,status,says", [
    ("/auth/register/begin", {"operator": "Not A Name"}, 400, "operator: lower-case letters"),
    ("/auth/register/begin", {"operator": "nobody"}, 404, "unknown operator 'nobody'"),
    ("/auth/register/begin", {"operator": "rita", "label": "x" * 81}, 400, "label: text of at most 80"),
    ("/auth/register/finish", {"credential": {}}, 400, "no register in progress"),
    ("/auth/login/finish", {"credential": {"id": "abc"}}, 400, "no login in progress"),
])
async def test_malformed_ceremonies_are_refused_naming_the_field(store, path, body, status, says):
    async with asgi(store) as (console, c):
        r = await c.post(path, json=body)
        assert r.status_code == status and says in r.json()["error"], r.text
        assert await store.pending_passkeys() == []


async def test_bad_requests(store):
    async with asgi(store) as (console, c):
        vic, _ = await signed_in(console, store, "vic")
        r = await c.post("/auth/register/begin", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"] == "body: not valid JSON"
        r = await c.post("/auth/register/begin", data={"operator": "rita"})  # a form: what a cross-site page can send
        assert r.status_code == 400 and r.json()["error"] == "body: expected application/json"
        r = await c.post("/auth/login/begin", json={}, headers={"Origin": "http://127.0.0.1:8780"})
        assert r.status_code == 403 and "cross-origin" in r.json()["error"]
        assert (await c.get("/nope", headers=cookie(vic))).status_code == 404
        assert (await c.get("/live/nope", headers=cookie(vic))).status_code == 404
        r = await c.get("/audit?color=red", headers=cookie(vic))
        assert r.status_code == 400 and "unknown filter 'color'" in unescape(r.text)
        r = await c.get("/audit?limit=0", headers=cookie(vic))
        assert r.status_code == 400 and "limit: a whole number from 1 to 5000" in unescape(r.text)
        r = await c.get("/workflows/bad%20id", headers=cookie(vic))
        assert r.status_code == 400
        r = await c.get("/workflows", headers=cookie(vic))  # no Temporal: said, not a crash
        assert r.status_code == 200 and "Temporal could not be read" in unescape(r.text)


async def test_audit_page_filters_and_shows_the_verified_chain(store):
    from tests.support.fixtures_sim import apply

    await apply(store, "rita", routing_mode="BETTING_MODE")
    await apply(store, "alice", hedge_max_leverage=4.5)
    async with asgi(store) as (console, c):
        vic, _ = await signed_in(console, store, "vic")
        rep = await verify_store(store)
        r = await c.get("/audit?switch=routing_mode", headers=cookie(vic))
        assert r.status_code == 200 and "chain verified" in unescape(r.text) and rep.head in unescape(r.text)
        rows = unescape(r.text).split("<tr data-id=")[1:]
        assert any("rita" in row and "<b>\"BETTING_MODE\"</b>" in row for row in rows)
        assert not any("<b>4.5</b>" in row for row in rows)  # alice's leverage change is filtered out
        r = await c.get("/audit?actor=alice", headers=cookie(vic))
        rows = unescape(r.text).split("<tr data-id=")[1:]
        assert any("<b>4.5</b>" in row for row in rows) and not any("BETTING_MODE" in row for row in rows)
        r = await c.get("/matrix", headers=cookie(vic))
        row = r.text.split('data-switch="routing_mode"')[1].split("</tr>")[0]
        assert "BETTING_MODE" in row and "off default" in row and "rita" in row


async def test_the_matrix_page_lists_the_consumers_stragglers_first(store):
    import json as _json

    from core.watcher import SwitchWatcher
    from tests.support.fixtures_sim import apply

    async with asgi(store) as (console, c):
        vic, _ = await signed_in(console, store, "vic")
        r = await c.get("/matrix", headers=cookie(vic))
        assert "No consumer has a receipt" in unescape(r.text)
        a = SwitchWatcher(store.etcd, store.prefix, observe=False, consumer_id="core-a")
        await a.start()
        lease = await store.etcd.lease_grant(30)
        try:
            res = await apply(store, "alice", hedge_max_leverage=4.5)
            await store.etcd.put(f"{store.prefix}consumers/core-old", _json.dumps(
                {"id": "core-old", "applied_revision": res.revision - 1, "at": 0, "host": "h", "pid": 1}).encode(),
                lease=lease)
            from tests.support.waits import wait_for_value

            async def page():
                return unescape((await c.get("/matrix", headers=cookie(vic))).text)
            text = await wait_for_value(page, lambda t: "1 behind the last switch change" in t
                                        and 'data-consumer="core-a"' in t, 10, "core-a on the page")
            table = text.split('id="consumer-table"')[1]
            assert table.index('data-consumer="core-old"') < table.index('data-consumer="core-a"')
            old = table.split('data-consumer="core-old"')[1].split("</tr>")[0]
            assert "straggler" in old and f"<td>{res.revision - 1}</td>" in old
        finally:
            await store.etcd.lease_revoke(lease)
            await a.stop()


async def test_maintenance_page(store):
    async with asgi(store) as (console, c):
        r = await c.get("/maintenance")
        assert r.status_code == 200 and "Trading is paused for maintenance" in unescape(r.text)


async def test_passkey_approval_rules(store):
    rec = await pending(store, "rita")
    with pytest.raises(PermissionDenied):
        await store.approve_passkey("rita", rec["credential_id"], rec["public_key"], rec["code"], actor="rita")
    with pytest.raises(InvalidChange, match="the code does not match"):
        await store.approve_passkey("rita", rec["credential_id"], rec["public_key"], "AAAA-AAAA", actor="alice")
    with pytest.raises(InvalidChange, match="was registered for 'rita', not 'oscar'"):
        await store.approve_passkey("oscar", rec["credential_id"], rec["public_key"], rec["code"], actor="alice")
    with pytest.raises(Conflict, match="public key changed"):
        await store.approve_passkey("rita", rec["credential_id"], rec["public_key"][:-2] + "AA", rec["code"], actor="alice")
    assert (await store.operator("rita")).passkeys == []
    op = await store.approve_passkey("rita", rec["credential_id"], rec["public_key"], rec["code"], actor="alice")
    assert [pk.code for pk in op.passkeys] == [rec["code"]] and await store.pending_passkeys() == []
    last = (await store.audit())[-1]
    assert last.action == "operator.approve_passkey" and last.actor == "alice"
    with pytest.raises(InvalidChange, match="awaiting approval"):  # once
        await store.approve_passkey("rita", rec["credential_id"], rec["public_key"], rec["code"], actor="alice")
    assert (await verify_store(store)).ok


def test_passkey_code_is_stable_and_short():
    assert auth.passkey_code(b"k" * 77) == auth.passkey_code(b"k" * 77)
    assert auth.passkey_code(b"k" * 77) != auth.passkey_code(b"j" * 77)
    assert len(auth.passkey_code(b"x")) == 9 and auth.passkey_code(b"x")[4] == "-"


def test_charts_draw_each_metric_against_its_limit():
    from datetime import datetime, timezone

    from contracts.progress import CheckResult

    at = datetime(2026, 12, 5, tzinfo=timezone.utc)
    checks = [CheckResult(at=at, ok=True, readings=["error_rate=0.002 (<= 0.01) ok", "reserve_ratio=1.4 (>= 1.2) ok"]),
              CheckResult(at=at, ok=False, readings=["error_rate=0.03 (<= 0.01) FAILED", "reserve_ratio=1.3 (>= 1.2) ok"])]
    charts = {c["metric"]: c for c in charts_of(checks)}
    assert set(charts) == {"error_rate", "reserve_ratio"} and charts["error_rate"]["limit"] == "0.01"
    svg = charts["error_rate"]["svg"]
    assert svg.count("<circle") == 2 and 'fill="#b42318"' in svg and "limit 0.01" in svg
    json.dumps(charts)  # plain data


async def test_the_console_process_says_where_once_it_listens_and_stops_on_sigterm(store, etcd_server):
    """`rollbackctl console` as `dev up` starts it: it prints its URL once it listens, serves its open pages
    (Temporal is not reachable here: that does not stop it), and a SIGTERM ends it within seconds."""
    import asyncio
    import os
    import signal
    import time

    import httpx

    from core import procs
    from tests.support.store_helpers import ROLLBACKCTL

    port = procs.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROLLBACKCTL_", "TEMPORAL_"))}
    env.update(ROLLBACKCTL_ETCD_ENDPOINTS=etcd_server.endpoint, ROLLBACKCTL_ETCD_PREFIX=store.prefix,
               TEMPORAL_ADDRESS=f"127.0.0.1:{procs.free_port()}", ROLLBACKCTL_LOG_FORMAT="json")
    p = await asyncio.create_subprocess_exec(ROLLBACKCTL, "console", "--listen", f"127.0.0.1:{port}", env=env,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        line = (await asyncio.wait_for(p.stdout.readline(), 30)).decode()
        assert line.startswith(f"console http://localhost:{port}  (sign in with a passkey; register at "), line
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            assert (await c.get("/healthz")).text == "ok"
            r = await c.get("/login")
            assert r.status_code == 200 and "Sign in with a passkey" in r.text
            r = await c.get("/static/console.js")
            assert r.status_code == 200 and "navigator.credentials.create" in r.text
            r = await c.get("/maintenance")
            assert "Trading is paused for maintenance" in r.text
    finally:
        t = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(p.wait(), 15)
        err = (await p.stderr.read()).decode()
    # uvicorn shuts down gracefully, then re-raises the signal it caught: ended by SIGTERM is a clean stop
    # (as systemd counts it); what matters is that it stops promptly, not hanging on open connections
    assert rc in (0, -signal.SIGTERM) and time.monotonic() - t < 5, err
    assert "Traceback" not in err, err


@pytest.mark.parametrize("given,want", [
    ("/audit?switch=routing_mode", "/audit?switch=routing_mode"), ("/workflows/rollback-x", "/workflows/rollback-x"),
    ("//evil.example/x", "/matrix"), ("/\\evil.example", "/matrix"), ("https://evil.example", "/matrix"),
    ("/ok\r\nSet-Cookie: x=1", "/matrix"), (None, "/matrix"), (42, "/matrix"), ("matrix", "/matrix"),
])
def test_sign_in_goes_back_only_to_a_page_of_the_console(given, want):
    from rollbackctl.console.app import safe_next

    assert safe_next(given) == want


async def test_live_views_share_one_read_per_interval(store):
    """Ten browsers on one page cost one read of its sources per interval, not ten."""
    import asyncio

    from starlette.requests import Request

    async with asgi(store) as (console, c):
        reads = []

        async def ctx(request):
            reads.append(1)
            await asyncio.sleep(0)
            return {"n": len(reads)}

        req = Request({"type": "http", "query_string": b"a=1", "headers": [], "path": "/live/x"})
        got = await asyncio.gather(*(console.shared("x", req, ctx) for _ in range(10)))
        assert len(reads) == 1 and all(g == {"n": 1} for g in got)
        other = Request({"type": "http", "query_string": b"a=2", "headers": [], "path": "/live/x"})
        await console.shared("x", other, ctx)
        assert len(reads) == 2  # another query is another view


def test_a_decision_page_offers_what_the_step_answers_to_and_its_exits():
    from datetime import datetime, timezone

    from contracts.progress import Awaiting, Exit, Progress
    from rollbackctl.console.decide import options

    now = datetime(2026, 12, 5, tzinfo=timezone.utc)

    def p(expects, exits=()):
        return Progress(workflow_id="w", kind="RollbackWorkflow", current_step="s", awaiting=Awaiting(
            step="s", expects=expects, min_role="on_call", since=now, deadline=None, prompt="?", exits=list(exits)))

    kinds = lambda pr, wk="RollbackWorkflow": [o["kind"] for o in options(pr, wk, "s")]  # noqa: E731
    assert kinds(p("proceed_or_cancel")) == ["proceed", "cancel"]
    assert kinds(p("escalate")) == ["escalate", "confirm"]
    assert kinds(p("level_choice")) == ["escalate"]
    assert kinds(p("confirm", [Exit(kind="withdraw", means="end it")])) == ["confirm", "withdraw"]
    assert kinds(p("promote"), "CanaryWorkflow") == ["promote", "pause", "resume", "abort", "extend"]
    assert kinds(p("confirm"), "IncidentWorkflow") == ["confirm", "tick", "resolve"]
    assert options(p("confirm"), "RollbackWorkflow", "other") == []  # another step: nothing
    fix = next(o for o in options(p("fix"), "RollbackWorkflow", "s"))
    assert fix["fields"] == ("reference", "tests_passed", "restore")


async def test_ceremonies_begun_without_a_session_are_bounded_per_address_and_in_all(store, monkeypatch):
    """Anyone who reaches the console can begin a sign-in: 20 in progress per address, then 429 naming when
    to try again (RFC 6585: 429 Too Many Requests); other addresses still sign in; an expired ceremony frees
    its place; the whole process holds at most MAX_CEREMONIES. A refusal begins nothing."""
    import httpx

    now = [1000.0]
    async with asgi(store) as (console, c):
        console.sessions.clock = lambda: now[0]
        for _ in range(auth.MAX_CEREMONIES_PER_CLIENT):
            assert (await c.post("/auth/login/begin", json={})).status_code == 200
        held = len(console.sessions.ceremonies)
        r = await c.post("/auth/register/begin", json={"operator": "rita"})
        assert r.status_code == 429, r.text
        assert r.json()["error"] == (f"{auth.MAX_CEREMONIES_PER_CLIENT} sign-ins and registrations from 127.0.0.1 are "
                                     f"in progress: try again in {auth.CEREMONY_S} s")
        assert len(console.sessions.ceremonies) == held
        other = httpx.ASGITransport(app=console.app(), client=("127.0.0.2", 4000))
        async with httpx.AsyncClient(transport=other, base_url=console.origin, headers={"Origin": console.origin}) as c2:
            assert (await c2.post("/auth/login/begin", json={})).status_code == 200
            now[0] += auth.CEREMONY_S - 30
            r = await c.post("/auth/login/begin", json={})
            assert r.status_code == 429 and r.json()["error"].endswith("try again in 30 s")
            now[0] += 31  # the first address's ceremonies lapsed
            assert (await c.post("/auth/login/begin", json={})).status_code == 200
            monkeypatch.setattr(auth, "MAX_CEREMONIES", len(console.sessions.ceremonies))
            r = await c2.post("/auth/login/begin", json={})
            assert r.status_code == 429 and r.json()["error"].startswith(
                f"{auth.MAX_CEREMONIES} sign-ins and registrations are in progress: try again in")


def test_expired_sessions_leave_memory_when_another_begins():
    now = [0.0]
    s = auth.Sessions(max_age_s=3600, idle_s=600, clock=lambda: now[0])
    old = s.new("rita", "cred-1")
    now[0] += 601
    s.new("sam", "cred-2")
    assert old.id not in s.sessions and len(s.sessions) == 1
