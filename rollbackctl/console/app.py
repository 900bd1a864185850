"""The operator console: a Starlette app rendering pages on the server, live through server-sent events.

Pages (each needs a session; `viewer` reads everything, the passkeys page is a super admin's):
  /matrix      every switch, live from the watch          /audit        the chain, verified, filterable
  /incidents   open P0s with their SLA countdowns         /workflows    rollbacks, degradations, canaries, ...
  /workflows/ID  one workflow: step, what it awaits       /canary       stages and health-check charts
  /timeline/ID   timeline (+ .md postmortem draft, .json with the audit records)
  /admin/passkeys  registrations awaiting approval (super admin)
Open: /login, /register, /maintenance (Degradation Level 3's static page), /static/*, /healthz.

Every live region re-renders its fragment on the server every `live_s` and sends it only when it changed.
Bad input: an unknown route is 404; a malformed form or JSON body is 400 naming the field; nothing changes.
See rollbackctl/console/auth.py for sign-in, sessions and CSRF.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from contracts.roles import Role
from core.aio import wait_set
from core.settings import ConsoleSettings
from rollbackctl.console import auth, timeline
from rollbackctl.console.common import WID_RE, Denied
from rollbackctl.console.data import ConsoleData
from rollbackctl.console.decide import Decisions

log = logging.getLogger("rollbackctl.console")
HERE = Path(__file__).resolve().parent
NAV = [("/matrix", "Matrix"), ("/audit", "Audit"), ("/incidents", "Incidents"), ("/workflows", "Workflows"),
       ("/canary", "Canary")]
NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
MAX_JSON = 64 * 1024


def maintenance_page() -> Path:
    """The manual's Level 3 "static maintenance page": one file, served by the trading core (here the
    simulator) wherever the API answers 503, and by the console at /maintenance."""
    from simulator import app as sim_app

    return sim_app.MAINTENANCE_PAGE


class Console:
    def __init__(self, data: ConsoleData, settings: ConsoleSettings, sessions: auth.Sessions | None = None):
        self.data, self.settings = data, settings
        self.origin, self.rp_id = settings.public_origin(), settings.rp_id()
        self.secure = self.origin.startswith("https://")
        self.closing = asyncio.Event()  # set on shutdown: live streams end
        self._shared: dict[tuple[str, str], tuple[float, asyncio.Future]] = {}
        self.decisions = Decisions(self)
        self.sessions = sessions or auth.Sessions(settings.session_hours * 3600, settings.idle_minutes * 60)
        self.jinja = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
        self.views: dict[str, tuple[Role, str, Callable[[Request], Awaitable[dict[str, Any]]]]] = {
            "matrix": (Role.VIEWER, "_matrix.html", self.ctx_matrix),
            "audit": (Role.VIEWER, "_audit.html", self.ctx_audit),
            "incidents": (Role.VIEWER, "_incidents.html", self.ctx_incidents),
            "workflows": (Role.VIEWER, "_workflows.html", self.ctx_workflows),
            "workflow": (Role.VIEWER, "_workflow.html", self.ctx_workflow),
            "canary": (Role.VIEWER, "_canary.html", self.ctx_canary),
            "passkeys": (Role.SUPER_ADMIN, "_passkeys.html", self.ctx_passkeys),
        }

    # -- the Starlette app ---------------------------------------------------------------------------
    def app(self) -> Starlette:
        routes = [
            Route("/", lambda r: RedirectResponse("/matrix", 303)),
            Route("/healthz", lambda r: PlainTextResponse("ok")),
            Route("/login", self.login_page),
            Route("/register", self.register_page),
            Route("/maintenance", lambda r: FileResponse(maintenance_page(), media_type="text/html")),
            Route("/auth/register/begin", self.register_begin, methods=["POST"]),
            Route("/auth/register/finish", self.register_finish, methods=["POST"]),
            Route("/auth/login/begin", self.login_begin, methods=["POST"]),
            Route("/auth/login/finish", self.login_finish, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/matrix", self.page("matrix", "Control matrix", "Every switch, live from etcd's watch.")),
            Route("/audit", self.page("audit", "Audit trail", "Every change, hash-chained and signed; verified as shown.")),
            Route("/incidents", self.page("incidents", "P0 incidents", "Open incidents with their SLA clocks.")),
            Route("/workflows", self.page("workflows", "Workflows",
                                          "Rollbacks, degradations, canaries, incidents and change requests: running and "
                                          "of the last two days.")),
            Route("/workflows/{wid}", self.workflow_page),
            Route("/canary", self.page("canary", "Canaries", "Stages and health checks against their limits.")),
            Route("/timeline/{wid}", self.timeline_page),
            Route("/admin/passkeys", self.page("passkeys", "Passkeys", "Registrations awaiting a super admin's approval.")),
            Route("/admin/passkeys/{cred}/decline", self.decline, methods=["POST"]),
            Route("/live/{view}", self.live),
            Route("/decide/{wid}/{step}", self.decisions.page),
            Route("/decide/{wid}/{step}/prepare", self.decisions.prepare, methods=["POST"]),
            Route("/decide/{wid}/{step}/submit", self.decisions.submit, methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        return Starlette(routes=routes, exception_handlers={
            HTTPException: self.http_error, Denied: self.denied,
            auth.AuthError: self.auth_error})

    # -- rendering and errors --------------------------------------------------------------------------
    def render(self, name: str, request: Request, code: int = 200, **ctx: Any) -> HTMLResponse:
        s = getattr(request.state, "session", None)
        role = getattr(request.state, "role", None)
        nav = NAV + ([("/admin/passkeys", "Passkeys")] if role is Role.SUPER_ADMIN else [])
        html = self.jinja.get_template(name).render(session=s, role=role.value if role else None, nav=nav,
                                                    active=request.url.path, **ctx)
        return HTMLResponse(html, code, headers=self._headers())

    def _headers(self) -> dict[str, str]:
        return {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}

    def _wants_json(self, request: Request) -> bool:
        return request.url.path.startswith(("/auth/", "/live/")) or request.url.path.endswith(("/prepare", "/submit")) \
            or "application/json" in request.headers.get("accept", "")

    async def http_error(self, request: Request, exc: HTTPException) -> Response:
        msg = {404: f"nothing at {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}.get(
            exc.status_code, str(exc.detail))
        if self._wants_json(request):
            return JSONResponse({"error": msg}, exc.status_code)
        return self.render("error.html", request, exc.status_code, title=str(exc.status_code), status=exc.status_code,
                           message=msg)

    async def auth_error(self, request: Request, exc: auth.AuthError) -> Response:
        return await self.denied(request, Denied(exc.status, str(exc)))

    async def denied(self, request: Request, exc: Denied) -> Response:
        log.info("console: %s %s refused %d: %s", request.method, request.url.path, exc.status, exc.message)
        if exc.status == 401 and request.method == "GET" and not self._wants_json(request):
            nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/login?" + urlencode({"next": nxt}), 303)
        if self._wants_json(request):
            return JSONResponse({"error": exc.message}, exc.status)
        return self.render("error.html", request, exc.status, title=str(exc.status), status=exc.status,
                           message=exc.message, hint=exc.hint)

    # -- who is asking ---------------------------------------------------------------------------------
    async def require(self, request: Request, need: Role) -> auth.Session:
        """The session of a signed-in operator holding `need` or above, read against the operator record now."""
        s = self.sessions.get(request.cookies.get(auth.SESSION_COOKIE))
        if s is None:
            raise Denied(401, "sign in first (no session, or it expired)")
        op = await self.data.store.operator(s.operator)
        if op is None or not any(pk.credential_id == s.credential_id for pk in op.passkeys):
            self.sessions.drop(s.id)
            raise Denied(401, "your passkey or operator record was removed: sign in again")
        request.state.session, request.state.role = s, op.role
        if not op.role.at_least(need):
            raise Denied(403, f"{s.operator} is {op.role.value}; this needs {need.value} or above")
        return s

    def check_origin(self, request: Request) -> None:
        origin = request.headers.get("origin")
        if origin != self.origin:
            raise Denied(403, f"cross-origin request refused (Origin {origin or 'missing'}; this console is {self.origin})")

    async def check_csrf(self, request: Request, s: auth.Session) -> None:
        self.check_origin(request)
        given = request.headers.get("x-csrf-token")
        if not given and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            raw = await request.body()
            if len(raw) > MAX_JSON:
                raise Denied(400, f"form: larger than {MAX_JSON} bytes")
            try:
                form = parse_qs(raw.decode("ascii"), strict_parsing=bool(raw), max_num_fields=20)
            except (ValueError, UnicodeDecodeError):
                raise Denied(400, "form: not url-encoded fields") from None
            given = (form.get("csrf") or [""])[0]
        if not auth.csrf_ok(s, given):
            raise Denied(403, "the form's CSRF token is missing or wrong: reload the page and try again")

    async def json_body(self, request: Request) -> dict[str, Any]:
        self.check_origin(request)
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise Denied(400, "body: expected application/json")
        raw = await request.body()
        if len(raw) > MAX_JSON:
            raise Denied(400, f"body: larger than {MAX_JSON} bytes")
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise Denied(400, "body: not valid JSON") from None
        if not isinstance(body, dict):
            raise Denied(400, "body: expected a JSON object")
        return body

    # -- sign-in -----------------------------------------------------------------------------------------
    async def login_page(self, request: Request) -> Response:
        return self.render("login.html", request, title="Sign in")

    async def register_page(self, request: Request) -> Response:
        return self.render("register.html", request, title="Register a passkey")

    def _ceremony_cookie(self, resp: Response, token: str) -> Response:
        resp.set_cookie(auth.CEREMONY_COOKIE, token, max_age=auth.CEREMONY_S, httponly=True, samesite="strict",
                        secure=self.secure, path="/auth/")
        return resp

    async def register_begin(self, request: Request) -> Response:
        body = await self.json_body(request)
        name = body.get("operator")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise Denied(400, "operator: lower-case letters, digits, '_', '.', '-' (1-32), as in `rollbackctl operator list`")
        label = body.get("label", "")
        if not isinstance(label, str) or len(label) > 80:
            raise Denied(400, "label: text of at most 80 characters")
        op = await self.data.store.operator(name)
        if op is None:
            raise Denied(404, f"unknown operator {name!r}: a super admin adds you first (`rollbackctl operator add`)")
        pending = [p for p in await self.data.store.pending_passkeys() if p.get("operator") == name]
        if len(pending) >= auth.MAX_PENDING_PER_OPERATOR:
            raise Denied(429, f"{name} has {len(pending)} passkeys awaiting approval already: ask a super admin to "
                              "approve or decline them first")
        exclude = [pk.credential_id for pk in op.passkeys] + [p["credential_id"] for p in pending]
        challenge, options = auth.registration_options(self.rp_id, self.settings.rp_name, name, exclude)
        token = self.sessions.begin(auth.Ceremony("register", challenge, self.sessions.clock() + auth.CEREMONY_S,
                                                  operator=name, label=label, client=client_of(request)))
        return self._ceremony_cookie(Response(options, media_type="application/json"), token)

    async def register_finish(self, request: Request) -> Response:
        body = await self.json_body(request)
        c = self.sessions.take(request.cookies.get(auth.CEREMONY_COOKIE), "register")
        cred = body.get("credential")
        auth.credential_id_of(cred)
        try:
            rec = auth.verify_registration(cred, c.challenge, self.rp_id, self.origin)
        except auth.AuthError as e:
            raise Denied(e.status, str(e)) from None
        from activities.switch_store import utcnow

        rec.update(operator=c.operator, label=c.label, registered_at=utcnow(), rp_id=self.rp_id, origin=self.origin,
                   user_agent=request.headers.get("user-agent", "")[:200])
        key = self.data.store.pending_passkey_key(rec["credential_id"])
        from core.etcd import Compare, Put

        ok, _ = await self.data.store.etcd.txn([Compare(key, "create", "==", 0)], [Put(key, auth.dumps(rec))])
        if not ok:
            raise Denied(409, "this passkey is registered already")
        log.info("console: passkey %s registered for %s, awaiting approval", rec["code"], c.operator)
        return JSONResponse({
            "code": rec["code"], "operator": c.operator,
            "approve": f"rollbackctl passkey approve {c.operator} {rec['code']} --as SUPERADMIN",
            "message": f"Registered. It signs you in once a super admin approves code {rec['code']}."},
            headers={"Cache-Control": "no-store"})

    async def login_begin(self, request: Request) -> Response:
        await self.json_body(request)
        challenge, options = auth.authentication_options(self.rp_id)
        token = self.sessions.begin(auth.Ceremony("login", challenge, self.sessions.clock() + auth.CEREMONY_S,
                                                  client=client_of(request)))
        return self._ceremony_cookie(Response(options, media_type="application/json"), token)

    async def login_finish(self, request: Request) -> Response:
        body = await self.json_body(request)
        c = self.sessions.take(request.cookies.get(auth.CEREMONY_COOKIE), "login")
        cred = body.get("credential")
        cid = auth.credential_id_of(cred)
        owner = next(((o, pk) for o in await self.data.store.operators() for pk in o.passkeys
                      if pk.credential_id == cid), None)
        if owner is None:
            pend = await self.data.store.etcd.get(self.data.store.pending_passkey_key(cid))
            if pend is not None:
                p = json.loads(pend.value)
                raise Denied(403, f"this passkey (code {p.get('code')}, {p.get('operator')}) awaits a super admin's "
                                  f"approval: `rollbackctl passkey approve {p.get('operator')} {p.get('code')}`")
            raise Denied(403, "unknown passkey: it is not approved for any operator (removed, or never registered here)")
        op, pk = owner
        ckey = self.counter_key(cid)
        kv = await self.data.store.etcd.get(ckey)
        count = int(json.loads(kv.value)["sign_count"]) if kv is not None else 0
        try:
            new_count = auth.verify_login(cred, c.challenge, self.rp_id, self.origin, pk.public_key, count)
        except auth.AuthError as e:
            raise Denied(e.status, str(e)) from None
        await self._store_count(ckey, kv, new_count)
        s = self.sessions.new(op.name, cid)
        nxt = safe_next(body.get("next"))
        log.info("console: %s signed in (passkey %s)", op.name, pk.code)
        resp = JSONResponse({"operator": op.name, "role": op.role.value, "next": nxt}, headers={"Cache-Control": "no-store"})
        resp.set_cookie(auth.SESSION_COOKIE, s.id, max_age=int(self.settings.session_hours * 3600), httponly=True,
                        samesite="strict", secure=self.secure, path="/")
        resp.delete_cookie(auth.CEREMONY_COOKIE, path="/auth/")
        return resp

    def counter_key(self, credential_id: str) -> str:
        return f"{self.data.store.prefix}console/counters/{credential_id}"

    async def _store_count(self, ckey: str, kv, new_count: int) -> None:
        from core.etcd import Compare, Put

        guard = Compare(ckey, "mod", "==", kv.mod_revision) if kv is not None else Compare(ckey, "create", "==", 0)
        ok, _ = await self.data.store.etcd.txn([guard], [Put(ckey, auth.dumps({"sign_count": new_count}))])
        if not ok:
            raise Denied(409, "this passkey signed elsewhere at the same moment: try again")

    async def count_signature(self, credential_id: str, authenticator_data: str) -> None:
        """A passkey's signature counter must grow (WebAuthn §6.1.1: a counter that does not is a cloned
        authenticator); authenticators that keep none send 0 every time, which is allowed."""
        import base64

        ad = base64.urlsafe_b64decode(authenticator_data + "=" * (-len(authenticator_data) % 4))
        new = int.from_bytes(ad[33:37], "big") if len(ad) >= 37 else 0
        ckey = self.counter_key(credential_id)
        kv = await self.data.store.etcd.get(ckey)
        old = int(json.loads(kv.value)["sign_count"]) if kv is not None else 0
        if (new or old) and new <= old:
            raise Denied(403, f"the passkey's signature counter went from {old} to {new}: a cloned authenticator? "
                              "refused; a super admin should remove this passkey")
        await self._store_count(ckey, kv, new)

    async def logout(self, request: Request) -> Response:
        s = await self.require(request, Role.VIEWER)
        await self.check_csrf(request, s)
        self.sessions.drop(s.id)
        resp = RedirectResponse("/login", 303)
        resp.delete_cookie(auth.SESSION_COOKIE, path="/")
        return resp

    # -- pages -----------------------------------------------------------------------------------------
    def page(self, view: str, title: str, intro: str):
        async def handler(request: Request) -> Response:
            need, fragment, ctx = self.views[view]
            await self.require(request, need)
            data = await ctx(request)
            q = f"?{request.url.query}" if request.url.query else ""
            return self.render("page.html", request, title=title, intro=intro, fragment=fragment,
                               live_url=f"/live/{view}{q}", above=data.pop("above", None), **data)

        return handler

    async def workflow_page(self, request: Request) -> Response:
        wid = request.path_params["wid"]
        if not WID_RE.match(wid):
            raise Denied(400, "workflow id: letters, digits and _.:@=- only (up to 200)")
        await self.require(request, Role.VIEWER)
        data = await self.ctx_workflow(request, wid)
        return self.render("page.html", request, title=f"Workflow {wid}", intro="", fragment="_workflow.html",
                           live_url="/live/workflow?" + urlencode({"id": wid}), **data)

    async def live(self, request: Request) -> Response:
        view = request.path_params["view"]
        if view not in self.views:
            raise HTTPException(404)
        need, fragment, ctx = self.views[view]
        s = await self.require(request, need)
        tpl = self.jinja.get_template(fragment)

        async def stream():
            from core import metrics

            metrics.CONSOLE_LIVE_STREAMS.inc()
            try:
                async for chunk in frames():
                    yield chunk
            finally:
                metrics.CONSOLE_LIVE_STREAMS.dec()

        async def frames():
            last = None
            while True:
                if await request.is_disconnected() or self.closing.is_set():
                    return
                if self.sessions.get(s.id) is None:
                    yield "event: gone\ndata: signed out: reload to sign in\n\n"
                    return
                try:
                    html = tpl.render(session=s, **await self.shared(view, request, ctx))
                except Denied as e:
                    yield f"event: gone\ndata: {e.message}\n\n"
                    return
                except Exception as e:  # etcd or Temporal away: say so, keep the last view, try again
                    html = None
                    yield f"event: gone\ndata: live view stalled: {str(e)[:120]}\n\n"
                    return
                digest = hashlib.sha256(html.encode()).digest()
                if digest != last:
                    last = digest
                    yield "event: fragment\n" + "".join(f"data: {line}\n" for line in html.split("\n")) + "\n"
                else:
                    yield ": still here\n\n"
                if await wait_set(self.closing, self.settings.live_s):
                    return

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def shared(self, view: str, request: Request, ctx) -> dict[str, Any]:
        """A view's data, read at most once per `live_s` for every live stream showing it (during an incident
        many people watch the same pages: Temporal and etcd see one reader, not one per browser)."""
        key = (view, request.url.query)
        now = asyncio.get_running_loop().time()
        hit = self._shared.get(key)
        if hit is not None and now - hit[0] < self.settings.live_s * 0.9:
            return await asyncio.shield(hit[1])
        fut = asyncio.ensure_future(ctx(request))
        self._shared[key] = (now, fut)
        if len(self._shared) > 256:
            for k in [k for k, (t, _) in self._shared.items() if now - t > 60]:
                self._shared.pop(k, None)
        return await asyncio.shield(fut)

    # -- view contexts ---------------------------------------------------------------------------------
    async def ctx_matrix(self, request: Request) -> dict[str, Any]:
        audit = await self.data.audit()
        rows = self.data.matrix_rows(audit)
        w = self.data.watcher
        return {"rows": rows, "revision": w.revision, "off": sum(r["off_default"] for r in rows),
                "watch_error": w.last_error if w.reconnects and w.last_error else None,
                "consumers": await self.data.consumers()}

    async def ctx_audit(self, request: Request) -> dict[str, Any]:
        q = request.query_params
        unknown = set(q) - {"switch", "actor", "workflow", "limit"}
        if unknown:
            raise Denied(400, f"unknown filter {sorted(unknown)[0]!r}: use switch, actor, workflow, limit")
        try:
            limit = int(q.get("limit", "200"))
            if not 1 <= limit <= 5000:
                raise ValueError
        except ValueError:
            raise Denied(400, "limit: a whole number from 1 to 5000") from None
        audit = await self.data.audit()
        recs = audit.records
        if q.get("switch"):
            recs = [r for r in recs if any(c.get("switch") == q["switch"] for c in r.get("changes") or [])]
        if q.get("actor"):
            recs = [r for r in recs if r.get("actor") == q["actor"] or r.get("approved_by") == q["actor"]]
        if q.get("workflow"):
            recs = [r for r in recs if r.get("source") == q["workflow"]]
        shown = list(reversed(recs))[:limit]
        return {"report": audit.report, "shown": shown, "matched": len(recs), "total": len(audit.records),
                "filtered": any(q.get(k) for k in ("switch", "actor", "workflow"))}

    async def _rows(self, kinds: tuple[str, ...], with_extra: bool) -> tuple[list, str | None]:
        try:
            return await self.data.workflows(kinds, with_extra=with_extra), None
        except Exception as e:
            return [], f"Temporal could not be read: {str(e)[:200]}"

    async def ctx_incidents(self, request: Request) -> dict[str, Any]:
        rows, err = await self._rows(("IncidentWorkflow",), True)
        return {"open_rows": [r for r in rows if r.status == "running"],
                "closed_rows": [r for r in rows if r.status != "running"], "error": err}

    async def ctx_workflows(self, request: Request) -> dict[str, Any]:
        rows, err = await self._rows(("RollbackWorkflow", "DegradationWorkflow", "CanaryWorkflow", "IncidentWorkflow",
                                      "ChangeRequestWorkflow", "EmergencyWorkflow"), False)
        return {"rows": rows, "error": err}

    async def ctx_workflow(self, request: Request, wid: str | None = None) -> dict[str, Any]:
        wid = wid or request.query_params.get("id", "")
        if not WID_RE.match(wid):
            raise Denied(400, "id: a workflow id")
        from temporalio.service import RPCError

        try:
            row = await self.data.workflow(wid)
        except RPCError as e:
            raise Denied(404, f"workflow {wid}: {e.message}") from None
        return {"row": row}

    async def ctx_canary(self, request: Request) -> dict[str, Any]:
        rows, err = await self._rows(("CanaryWorkflow",), True)
        now = datetime.now(timezone.utc)
        out = []
        for r in rows:
            s = r.extra
            charts = charts_of(s.recent_checks) if s is not None else []
            ends = (now + s.time_left).isoformat() if s is not None and s.time_left is not None else None
            out.append({"row": r, "status": s, "charts": charts, "ends_at": ends})
        return {"canaries": out, "error": err}

    async def ctx_passkeys(self, request: Request) -> dict[str, Any]:
        ops = await self.data.store.operators()
        return {"pending": await self.data.store.pending_passkeys(),
                "approved": [(o, pk) for o in ops for pk in o.passkeys]}

    async def decline(self, request: Request) -> Response:
        s = await self.require(request, Role.SUPER_ADMIN)
        await self.check_csrf(request, s)
        cred = request.path_params["cred"]
        key = self.data.store.pending_passkey_key(cred)
        kv = await self.data.store.etcd.get(key)
        if kv is None:
            raise Denied(404, "no such registration awaits approval (approved or declined already?)")
        from core.etcd import Compare, Delete

        await self.data.store.etcd.txn([Compare(key, "mod", "==", kv.mod_revision)], [Delete(key)])
        log.info("console: %s declined passkey %s of %s", s.operator, json.loads(kv.value).get("code"),
                 json.loads(kv.value).get("operator"))
        return RedirectResponse("/admin/passkeys", 303)

    # -- timeline ----------------------------------------------------------------------------------------
    async def timeline_page(self, request: Request) -> Response:
        wid = request.path_params["wid"]
        fmt = "html"
        for ext in (".md", ".json"):
            if wid.endswith(ext):
                wid, fmt = wid[: -len(ext)], ext[1:]
        if not WID_RE.match(wid):
            raise Denied(400, "workflow id: letters, digits and _.:@=- only (up to 200)")
        await self.require(request, Role.VIEWER)
        t = await self.build_timeline(wid)
        if fmt == "json":
            return Response(t.model_dump_json(indent=2), media_type="application/json", headers={
                "Content-Disposition": f'attachment; filename="timeline-{wid}.json"', "Cache-Control": "no-store"})
        if fmt == "md":
            return Response(timeline.markdown(t), media_type="text/markdown; charset=utf-8", headers={
                "Content-Disposition": f'attachment; filename="postmortem-{wid}.md"', "Cache-Control": "no-store"})
        return self.render("timeline.html", request, title=f"Timeline {wid}", t=t)

    async def build_timeline(self, wid: str) -> timeline.Timeline:
        from temporalio.service import RPCError

        try:
            row = await self.data.workflow(wid)
            hist = await self.data.history(wid)
        except RPCError as e:
            raise Denied(404, f"workflow {wid}: {e.message}") from None
        audit = await self.data.audit()
        ids = {wid}
        state = row.extra if row.kind == "IncidentWorkflow" else None
        if state is not None:
            ids |= set(state.children)
        recs = timeline.records_of(audit.records, ids)
        p = row.progress
        title = (state.alert if state is not None else f"{row.kind.replace('Workflow', '')} {wid}")
        return timeline.build(workflow_id=wid, kind=row.kind, status=(p.result or row.status) if p else row.status,
                              title=title, started_at=row.started, closed_at=row.closed,
                              history=timeline.history_events(hist), progress=p, state=state, records=recs,
                              head=audit.report.head, audit_ok=audit.report.ok, link=row.link)


def client_of(request: Request) -> str:
    """The peer's address (behind a reverse proxy, uvicorn's --forwarded-allow-ips makes it the client's)."""
    return request.client.host if request.client else ""


