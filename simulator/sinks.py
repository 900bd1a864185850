"""Local stand-ins for PagerDuty (Events API v2, Change Events, v3 webhooks) and Slack incoming webhooks,
as strict as the real services, so a test that passes here passes against them.

PagerDuty, from its developer documentation (github.com/PagerDuty/developer-docs, docs/events-API-v2/):
- an event is refused with 400 "invalid event" unless routing_key is the 32-character integration key,
  event_action is trigger/acknowledge/resolve, dedup_key (if any) is at most 255 characters, and a
  trigger's payload has summary (<= 1024), source and a severity of critical/error/warning/info;
  custom_details is an object; links need href, images an https src; the body is at most 512 KB;
- alerts are keyed by (routing_key, dedup_key): a trigger with no open alert opens one and *notifies
  a person*; a trigger on an open alert is appended to its log and notifies nobody; "while an incident
  is acknowledged, it won't generate any additional notifications, even if it receives new trigger
  events"; acknowledge/resolve act only with the routing_key that opened the alert ("sent via a
  different routing_key ... will be dropped"), and on a resolved or unknown key they are dropped; after
  a resolve the same dedup_key opens a new alert;
- "approximately 120 calls/minute per integration key ... calculated over a 60 second window looking
  back from the current time"; beyond that "429 - Request Limit Exceeded and PagerDuty will not ingest
  the event" (docs/events-API-v2/05-Rate-Limits.md);
- Change Events go to /v2/change/enqueue (routing_key, payload.summary required);
- v3 webhooks (docs/webhooks/): one event per delivery, `X-PagerDuty-Signature: v1=<hex HMAC-SHA256 of
  the raw body with the subscription secret>` (several, comma-separated, during a rotation),
  `X-Webhook-Id` repeated on every retry of one delivery.

Slack incoming webhooks (api.slack.com: "Improving error conditions for Incoming Webhooks",
"Basic message formatting", rate limits): 400 invalid_payload / no_text / invalid_blocks, 403
action_prohibited, 404 channel_not_found / no_service, 410 channel_is_archived; about one message a
second per webhook, 429 with Retry-After; `&`, `<`, `>` must be sent as `&amp;` `&lt;` `&gt;` except in
control sequences (`<@U..>`, `<#C..>`, `<!here>`, `<https://..|text>`): Slack accepts the message (200)
but shows it mangled, so the sink records it as mangled; section text <= 3000, <= 10 fields of <= 2000,
<= 50 blocks.

Everything is readable (`state()`), so tests assert on what a person would have seen: alerts, the
notifications PagerDuty would have sent, rejected events, change events, webhooks, Slack messages.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from collections import deque
from datetime import datetime, timezone
from typing import Any, Callable

PD_ACTIONS = ("trigger", "acknowledge", "resolve")
PD_SEVERITIES = ("critical", "error", "warning", "info")
HIGH_URGENCY = ("critical", "error")  # PagerDuty's dynamic notifications: severity -> urgency
ROUTING_KEY = re.compile(r"^[A-Za-z0-9]{32}$")
MAX_BODY = 512 * 1024
INVALID = {"status": "invalid event", "message": "Event object is invalid"}
THROTTLED = {"status": "throttle event", "message": "Requests for this service are arriving too quickly. "
                                                   "Please retry later."}
Clock = Callable[[], float]


def iso_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _str(v: Any, maxlen: int | None = None) -> bool:
    return isinstance(v, str) and bool(v) and (maxlen is None or len(v) <= maxlen)


def _links_images_errors(body: dict[str, Any]) -> list[str]:
    errs = []
    links = body.get("links")
    if links is not None:
        if not isinstance(links, list) or not all(isinstance(x, dict) and _str(x.get("href")) for x in links):
            errs.append("'links' must be a list of objects with an 'href'")
    images = body.get("images")
    if images is not None:
        if not isinstance(images, list) or not all(
                isinstance(x, dict) and _str(x.get("src")) and str(x["src"]).startswith("https://") for x in images):
            errs.append("'images' must be a list of objects with an https 'src'")
    return errs


def _summary_details_errors(p: dict[str, Any]) -> list[str]:
    """payload.summary (required, <= 1024) and payload.custom_details (an object): alert and change events."""
    errs = []
    s = p.get("summary")
    if not _str(s):
        errs.append("'payload.summary' is missing or blank")
    elif len(s) > 1024:
        errs.append("'payload.summary' is longer than 1024 characters")
    if "custom_details" in p and not isinstance(p["custom_details"], dict):
        errs.append("'payload.custom_details' must be an object")
    return errs


def _routing_key_errors(rk: Any) -> list[str]:
    if not isinstance(rk, str) or not rk:
        return ["'routing_key' is missing or blank"]
    if not ROUTING_KEY.match(rk):
        return [f"'routing_key' must be the 32-character integration key (got {len(rk)} characters)"]
    return []


def pagerduty_errors(body: Any) -> list[str]:
    """What PagerDuty's Events API v2 refuses in this alert event (empty: accepted)."""
    if not isinstance(body, dict):
        return ["Event object must be a JSON object"]
    errs = _routing_key_errors(body.get("routing_key"))
    action = body.get("event_action")
    if action not in PD_ACTIONS:
        errs.append(f"'event_action' must be one of {', '.join(PD_ACTIONS)}")
    dk = body.get("dedup_key")
    if dk is not None and not _str(dk, 255):
        errs.append("'dedup_key' must be a non-empty string of at most 255 characters")
    if action in ("acknowledge", "resolve") and not dk:
        errs.append(f"'dedup_key' is required to {action}")
    if action == "trigger":
        p = body.get("payload")
        if not isinstance(p, dict):
            errs.append("'payload' is required for trigger")
        else:
            errs += _summary_details_errors(p)
            if not _str(p.get("source")):
                errs.append("'payload.source' is missing or blank")
            if p.get("severity") not in PD_SEVERITIES:
                errs.append(f"'payload.severity' must be one of {', '.join(PD_SEVERITIES)}")
            for f in ("component", "group", "class"):
                if f in p and not isinstance(p[f], str):
                    errs.append(f"'payload.{f}' must be a string")
            ts = p.get("timestamp")
            if ts is not None:
                try:
                    datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
                except ValueError:
                    errs.append("'payload.timestamp' must be an ISO 8601 timestamp")
        errs += _links_images_errors(body)
    return errs


