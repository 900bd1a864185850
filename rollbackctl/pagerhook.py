"""The PagerDuty v3 webhook receiver (`rollbackctl paging serve`; `dev up` starts it).

PagerDuty must reach `POST <ROLLBACKCTL_PAGING_PUBLIC_URL or http://HOST:PORT>/pagerduty/webhook`: create
a v3 webhook subscription (developer.pagerduty.com, docs/webhooks/) on the services of the escalation
levels for `incident.acknowledged`, `incident.unacknowledged`, `incident.resolved` and
`incident.reopened`, and give the subscription's secret to ROLLBACKCTL_PAGERDUTY_WEBHOOK_SECRET (a
comma list while rotating: PagerDuty signs with each).

Per PagerDuty's documentation:
- every delivery carries `X-PagerDuty-Signature: v1=<hex HMAC-SHA256 of the raw body>[,v1=...]`; one
  must match a secret (constant-time). A missing or wrong signature gets 401 and changes nothing;
- PagerDuty expects a 2xx within 5 s and retries 5xx, 429 and timeouts (at least once delivery: the
  pager drops an event id it has already forwarded); a 4xx is dropped without retry;
- an incident opened by the Events API carries the alert's dedup key as `data.incident_key`.

What it does with an event: `incident.acknowledged|unacknowledged|resolved|reopened` with an
incident_key goes to the pager workflow (signal `alert_event`), which tells the workflow that opened
the alert: an acknowledgement is *seen* (it stops re-paging), never a signed decision. Other event
types and incidents with no incident_key are acknowledged (202) and ignored; an incident_key nobody here
opened is logged and ignored by the pager.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contracts.paging import AlertEvent

log = logging.getLogger("rollbackctl.pagerhook")

EVENT_TYPES = {"incident.acknowledged": "acknowledged", "incident.unacknowledged": "unacknowledged",
               "incident.resolved": "resolved", "incident.reopened": "reopened"}
MAX_BODY = 256 * 1024  # PagerDuty drops webhooks over 256 KB itself
PATH = "/pagerduty/webhook"

Forward = Callable[[AlertEvent], Awaitable[str]]


def signature_ok(raw: bytes, header: str | None, secrets: list[str]) -> bool:
    """PagerDuty's v1 scheme: any `v1=<hex>` of the header equals HMAC-SHA256(secret, raw body), for any secret."""
    if not header or not secrets:
        return False
    given = [p.strip()[3:] for p in header.split(",") if p.strip().startswith("v1=")]
    ok = False
    for s in secrets:
        want = hmac.new(s.encode(), raw, hashlib.sha256).hexdigest()
        for g in given:
            ok |= hmac.compare_digest(want, g)  # no early exit: constant time over what was given
    return ok


def parse_event(body: Any, webhook_id: str | None) -> AlertEvent | str | None:
    """The AlertEvent of a v3 payload; None when it is not one of ours to forward; a str when malformed."""
    if not isinstance(body, dict) or not isinstance(body.get("event"), dict):
        return "the body must be a JSON object with an 'event' object (PagerDuty v3 webhook)"
    ev = body["event"]
    et = ev.get("event_type")
    if not isinstance(et, str) or not et:
        return "event.event_type is missing"
    if et not in EVENT_TYPES:
        return None
    data = ev.get("data")
    if not isinstance(data, dict):
        return "event.data must be an object"
    key = data.get("incident_key")
    if not isinstance(key, str) or not key:
        return None  # an incident not opened by the Events API: not ours
    try:
        at = datetime.fromisoformat(str(ev.get("occurred_at")).replace("Z", "+00:00"))
    except ValueError:
        at = datetime.now(timezone.utc)
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    agent = ev.get("agent") if isinstance(ev.get("agent"), dict) else {}
    event_id = str(ev.get("id") or webhook_id or "")
    if not event_id:
        return "event.id is missing"
    try:
        return AlertEvent(event_id=event_id[:200], event_type=EVENT_TYPES[et], dedup_key=key[:255],
                          by=str(agent.get("summary") or "")[:120], at=at,
                          pd_incident=str(data.get("html_url") or data.get("id") or "")[:300])
    except ValueError as e:
        return f"event fields: {e}"