def safe_next(nxt: Any) -> str:
    """Where to go after signing in: a path of this console only, never another site (`//evil`, `/\\evil`)."""
    if not isinstance(nxt, str) or not nxt.startswith("/") or nxt.startswith(("//", "/\\")) \
            or any(c in nxt for c in "\\\r\n\t") or len(nxt) > 500:
        return "/matrix"
    return nxt


READING = re.compile(r"^(?P<m>[\w.]+)=(?P<v>-?[\d.]+(?:e[-+]?\d+)?) \((?P<op><=|>=|<|>|==) (?P<t>-?[\d.]+(?:e[-+]?\d+)?)\)")


def charts_of(checks: list[Any], width: int = 520, height: int = 110) -> list[dict[str, Any]]:
    """An inline SVG per health metric: its readings over the recent checks against its limit line (pure)."""
    series: dict[str, dict[str, Any]] = {}
    for i, c in enumerate(checks):
        for text in c.readings:
            m = READING.match(text)
            if not m:
                continue
            s = series.setdefault(m["m"], {"metric": m["m"], "op": m["op"], "limit": float(m["t"]), "points": []})
            s["points"].append((i, float(m["v"]), text.endswith("ok")))
    out = []
    n = max(len(checks) - 1, 1)
    for s in series.values():
        vals = [v for _, v, _ in s["points"]] + [s["limit"]]
        lo, hi = min(0.0, min(vals)), max(vals) * 1.15 or 1.0
        def y(v: float) -> float:
            return round(height - 10 - (v - lo) / (hi - lo) * (height - 20), 1)

        def x(i: int) -> float:
            return round(10 + i / n * (width - 20), 1)
        pts = " ".join(f"{x(i)},{y(v)}" for i, v, _ in s["points"])
        dots = "".join(f'<circle cx="{x(i)}" cy="{y(v)}" r="3" fill="{"#067647" if ok else "#b42318"}"/>'
                       for i, v, ok in s["points"])
        ly = y(s["limit"])
        svg = (f'<svg class="chart" data-metric="{s["metric"]}" width="{width}" height="{height}" '
               f'viewBox="0 0 {width} {height}" role="img" aria-label="{s["metric"]}">'
               f'<line x1="10" x2="{width - 10}" y1="{ly}" y2="{ly}" stroke="#b42318" stroke-dasharray="5,4"/>'
               f'<text x="{width - 12}" y="{ly - 4}" text-anchor="end" font-size="11" fill="#b42318">limit {s["limit"]:g}</text>'
               f'<polyline points="{pts}" fill="none" stroke="#1849a9" stroke-width="2"/>{dots}</svg>')
        out.append({"metric": s["metric"], "op": s["op"], "limit": f'{s["limit"]:g}', "svg": svg})
    return out