def change_event_errors(body: Any) -> list[str]:
    """What /v2/change/enqueue refuses (empty: accepted)."""
    if not isinstance(body, dict):
        return ["Change event must be a JSON object"]
    errs = _routing_key_errors(body.get("routing_key"))
    p = body.get("payload")
    if not isinstance(p, dict):
        errs.append("'payload' is required")
    else:
        errs += _summary_details_errors(p)
        if "source" in p and not isinstance(p["source"], str):
            errs.append("'payload.source' must be a string")
    errs += _links_images_errors(body)
    return errs


def sign_webhook(body: bytes, secrets: list[str]) -> str:
    """PagerDuty's v3 signature header: `v1=<hex HMAC-SHA256>` per secret, comma-separated."""
    return ",".join("v1=" + hmac.new(s.encode(), body, hashlib.sha256).hexdigest() for s in secrets)


class PagerDutySink:
    """PagerDuty as the workflows meet it: events in, alerts, notifications, webhooks out."""

    def __init__(self, *, events_per_min: int | None = 120, known_keys: set[str] | None = None,
                 webhook_url: str | None = None, webhook_secrets: list[str] | None = None,
                 clock: Clock = time.monotonic) -> None:
        self.events_per_min = events_per_min  # None: no rate limit (an in-process model under time skipping)
        self.known_keys = known_keys  # None: any well-formed key is an integration of this account
        self.webhook_url = webhook_url
        self.webhook_secrets = webhook_secrets or []
        self.clock = clock
        self.received: list[dict[str, Any]] = []  # every body, as sent
        self.alerts: dict[tuple[str, str], dict[str, Any]] = {}
        self.notifications: list[dict[str, Any]] = []  # each time PagerDuty would notify a person
        self.rejected: list[dict[str, Any]] = []
        self.dropped: list[dict[str, Any]] = []  # accepted (202) but acting on nothing (PagerDuty drops them)
        self.change_events: list[dict[str, Any]] = []
        self.webhooks: list[dict[str, Any]] = []  # outbound v3 webhooks (to be posted by the app)
        self._window: dict[str, deque[float]] = {}
        self._n = 0
        self._incident_no = 0

    def clear(self) -> None:
        """Forget alerts, events and windows (a test's reset); the configuration stays."""
        self.__init__(events_per_min=self.events_per_min, known_keys=self.known_keys, webhook_url=self.webhook_url,
                      webhook_secrets=self.webhook_secrets, clock=self.clock)

    # -- the Events API ------------------------------------------------------------------------------
    def _throttled(self, rk: str) -> bool:
        if self.events_per_min is None:
            return False
        now = self.clock()
        w = self._window.setdefault(rk, deque())
        while w and w[0] <= now - 60.0:
            w.popleft()
        if len(w) >= self.events_per_min:
            return True
        w.append(now)
        return False

    def _reject(self, status: int, answer: dict[str, Any], body: Any, kind: str = "alert") -> tuple[int, dict[str, Any]]:
        self.rejected.append({"at": iso_now(), "status": status, "kind": kind, "errors": answer.get("errors", []),
                              "routing_key": body.get("routing_key") if isinstance(body, dict) else None,
                              "dedup_key": body.get("dedup_key") if isinstance(body, dict) else None})
        return status, answer

    def _known(self, rk: str) -> bool:
        return self.known_keys is None or rk in self.known_keys

    def receive(self, body: Any, size: int = 0) -> tuple[int, dict[str, Any]]:
        self.received.append(body if isinstance(body, dict) else {"_raw": body})
        if size > MAX_BODY:
            return self._reject(400, {**INVALID, "errors": ["Event is larger than 512 KB"]}, body)
        errs = pagerduty_errors(body)
        if errs:
            return self._reject(400, {**INVALID, "errors": errs}, body)
        rk = body["routing_key"]
        if not self._known(rk):
            return self._reject(400, {**INVALID, "errors": ["'routing_key' is not an integration key of this "
                                                            "account (Invalid routing key)"]}, body)
        if self._throttled(rk):
            return self._reject(429, dict(THROTTLED), body)
        action = body["event_action"]
        dk = body.get("dedup_key")
        if not dk:
            self._n += 1
            dk = uuid.uuid4().hex
        now = iso_now()
        alert = self.alerts.get((rk, dk))
        open_alert = alert is not None and alert["status"] != "resolved"
        if action == "trigger":
            p = body["payload"]
            if not open_alert:
                self._incident_no += 1
                alert = {"routing_key": rk, "dedup_key": dk, "status": "triggered", "opened_at": now,
                         "summary": p["summary"], "severity": p["severity"],
                         "urgency": "high" if p["severity"] in HIGH_URGENCY else "low",
                         "incident_number": self._incident_no, "incident_id": f"PSIM{self._incident_no:05d}",
                         "custom_details": p.get("custom_details", {}), "log": [], "notifications": 0,
                         "acknowledged_by": None, "resolved_by": None}
                self.alerts[(rk, dk)] = alert
                self._notify(alert, "triggered")
            else:
                alert["custom_details"] = p.get("custom_details", alert["custom_details"])
            alert["log"].append({"at": now, "action": "trigger", "summary": p["summary"], "severity": p["severity"],
                                 "custom_details": p.get("custom_details", {})})
        elif not open_alert:
            self.dropped.append({"at": now, "action": action, "routing_key": rk, "dedup_key": dk,
                                 "why": "no open alert with this routing_key and dedup_key"})
        else:
            alert["log"].append({"at": now, "action": action})
            if action == "acknowledge":
                if alert["status"] == "triggered":
                    alert["status"], alert["acknowledged_by"] = "acknowledged", "events-api"
            else:
                alert["status"], alert["resolved_by"] = "resolved", "events-api"
        return 202, {"status": "success", "message": "Event processed", "dedup_key": dk}

    def _notify(self, alert: dict[str, Any], why: str) -> None:
        alert["notifications"] += 1
        self.notifications.append({"at": iso_now(), "routing_key": alert["routing_key"],
                                   "dedup_key": alert["dedup_key"], "summary": alert["summary"],
                                   "severity": alert["severity"], "urgency": alert["urgency"], "why": why})

    def receive_change(self, body: Any, size: int = 0) -> tuple[int, dict[str, Any]]:
        self.received.append({"_change": body})
        if size > MAX_BODY:
            return self._reject(400, {**INVALID, "errors": ["Event is larger than 512 KB"]}, body, "change")
        errs = change_event_errors(body)
        if errs:
            return self._reject(400, {**INVALID, "errors": errs}, body, "change")
        if not self._known(body["routing_key"]):
            return self._reject(400, {**INVALID, "errors": ["Invalid routing key"]}, body, "change")
        if self._throttled(body["routing_key"]):
            return self._reject(429, dict(THROTTLED), body, "change")
        self.change_events.append({"at": iso_now(), **body})
        return 202, {"status": "success", "message": "Change event processed"}

    # -- people in the PagerDuty app ---------------------------------------------------------------------
    def _find(self, dedup_key: str) -> dict[str, Any] | None:
        found = [a for (rk, dk), a in self.alerts.items() if dk == dedup_key and a["status"] != "resolved"]
        return found[-1] if found else None

    def app_action(self, dedup_key: str, action: str, user: str) -> dict[str, Any]:
        """A person acts on an alert in the app: acknowledge | unacknowledge (its ack timed out) | resolve.
        Returns the v3 webhook it causes (queued in `webhooks`; posted by the app layer) or raises KeyError."""
        alert = self._find(dedup_key)
        if alert is None:
            raise KeyError(f"no open alert with dedup_key {dedup_key!r}")
        now = iso_now()
        if action == "acknowledge":
            alert["status"], alert["acknowledged_by"] = "acknowledged", user
        elif action == "unacknowledge":
            alert["status"] = "triggered"
            self._notify(alert, "acknowledgement timed out")
        elif action == "resolve":
            alert["status"], alert["resolved_by"] = "resolved", user
        else:
            raise ValueError(f"unknown app action {action!r}")
        alert["log"].append({"at": now, "action": f"app:{action}", "by": user})
        return self._webhook(alert, {"acknowledge": "incident.acknowledged", "unacknowledge": "incident.unacknowledged",
                                     "resolve": "incident.resolved"}[action], user)

    def _webhook(self, alert: dict[str, Any], event_type: str, user: str) -> dict[str, Any]:
        inc = alert["incident_id"]
        event = {"event": {
            "id": uuid.uuid4().hex, "event_type": event_type, "resource_type": "incident", "occurred_at": iso_now(),
            "agent": {"id": "PUSER01", "type": "user_reference", "summary": user,
                      "html_url": "https://sim.pagerduty.local/users/PUSER01"},
            "client": None,
            "data": {"id": inc, "type": "incident", "number": alert["incident_number"], "status": alert["status"],
                     "incident_key": alert["dedup_key"], "title": alert["summary"], "urgency": alert["urgency"],
                     "html_url": f"https://sim.pagerduty.local/incidents/{inc}",
                     "self": f"https://api.pagerduty.local/incidents/{inc}",
                     "service": {"id": "PSVC" + alert["routing_key"][:4], "type": "service_reference"}},
        }}
        raw = json.dumps(event, separators=(",", ":")).encode()
        hook = {"id": uuid.uuid4().hex, "body": raw, "event": event, "url": self.webhook_url,
                "signature": sign_webhook(raw, self.webhook_secrets) if self.webhook_secrets else None,
                "status": None, "error": None}
        self.webhooks.append(hook)
        return hook

    # -- views ----------------------------------------------------------------------------------------------
    def incident_list(self) -> list[dict[str, Any]]:
        return list(self.alerts.values())

    def state(self) -> dict[str, Any]:
        return {
            "alerts": self.incident_list(),
            "notifications": self.notifications,
            "rejected": self.rejected,
            "dropped": self.dropped,
            "change_events": self.change_events,
            "webhooks": [{k: v for k, v in w.items() if k != "body"} for w in self.webhooks],
            "events_received": len(self.received),
            "events_per_min": self.events_per_min,
        }


