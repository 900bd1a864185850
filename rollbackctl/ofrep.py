"""The control matrix over OpenFeature's Remote Evaluation Protocol (OFREP), for consumers in any language
(`rollbackctl ofrep serve`; `dev up` starts it).

Per the protocol's OpenAPI (github.com/open-feature/protocol, service/openapi.yaml):
- `POST /ofrep/v1/evaluate/flags/{key}`: one switch: `{key, value, reason, variant, metadata}`;
  404 `{key, errorCode: FLAG_NOT_FOUND}`; 400 `{key, errorCode: INVALID_CONTEXT | PARSE_ERROR}`.
- `POST /ofrep/v1/evaluate/flags`: every switch, with an `ETag` (the store revision of the matrix);
  `If-None-Match` with that ETag answers 304 with no body.
- `GET /ofrep/v1/configuration`: what this service supports (polling, types).
- 401 without the bearer token (`Authorization: Bearer ...` or `X-API-Key`, ROLLBACKCTL_OFREP_TOKEN).

Read-only, served from one etcd watch (core/watcher.py): a request never reads etcd. Values are typed
as the switch is: bool -> boolean, enum -> string, int -> integer, money and float -> float (always a
JSON number with a fraction, as OpenFeature's float type checks), symbols -> object (a list).
`reason` is STATIC for a value written in etcd and DEFAULT for a switch never written (its manual
default); `metadata` carries the etcd revision that wrote it, the store revision, the latency class,
the owner role and who changed it last. Evaluation context is accepted and ignored: the matrix is global.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.watcher import SwitchWatcher
from manual import switches

log = logging.getLogger("rollbackctl.ofrep")
MAX_BODY = 64 * 1024
MIN_POLL_MS = 500


def typed(sw: switches.Switch, value: Any) -> Any:
    """A switch value as OFREP carries it (see the module doc)."""
    t = sw.type
    if t in (switches.SwitchType.MONEY, switches.SwitchType.FLOAT):
        return float(value)
    if t is switches.SwitchType.INT:
        return int(value)
    if t is switches.SwitchType.SYMBOLS:
        return list(value)
    return value


def evaluation(sw: switches.Switch, watcher: SwitchWatcher) -> dict[str, Any]:
    rec = watcher.records.get(sw.name)
    value = sw.parse(rec.get("value")) if rec is not None else sw.default
    meta: dict[str, Any] = {"store_revision": watcher.revision, "latency_class": sw.latency.value,
                            "owner": sw.permission.value, "type": sw.type.value}
    if rec is not None:
        meta["revision"] = watcher.revisions.get(sw.name, 0)
        meta["updated_by"] = str(rec.get("updated_by") or "")
        meta["updated_at"] = str(rec.get("updated_at") or "")
    return {"key": sw.name, "value": typed(sw, value), "reason": "STATIC" if rec is not None else "DEFAULT",
            "variant": sw.render(value), "metadata": meta}


class Ofrep:
    def __init__(self, watcher: SwitchWatcher, token: str):
        if not token:
            raise ValueError("ROLLBACKCTL_OFREP_TOKEN is empty: the OFREP endpoint needs a bearer token")
        self.watcher, self.token = watcher, token

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/ofrep/v1/evaluate/flags/{key}", self.one, methods=["POST"]),
            Route("/ofrep/v1/evaluate/flags", self.bulk, methods=["POST"]),
            Route("/ofrep/v1/configuration", self.configuration, methods=["GET"]),
            Route("/healthz", lambda r: Response("ok" if self.watcher.ready.is_set() else "starting",
                                                 200 if self.watcher.ready.is_set() else 503)),
        ])

    def _authorised(self, request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        given = given.strip() if scheme.lower() == "bearer" else request.headers.get("x-api-key", "")
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    async def _context(self, request: Request) -> str | None:
        """Why the body is refused (PARSE_ERROR / INVALID_CONTEXT), or None."""
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return "PARSE_ERROR:body larger than 64 KiB"
        if not raw.strip():
            return None
        try:
            body = json.loads(raw)
        except ValueError:
            return "PARSE_ERROR:the body is not JSON"
        if not isinstance(body, dict):
            return "PARSE_ERROR:the body must be a JSON object"
        if "context" in body and not isinstance(body["context"], dict):
            return "INVALID_CONTEXT:context must be a JSON object"
        return None

    @staticmethod
    def _unauthorised() -> Response:
        return JSONResponse({"errorDetails": "a bearer token (or X-API-Key) is required"}, 401,
                            headers={"WWW-Authenticate": "Bearer"})

    async def one(self, request: Request) -> Response:
        if not self._authorised(request):
            return self._unauthorised()
        key = request.path_params["key"]
        bad = await self._context(request)
        if bad:
            code, _, why = bad.partition(":")
            return JSONResponse({"key": key, "errorCode": code, "errorDetails": why}, 400)
        try:
            sw = switches.get(key)
        except switches.UnknownSwitch:
            return JSONResponse({"key": key, "errorCode": "FLAG_NOT_FOUND",
                                 "errorDetails": f"no switch {key!r} in the control matrix"}, 404)
        return JSONResponse({**evaluation(sw, self.watcher), "cacheable": False})

    def etag(self) -> str:
        return f'"r{self.watcher.revision}"'

    async def bulk(self, request: Request) -> Response:
        if not self._authorised(request):
            return self._unauthorised()
        bad = await self._context(request)
        if bad:
            code, _, why = bad.partition(":")
            return JSONResponse({"errorCode": code, "errorDetails": why}, 400)
        tag = self.etag()
        given = [t.strip() for t in request.headers.get("if-none-match", "").split(",") if t.strip()]
        if tag in given or "*" in given:
            return Response(status_code=304, headers={"ETag": tag})
        flags = [evaluation(sw, self.watcher) for sw in switches.SWITCHES]
        return JSONResponse({"flags": flags}, headers={"ETag": tag, "Cache-Control": "no-cache"})

    async def configuration(self, request: Request) -> Response:
        if not self._authorised(request):
            return self._unauthorised()
        return JSONResponse({"name": "rollbackctl", "capabilities": {
            "cacheInvalidation": {"polling": {"enabled": True, "minPollingIntervalMs": MIN_POLL_MS}},
            "flagEvaluation": {"supportedTypes": ["boolean", "string", "int", "float", "object"]}}})


async def serve(listen: str, token: str, ready=None) -> None:
    """`rollbackctl ofrep serve`: one watch, one endpoint, until stopped."""
    import asyncio
    import os

    import uvicorn

    from core.etcd import Etcd
    from core.settings import EtcdSettings

    es = EtcdSettings()
    etcd = Etcd.from_settings(es)
    # ROLLBACKCTL_CONSUMER_ID: the endpoint's receipt (what its cache holds; its clients poll it)
    from core import metrics

    # its cache is what the clients read: propagation (audited -> in this cache) is measured here
    watcher = SwitchWatcher(etcd, es.prefix, consumer_id=os.environ.get("ROLLBACKCTL_CONSUMER_ID") or None)
    await watcher.start()
    metrics_server = metrics.serve_configured(metrics.OFREP)
    host, _, port = listen.rpartition(":")
    app = metrics.HttpMetrics(Ofrep(watcher, token).app(), "ofrep")
    server = uvicorn.Server(uvicorn.Config(app, host=host or "127.0.0.1", port=int(port),
                                           log_level="warning", access_log=False, lifespan="off"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()
                return
            await asyncio.sleep(0.02)
        if ready:
            ready()
        await serving
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        await watcher.stop()
        await etcd.close()
