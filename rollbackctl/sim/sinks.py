"""Local stand-ins for PagerDuty's Events API v2 and Slack incoming webhooks.

They check what they receive the way the real services do (a bad event gets PagerDuty's 400
"invalid event"; a message without text gets Slack's 400 "no_text"), answer as they do (202
`{"status": "success", "message": "Event processed", "dedup_key": ...}`; 200 `ok`), record every
body received, and PagerDuty's side keeps incidents per (routing_key, dedup_key): a trigger for an
open incident is deduplicated, which is why escalating must page at the next level (another routing
key) instead of re-triggering the same one.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

PD_ACTIONS = ("trigger", "acknowledge", "resolve")
PD_SEVERITIES = ("critical", "error", "warning", "info")


def pagerduty_errors(body: Any) -> list[str]:
    """What PagerDuty would refuse in this event (empty: accepted)."""
    if not isinstance(body, dict):
        return ["Event object must be a JSON object"]
    errs = []
    rk = body.get("routing_key")
    if not isinstance(rk, str) or not rk:
        errs.append("'routing_key' is missing or blank")
    action = body.get("event_action")
    if action not in PD_ACTIONS:
        errs.append(f"'event_action' must be one of {', '.join(PD_ACTIONS)}")
    dk = body.get("dedup_key")
    if dk is not None and (not isinstance(dk, str) or not dk or len(dk) > 255):
        errs.append("'dedup_key' must be a non-empty string of at most 255 characters")
    if action in ("acknowledge", "resolve") and not dk:
        errs.append(f"'dedup_key' is required to {action}")
    if action == "trigger":
        p = body.get("payload")
        if not isinstance(p, dict):
            errs.append("'payload' is required for trigger")
        else:
            s = p.get("summary")
            if not isinstance(s, str) or not s:
                errs.append("'payload.summary' is missing or blank")
            elif len(s) > 1024:
                errs.append("'payload.summary' is longer than 1024 characters")
            if not isinstance(p.get("source"), str) or not p.get("source"):
                errs.append("'payload.source' is missing or blank")
            if p.get("severity") not in PD_SEVERITIES:
                errs.append(f"'payload.severity' must be one of {', '.join(PD_SEVERITIES)}")
            if "custom_details" in p and not isinstance(p["custom_details"], (dict, str)):
                errs.append("'payload.custom_details' must be an object")
    return errs


class PagerDutySink:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.incidents: dict[tuple[str, str], dict[str, Any]] = {}
        self._n = 0

    def clear(self) -> None:
        self.__init__()

    def receive(self, body: Any) -> tuple[int, dict[str, Any]]:
        self.received.append(body if isinstance(body, dict) else {"_raw": body})
        errs = pagerduty_errors(body)
        if errs:
            return 400, {"status": "invalid event", "message": "Event object is invalid", "errors": errs}
        action, rk = body["event_action"], body["routing_key"]
        dk = body.get("dedup_key")
        if not dk:
            self._n += 1
            dk = f"sim-{self._n:08d}"
        key = (rk, dk)
        now = datetime.now(timezone.utc).isoformat()
        inc = self.incidents.get(key)
        if action == "trigger":
            if inc is None or inc["status"] == "resolved":
                self.incidents[key] = {"routing_key": rk, "dedup_key": dk, "status": "triggered", "opened_at": now,
                                       "summary": body["payload"]["summary"], "events": 1, "deduplicated": 0}
            else:
                inc["events"] += 1
                inc["deduplicated"] += 1  # PagerDuty adds it to the open incident: no new notification
        elif inc is not None and inc["status"] != "resolved":
            inc["status"] = "acknowledged" if action == "acknowledge" else "resolved"
            inc["events"] += 1
        return 202, {"status": "success", "message": "Event processed", "dedup_key": dk}

    def incident_list(self) -> list[dict[str, Any]]:
        return list(self.incidents.values())


class SlackSink:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []  # {"path", "body"}

    def clear(self) -> None:
        self.received = []

    def receive(self, path: str, body: Any) -> tuple[int, str]:
        self.received.append({"path": path, "body": body})
        if not isinstance(body, dict):
            return 400, "invalid_payload"
        if not (isinstance(body.get("text"), str) and body["text"]) and not body.get("blocks"):
            return 400, "no_text"
        blocks = body.get("blocks")
        if blocks is not None and (not isinstance(blocks, list) or not all(isinstance(b, dict) and "type" in b
                                                                           for b in blocks)):
            return 400, "invalid_blocks"
        return 200, "ok"

    def bodies(self, path: str | None = None) -> list[Any]:
        return [r["body"] for r in self.received if path is None or r["path"] == path]