# -- Slack ---------------------------------------------------------------------------------------------------
SLACK_PERMANENT = {"invalid_payload": 400, "no_text": 400, "invalid_blocks": 400, "msg_too_long": 400,
                   "action_prohibited": 403, "invalid_token": 403, "channel_not_found": 404, "no_service": 404,
                   "channel_is_archived": 410}
BLOCK_TYPES = ("section", "context", "header", "divider", "actions", "image", "rich_text", "input", "file", "video")
_CONTROL = re.compile(r"<(?:[@#!][^<>\s|]*(?:\|[^<>]*)?|(?:https?|mailto):[^<>\s|]+(?:\|[^<>]*)?)>")


def slack_mangles(text: str) -> list[str]:
    """Why Slack would not show `text` as written: an unescaped &, < or > outside a control sequence."""
    stripped = _CONTROL.sub("", text)
    problems = []
    if re.search(r"&(?!(?:amp|lt|gt);)", stripped):
        problems.append("unescaped '&' (send &amp;)")
    if "<" in stripped:
        problems.append("unescaped '<' outside a control sequence: read as the start of one (send &lt;)")
    if ">" in stripped:
        problems.append("unescaped '>' (send &gt;)")
    return problems


def _text_object_errors(t: Any, maxlen: int, where: str) -> list[str]:
    if not isinstance(t, dict) or t.get("type") not in ("mrkdwn", "plain_text") or not isinstance(t.get("text"), str):
        return [f"{where}: a text object needs type mrkdwn|plain_text and a text"]
    if not t["text"]:
        return [f"{where}: text must not be empty"]
    if len(t["text"]) > maxlen:
        return [f"{where}: text is longer than {maxlen} characters"]
    return []