# -- the process --------------------------------------------------------------------------------------------
async def serve(settings: ConsoleSettings | None = None, ready: Callable[[str], None] | None = None) -> None:
    """`rollbackctl console`: connect to etcd (and Temporal, retried while it is away), start the watch,
    serve until stopped."""
    import uvicorn

    from activities.switch_store import SwitchStore
    from core.etcd import Etcd
    from core.settings import EtcdSettings
    from core.watcher import SwitchWatcher

    settings = settings or ConsoleSettings()
    es = EtcdSettings()
    etcd = Etcd.from_settings(es)
    store = SwitchStore(etcd, es.prefix)
    watcher = SwitchWatcher(etcd, es.prefix, observe=False)
    await watcher.start()
    data = ConsoleData(store, None, watcher)
    console = Console(data, settings)

    async def connect_temporal():
        from core.temporal_client import connect

        delay = 0.5
        while data.client is None:
            try:
                data.client = await connect()
            except Exception as e:
                log.warning("console: Temporal not reachable yet (%s); retrying", e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    task = asyncio.create_task(connect_temporal())
    host, port = settings.hostport()
    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # SIGTERM / SIGINT: end the live streams first
            console.closing.set()
            super().handle_exit(sig, frame)

    from core import metrics

    metrics_server = metrics.serve_configured(metrics.CONSOLE)
    server = Server(uvicorn.Config(metrics.HttpMetrics(console.app(), "console"), host=host, port=port, log_level="warning",
                                   access_log=False, lifespan="off", timeout_graceful_shutdown=2))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:  # say where only once it listens
            if serving.done():
                serving.result()
                return
            await asyncio.sleep(0.02)
        if ready:
            ready(console.origin)
        await serving
    finally:
        task.cancel()
        if metrics_server is not None:
            metrics_server.shutdown()
        await watcher.stop()
        await etcd.close()