def create_app(forward: Forward, secrets: list[str]) -> Starlette:
    if not secrets:
        raise ValueError("ROLLBACKCTL_PAGERDUTY_WEBHOOK_SECRET is not set: the receiver verifies every webhook's "
                         "signature with the subscription's secret")
    counts = {"forwarded": 0, "ignored": 0, "refused": 0, "bad": 0}

    def _count(outcome: str) -> None:
        from core import metrics

        counts[outcome] += 1
        metrics.WEBHOOKS_RECEIVED.labels(outcome).inc()

    async def webhook(request: Request) -> Response:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            _count("bad")
            return JSONResponse({"error": "too_large", "detail": f"at most {MAX_BODY} bytes"}, 413)
        if not signature_ok(raw, request.headers.get("x-pagerduty-signature"), secrets):
            _count("refused")
            log.warning("PagerDuty webhook refused: missing or wrong X-PagerDuty-Signature (from %s)",
                        request.client.host if request.client else "?")
            return JSONResponse({"error": "unauthorized", "detail": "missing or wrong X-PagerDuty-Signature"}, 401)
        try:
            body = json.loads(raw)
        except ValueError:
            _count("bad")
            return JSONResponse({"error": "bad_request", "detail": "the body is not JSON"}, 400)
        ev = parse_event(body, request.headers.get("x-webhook-id"))
        if isinstance(ev, str):
            _count("bad")
            return JSONResponse({"error": "bad_request", "detail": ev}, 400)
        if ev is None:
            _count("ignored")
            return JSONResponse({"status": "ignored", "detail": "not an incident event of an Events API alert"}, 202)
        try:
            pager = await forward(ev)
        except Exception as e:  # Temporal unreachable: 5xx, so PagerDuty retries the delivery
            log.error("PagerDuty %s for %s not forwarded: %s", ev.event_type, ev.dedup_key, e)
            return JSONResponse({"error": "unavailable", "detail": "Temporal is unreachable; retry"}, 503)
        _count("forwarded")
        log.info("PagerDuty %s of %s by %s -> %s", ev.event_type, ev.dedup_key, ev.by or "?", pager)
        return JSONResponse({"status": "accepted", "event_type": ev.event_type, "pager": pager}, 202)

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, **counts})

    async def not_found(request: Request, exc) -> Response:
        return JSONResponse({"error": "not_found", "detail": f"{request.method} {request.url.path}"},
                            getattr(exc, "status_code", 404))

    from starlette.exceptions import HTTPException

    return Starlette(routes=[Route(PATH, webhook, methods=["POST"]), Route("/healthz", health, methods=["GET"])],
                     exception_handlers={HTTPException: not_found})


async def serve(host: str, port: int, *, stop=None) -> int:
    """Run the receiver: forwards to the pager of ROLLBACKCTL_TASK_QUEUE over the Temporal client."""
    import asyncio
    import signal

    import uvicorn

    from activities.pager_client import forward_alert_event
    from core.settings import PagingSettings, TemporalSettings
    from core.temporal_client import connect

    ps, ts = PagingSettings(), TemporalSettings()
    secrets = [s.strip() for s in (ps.pagerduty_webhook_secret.get_secret_value() if ps.pagerduty_webhook_secret
                                   else "").split(",") if s.strip()]
    client = await connect(ts)
    from core import metrics

    server_m = metrics.serve_configured(metrics.WEBHOOK_RECEIVER)

    async def forward(ev: AlertEvent) -> str:
        return await forward_alert_event(client, ts.task_queue, ev)

    app = create_app(forward, secrets)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(server.serve())
    print(f"PagerDuty webhook receiver on http://{host}:{port}{PATH} -> pager of task queue {ts.task_queue}",
          flush=True)
    await stop.wait()
    server.should_exit = True
    await task
    if server_m is not None:
        server_m.shutdown()
    return 0