def block_errors(blocks: Any) -> list[str]:
    if not isinstance(blocks, list):
        return ["blocks must be a list"]
    if len(blocks) > 50:
        return [f"{len(blocks)} blocks: at most 50"]
    errs: list[str] = []
    for i, b in enumerate(blocks):
        if not isinstance(b, dict) or b.get("type") not in BLOCK_TYPES:
            errs.append(f"block {i}: unknown type {b.get('type') if isinstance(b, dict) else b!r}")
            continue
        if b["type"] == "section":
            if "text" not in b and "fields" not in b:
                errs.append(f"block {i}: a section needs text or fields")
            if "text" in b:
                errs += _text_object_errors(b["text"], 3000, f"block {i} text")
            if "fields" in b:
                f = b["fields"]
                if not isinstance(f, list) or len(f) > 10:
                    errs.append(f"block {i}: at most 10 fields")
                else:
                    for j, x in enumerate(f):
                        errs += _text_object_errors(x, 2000, f"block {i} field {j}")
        elif b["type"] == "context":
            els = b.get("elements")
            if not isinstance(els, list) or not els or len(els) > 10:
                errs.append(f"block {i}: a context needs 1-10 elements")
            else:
                for j, x in enumerate(els):
                    errs += _text_object_errors(x, 3000, f"block {i} element {j}")
        elif b["type"] == "header":
            t = b.get("text")
            errs += _text_object_errors(t, 150, f"block {i} header")
            if isinstance(t, dict) and t.get("type") != "plain_text":
                errs.append(f"block {i}: a header's text is plain_text")
    return errs


def _mrkdwn_texts(body: dict[str, Any]) -> list[str]:
    out = [body["text"]] if isinstance(body.get("text"), str) else []
    for b in body.get("blocks") or []:
        if not isinstance(b, dict):
            continue
        for t in [b.get("text"), *(b.get("fields") or []), *(b.get("elements") or [])]:
            if isinstance(t, dict) and t.get("type") == "mrkdwn" and isinstance(t.get("text"), str):
                out.append(t["text"])
    return out


class SlackSink:
    """Slack incoming webhooks, one channel per webhook path."""

    def __init__(self, *, per_s: float | None = 1.0, clock: Clock = time.monotonic) -> None:
        self.per_s = per_s  # None: no rate limit
        self.clock = clock
        self.received: list[dict[str, Any]] = []  # {"path", "body"}: every post
        self.messages: list[dict[str, Any]] = []  # accepted: {"path", "at", "text", "mangled"}
        self.rejected: list[dict[str, Any]] = []
        self.broken: dict[str, str] = {}  # path -> a permanent error this webhook answers (archived, removed, ...)
        self._last: dict[str, deque[float]] = {}

    def clear(self) -> None:
        self.__init__(per_s=self.per_s, clock=self.clock)

    def _throttled(self, path: str) -> bool:
        if self.per_s is None:
            return False
        now = self.clock()
        w = self._last.setdefault(path, deque())
        while w and w[0] <= now - 1.0:
            w.popleft()
        if len(w) >= max(1, int(self.per_s)):
            return True
        w.append(now)
        return False

    def receive(self, path: str, body: Any) -> tuple[int, str, dict[str, str]]:
        self.received.append({"path": path, "body": body})

        def no(error: str, status: int | None = None, headers: dict[str, str] | None = None):
            self.rejected.append({"path": path, "at": iso_now(), "status": status or SLACK_PERMANENT[error],
                                  "error": error})
            return status or SLACK_PERMANENT[error], error, headers or {}

        if path in self.broken:
            return no(self.broken[path])
        if not isinstance(body, dict):
            return no("invalid_payload")
        text = body.get("text")
        if not (isinstance(text, str) and text) and not body.get("blocks"):
            return no("no_text")
        if isinstance(text, str) and len(text) > 40_000:
            return no("msg_too_long")
        if "blocks" in body and block_errors(body["blocks"]):
            return no("invalid_blocks")
        if self._throttled(path):
            return no("rate_limited", 429, {"Retry-After": "1"})
        mangled = sorted({p for t in _mrkdwn_texts(body) for p in slack_mangles(t)})
        self.messages.append({"path": path, "at": iso_now(), "text": text or "", "mangled": mangled, "body": body})
        return 200, "ok", {}

    def bodies(self, path: str | None = None) -> list[Any]:
        return [r["body"] for r in self.received if path is None or r["path"] == path]

    def state(self) -> dict[str, Any]:
        return {"messages": [{k: v for k, v in m.items() if k != "body"} for m in self.messages],
                "rejected": self.rejected, "broken": self.broken, "per_s": self.per_s,
                "received": len(self.received)}
