"""The simulator's HTTP face (Starlette): the trading-core contract under /v1/, test controls under /sim/.

/v1/ routes need `Authorization: Bearer <token>` (401 otherwise). While `global_api_enabled` is
false the trading routes (actions, orders, withdrawals) answer 503 `{"error": "maintenance"}` (a browser,
asking for text/html, gets the static maintenance page, simulator/maintenance.html, with the same 503);
the observation routes (/v1/health, /v1/risk/exposure, /v1/config/applied) keep answering with
`"maintenance": true`. /sim/ routes take no token and answer loopback clients only.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Awaitable, Callable

from pydantic.json_schema import models_json_schema
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from contracts.trading_core import (
    ACTIONS,
    IDEMPOTENCY_HEADER,
    REPLAYED_HEADER,
    AppliedConfig,
    CoreActionResult,
    ExposureReport,
    HealthSnapshot,
)
from core.aio import wait_set
from simulator.core import ActionError, PagingConfig, Simulator
from simulator.faults import ApiFaults, FaultError

Result = tuple[int, Any, dict[str, str]]  # status, JSON payload, extra headers
Handler = Callable[[Request], Awaitable[Result]]


def problem(status: int, payload: dict[str, Any], headers: dict[str, str]) -> Response:
    """The same error as an RFC 9457 problem document (application/problem+json)."""
    error = str(payload.get("error") or "error")
    doc = {"type": f"https://rollbackctl.dev/problems/{error}", "title": error.replace("_", " "),
           "status": status, "detail": payload.get("detail", "")}
    return Response(json.dumps(doc), status, headers, media_type="application/problem+json")


def err(status: int, error: str, detail: str = "", headers: dict[str, str] | None = None) -> Result:
    return status, {"error": error, "detail": detail}, headers or {}


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise ActionError(400, "bad_request", "the body is not valid JSON") from None


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost", "testclient")


def _malform(f: ApiFaults, status: int, payload: Any, headers: dict[str, str]) -> Response:
    if f.api_malformed == "not_json":
        text = json.dumps(payload)
        return Response(text[: max(1, len(text) // 2)], status, headers, media_type="application/json")
    field = f.api_malformed_field or "hl_margin_ratio"
    if isinstance(payload, dict):
        payload = dict(payload)
        if f.api_malformed == "missing_field":
            payload.pop(field, None)
        else:
            payload[field] = "n/a"
    return JSONResponse(payload, status, headers)


async def _strike(sim: Simulator, f: ApiFaults) -> Response | None:
    """The failure this request gets, if any (None: answer normally)."""
    if f.api_timeout:
        await wait_set(sim.release_event, f.api_timeout_s or 30.0)
        return JSONResponse({"error": "gateway_timeout", "detail": "injected timeout"}, 504)
    if f.api_status is not None:
        code = f.api_status
        error = {400: "bad_request", 401: "unauthorized", 404: "not_found", 409: "conflict", 422: "unprocessable",
                 429: "rate_limited", 500: "internal", 502: "bad_gateway", 503: "unavailable",
                 504: "gateway_timeout"}.get(code, "injected")
        if f.api_problem_json:
            return problem(code, {"error": error, "detail": f"injected status {code}"}, {})
        return JSONResponse({"error": error, "detail": f"injected status {code}"}, code)
    if f.api_error_share and sim.api_rng.random() < f.api_error_share:
        return JSONResponse({"error": "internal", "detail": "injected 500"}, 500)
    return None


# The manual's Level 3 "static maintenance page": what a browser gets wherever the API answers 503
# (JSON clients get the 503 error object). rollbackctl's console serves the same file at /maintenance.
MAINTENANCE_PAGE = Path(__file__).resolve().parent / "maintenance.html"


def _wants_html(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "application/json" not in accept


def create_app(sim: Simulator, token: str) -> Starlette:
    """The ASGI app around one Simulator; its lifespan starts and stops the simulator."""

    def authorised(request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())

    def wrap(handler: Handler, *, v1: bool, trading: bool = False, faultable: bool = True):
        async def endpoint(request: Request) -> Response:
            if not v1 and not _loopback(request):
                return JSONResponse({"error": "forbidden", "detail": "/sim/ routes answer loopback clients only"}, 403)
            f = sim.api_fault_for(request.url.path) if faultable else None
            if f is not None:
                if f.api_latency_ms:
                    await asyncio.sleep(f.api_latency_ms / 1000.0)
                if not f.api_fault_after:
                    hit = await _strike(sim, f)
                    if hit is not None:
                        return hit
            if trading and sim.maintenance and _wants_html(request):
                return FileResponse(MAINTENANCE_PAGE, 503, headers={"Retry-After": "60", "Cache-Control": "no-store"},
                                    media_type="text/html")
            if v1 and not authorised(request):
                status, payload, headers = err(401, "unauthorized", "missing or invalid bearer token",
                                               {"WWW-Authenticate": "Bearer"})
            elif trading and sim.maintenance:
                status, payload, headers = err(503, "maintenance", "global_api_enabled is false (Degradation Level 3)",
                                               {"Retry-After": "60"})
            else:
                try:
                    status, payload, headers = await handler(request)
                except ActionError as e:
                    status, payload, headers = err(e.status, e.error, e.detail, e.headers)
            if f is not None and f.api_fault_after:
                hit = await _strike(sim, f)
                if hit is not None:
                    return hit
            if f is not None and f.api_malformed and 200 <= status < 300:
                return _malform(f, status, payload, headers)
            if isinstance(payload, str):
                return PlainTextResponse(payload, status, headers)
            if v1 and status >= 400 and sim.faults.api.api_problem_json and isinstance(payload, dict):
                return problem(status, payload, headers)
            return JSONResponse(payload, status, headers)

        return endpoint

    # -- /v1/ -----------------------------------------------------------------------------------------
    async def health(request: Request) -> Result:
        return 200, sim.health(), {}

    async def exposure(request: Request) -> Result:
        return 200, sim.exposure(), {}

    async def applied(request: Request) -> Result:
        return 200, sim.applied_config(), {}

    async def action(request: Request) -> Result:
        body = await _json_body(request)
        answer, replayed = await sim.act(request.path_params["name"], body, request.headers.get(IDEMPOTENCY_HEADER))
        return 200, answer, {REPLAYED_HEADER: "true" if replayed else "false"}

    async def orders(request: Request) -> Result:
        return 200, sim.order(await _json_body(request)), {}

    async def withdrawals(request: Request) -> Result:
        return 200, sim.withdraw(await _json_body(request)), {}

    # -- /sim/ ----------------------------------------------------------------------------------------
    async def status(request: Request) -> Result:
        return 200, sim.status(), {}

    async def reset(request: Request) -> Result:
        body = await _json_body(request)
        prefix, seed = body.get("prefix"), body.get("seed")
        if prefix is not None and (not isinstance(prefix, str) or not prefix.startswith("/") or not prefix.endswith("/")):
            return err(400, "bad_request", "prefix must start and end with '/'")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            return err(400, "bad_request", "seed must be an integer")
        await sim.reset(prefix, seed)
        return 200, sim.status(), {}

    async def faults(request: Request) -> Result:
        if request.method == "DELETE":
            sim.clear_faults()
        elif request.method == "POST":
            try:
                sim.set_faults(await _json_body(request))
            except (FaultError, ValueError) as e:
                return err(400, "bad_fault", str(e))
        return 200, sim.faults_view(), {}

    async def actions(request: Request) -> Result:
        if request.method == "DELETE":
            sim.actions.clear()
            sim.idempotency.clear()
        return 200, list(sim.actions), {}

    async def switches(request: Request) -> Result:
        return 200, {"prefix": sim.prefix, **sim.applied_config()}, {}

    async def _raw_json(request: Request) -> tuple[Any, int, bool]:
        raw = await request.body()
        try:
            return json.loads(raw), len(raw), True
        except ValueError:
            return raw.decode(errors="replace"), len(raw), False

    async def pagerduty(request: Request) -> Result:
        """The Events API v2 (POST: PagerDuty's /v2/enqueue); GET lists the bodies received, DELETE forgets."""
        if request.method == "DELETE":
            sim.pagerduty.clear()
        if request.method == "POST":
            body, size, ok = await _raw_json(request)
            if not ok:
                sim.pagerduty.received.append({"_raw": body})
                return 400, {"status": "invalid event", "message": "Event object is invalid",
                             "errors": ["body is not JSON"]}, {}
            code, answer = sim.pagerduty.receive(body, size)
            return code, answer, {}
        return 200, [b for b in sim.pagerduty.received if "_change" not in b], {}

    async def pagerduty_change(request: Request) -> Result:
        """PagerDuty's /v2/change/enqueue."""
        body, size, ok = await _raw_json(request)
        if not ok:
            return 400, {"status": "invalid event", "message": "Event object is invalid",
                         "errors": ["body is not JSON"]}, {}
        code, answer = sim.pagerduty.receive_change(body, size)
        return code, answer, {}

    async def pagerduty_incidents(request: Request) -> Result:
        return 200, sim.pagerduty.incident_list(), {}

    async def pagerduty_state(request: Request) -> Result:
        return 200, sim.pagerduty.state(), {}

    async def pagerduty_app(request: Request) -> Result:
        """A person in the PagerDuty app: POST /sim/pagerduty/app/{acknowledge|unacknowledge|resolve}
        {"dedup_key", "user"}; the alert changes and the signed v3 webhook goes to the receiver."""
        body = await _json_body(request)
        action = request.path_params["action"]
        if action not in ("acknowledge", "unacknowledge", "resolve"):
            return err(404, "not_found", f"no app action {action!r}")
        if not isinstance(body, dict) or not isinstance(body.get("dedup_key"), str):
            return err(400, "bad_request", "give the alert's dedup_key")
        try:
            hook = sim.pagerduty.app_action(body["dedup_key"], action, str(body.get("user") or "On-call Person"))
        except KeyError as e:
            return err(404, "not_found", str(e.args[0]))
        await sim.post_webhook(hook)
        return 200, {k: v for k, v in hook.items() if k != "body"}, {}

    async def paging_config(request: Request) -> Result:
        if request.method == "POST":
            body = await _json_body(request)
            if not isinstance(body, dict):
                return err(400, "bad_request", "a JSON object of PagingConfig fields")
            try:
                cfg = PagingConfig.model_validate({**sim.paging.model_dump(), **body})
            except ValueError as e:
                return err(400, "bad_config", str(e).replace("\n", " "))
            sim.configure_paging(cfg)
        return 200, sim.paging.model_dump(), {}

    async def paging_state(request: Request) -> Result:
        return 200, {"pagerduty": sim.pagerduty.state(), "slack": sim.slack.state()}, {}

    async def slack(request: Request) -> Result:
        path = request.path_params.get("path", "")
        if request.method == "DELETE":
            sim.slack.clear()
        if request.method == "POST":
            body, _, ok = await _raw_json(request)
            if not ok:
                sim.slack.received.append({"path": path, "body": body})
                return 400, "invalid_payload", {}
            code, text, headers = sim.slack.receive(path, body)
            return code, text, headers
        return 200, sim.slack.bodies(path if path else None), {}

    spec = openapi_spec()

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec)

    async def not_found(request: Request, exc: HTTPException) -> Response:
        return JSONResponse({"error": "not_found" if exc.status_code == 404 else "method_not_allowed",
                             "detail": f"{request.method} {request.url.path}"}, exc.status_code)

    @asynccontextmanager
    async def lifespan(app):
        await sim.start()
        try:
            yield
        finally:
            await sim.stop()

    routes = [
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/v1/health", wrap(health, v1=True), methods=["GET"]),
        Route("/v1/risk/exposure", wrap(exposure, v1=True), methods=["GET"]),
        Route("/v1/config/applied", wrap(applied, v1=True), methods=["GET"]),
        Route("/v1/actions/{name}", wrap(action, v1=True, trading=True), methods=["POST"]),
        Route("/v1/orders", wrap(orders, v1=True, trading=True), methods=["POST"]),
        Route("/v1/withdrawals", wrap(withdrawals, v1=True, trading=True), methods=["POST"]),
        Route("/sim/status", wrap(status, v1=False, faultable=False), methods=["GET"]),
        Route("/sim/reset", wrap(reset, v1=False, faultable=False), methods=["POST"]),
        Route("/sim/faults", wrap(faults, v1=False, faultable=False), methods=["GET", "POST", "DELETE"]),
        Route("/sim/actions", wrap(actions, v1=False, faultable=False), methods=["GET", "DELETE"]),
        Route("/sim/switches", wrap(switches, v1=False, faultable=False), methods=["GET"]),
        Route("/sim/pagerduty", wrap(pagerduty, v1=False), methods=["GET", "POST", "DELETE"]),
        Route("/sim/pagerduty/v2/enqueue", wrap(pagerduty, v1=False), methods=["POST"]),
        Route("/sim/pagerduty/v2/change/enqueue", wrap(pagerduty_change, v1=False), methods=["POST"]),
        Route("/sim/pagerduty/incidents", wrap(pagerduty_incidents, v1=False, faultable=False), methods=["GET"]),
        Route("/sim/pagerduty/state", wrap(pagerduty_state, v1=False, faultable=False), methods=["GET"]),
        Route("/sim/pagerduty/app/{action}", wrap(pagerduty_app, v1=False, faultable=False), methods=["POST"]),
        Route("/sim/paging/config", wrap(paging_config, v1=False, faultable=False), methods=["GET", "POST"]),
        Route("/sim/paging/state", wrap(paging_state, v1=False, faultable=False), methods=["GET"]),
        Route("/sim/slack", wrap(slack, v1=False), methods=["GET", "POST", "DELETE"]),
        Route("/sim/slack/{path:path}", wrap(slack, v1=False), methods=["GET", "POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: not_found})


def openapi_spec() -> dict[str, Any]:
    """OpenAPI 3.1 of the contract, schemas generated from the pydantic models."""
    _, defs = models_json_schema(
        [(m, "serialization") for m in (HealthSnapshot, ExposureReport, AppliedConfig, CoreActionResult)],
        ref_template="#/components/schemas/{model}",
    )
    schemas = defs.get("$defs", {})
    error = {"type": "object", "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
             "required": ["error"]}
    schemas["Error"] = error

    def ref(name: str) -> dict[str, Any]:
        return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}

    common = {
        "401": {"description": "missing or invalid bearer token", **ref("Error")},
    }
    observe = {**common, "200": {"description": "ok (also in maintenance, with maintenance: true)"}}
    paths: dict[str, Any] = {
        "/v1/health": {"get": {"summary": "Health snapshot", "operationId": "health",
                               "responses": {**observe, "200": {"description": "snapshot", **ref("HealthSnapshot")}}}},
        "/v1/risk/exposure": {"get": {"summary": "Positions and the core's exposure per symbol",
                                      "operationId": "exposure",
                                      "responses": {**observe, "200": {"description": "report", **ref("ExposureReport")}}}},
        "/v1/config/applied": {"get": {"summary": "Etcd revision of the switch config applied, per switch",
                                       "operationId": "configApplied",
                                       "responses": {**observe, "200": {"description": "applied config",
                                                                        **ref("AppliedConfig")}}}},
        "/v1/actions/{name}": {"post": {
            "summary": "Run an action once per Idempotency-Key (a repeated key returns the first answer)",
            "operationId": "action",
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "enum": list(ACTIONS)}},
                {"name": IDEMPOTENCY_HEADER, "in": "header", "required": True,
                 "schema": {"type": "string", "maxLength": 255}},
            ],
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object",
                "properties": {"symbol": {"type": "string"}, "above_usd": {"type": "number", "exclusiveMinimum": 0}},
                "description": "pause/resume_symbol_hl_routing need symbol; pause_large_withdrawals needs above_usd",
            }}}},
            "responses": {**common,
                          "200": {"description": "done / noop / started; header Idempotent-Replayed: true on a repeat",
                                  **ref("CoreActionResult")},
                          "400": {"description": "bad body or missing Idempotency-Key", **ref("Error")},
                          "404": {"description": "unknown action", **ref("Error")},
                          "422": {"description": "Idempotency-Key reused with another action/body", **ref("Error")},
                          "503": {"description": "maintenance (global_api_enabled=false)", **ref("Error")}},
        }},
        "/v1/orders": {"post": {"summary": "Place an order (simulated routing decision)", "operationId": "order",
                                "responses": {**common, "503": {"description": "maintenance", **ref("Error")}}}},
        "/v1/withdrawals": {"post": {"summary": "Request a withdrawal", "operationId": "withdraw",
                                     "responses": {**common, "503": {"description": "maintenance", **ref("Error")}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Trading core (rollbackctl simulator)", "version": "1",
                 "description": "The contract rollbackctl depends on; see docs/trading-core-api.md."},
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }
