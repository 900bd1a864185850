"""Paging (PagerDuty Events API v2) and chat (Slack incoming webhook) activities.

Settings (rollbackctl.settings.PagingSettings; all secrets, never logged nor put in an error):
- ROLLBACKCTL_PAGERDUTY_URL: the Events API v2 endpoint (https://events.pagerduty.com/v2/enqueue;
  in the demo and tests the simulator's sink, http://127.0.0.1:<port>/sim/pagerduty).
- ROLLBACKCTL_PAGERDUTY_ROUTING_KEYS: comma list, one integration key per escalation level
  (manual/escalation.py, level 1 first); or ROLLBACKCTL_PAGERDUTY_ROUTING_KEY, one key for every
  level. Given both, the list wins. A list must have exactly one entry per level.
- ROLLBACKCTL_SLACK_WEBHOOK_URLS: comma list, one incoming-webhook URL per level (a Slack webhook
  posts to one channel); or ROLLBACKCTL_SLACK_WEBHOOK_URL for every level.
- ROLLBACKCTL_PAGING_TIMEOUT_S: per-request timeout (default 5).

`PagingActivities.from_settings` refuses to build (PagingNotConfigured, naming every missing
variable) when paging is not configured: a worker must not start and then drop pages silently.
Commands that do not page never build it.

Escalation: `escalation_level` picks the level's routing key and webhook; above the top level the
top level is used. Acknowledge/resolve an event at the level that triggered it (same routing key,
same dedup_key). PagerDuty deduplicates triggers on an open incident's dedup_key, so escalating
means a trigger at the next level, with its own dedup_key.

Errors (ApplicationError types): BadRequest (4xx but 408/429: a refused event or a wrong URL/key;
not retried), PagingUnavailable (5xx, 408, 429, connection refused; retried), PagingTimeout
(retried). NotConfigured is raised if a level has no destination (cannot happen after
from_settings).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field, SecretStr
from temporalio import activity
from temporalio.exceptions import ApplicationError

from manual import escalation
from rollbackctl.settings import PagingSettings

log = logging.getLogger(__name__)

BAD_REQUEST = "BadRequest"
NOT_CONFIGURED = "NotConfigured"
PAGING_UNAVAILABLE = "PagingUnavailable"
PAGING_TIMEOUT = "PagingTimeout"
NON_RETRYABLE = [BAD_REQUEST, NOT_CONFIGURED]

SUMMARY_MAX = 1024  # PagerDuty's limit on payload.summary
SLACK_SECTION_MAX = 3000  # Slack's limit on a section block's text
SLACK_FIELDS_MAX = 10


class PagingNotConfigured(ValueError):
    """Paging settings are missing; the message names the environment variables to set."""


class PageInput(BaseModel):
    event_action: Literal["trigger", "acknowledge", "resolve"]
    dedup_key: str = Field(min_length=1, max_length=255)
    summary: str = Field(min_length=1)
    severity: Literal["critical", "error", "warning", "info"] = "critical"
    source: str = "rollbackctl"
    custom_details: dict[str, Any] = {}
    escalation_level: int = Field(default=1, ge=1)


class PageResult(BaseModel):
    status: str  # PagerDuty's "success"
    message: str = ""
    dedup_key: str
    escalation_level: int  # the level actually paged (clamped to the top level)
    escalation_name: str = ""
    http_status: int


class ChatInput(BaseModel):
    text: str = Field(min_length=1)
    escalation_level: int = Field(default=1, ge=1)
    fields: dict[str, Any] = {}


class ChatResult(BaseModel):
    ok: bool
    escalation_level: int
    channel: str  # the level's channel (manual/escalation.py); the webhook URL decides where it lands
    http_status: int


class _RedactSecrets(logging.Filter):
    """On the `httpx` logger: its INFO line carries the full request URL, and a Slack webhook URL
    (like a PagerDuty URL with a token) is a secret. Whatever the logging setup, they come out as ***."""

    secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            msg = record.getMessage()
            if any(s in msg for s in self.secrets):
                for s in sorted(self.secrets, key=len, reverse=True):
                    msg = msg.replace(s, "***")
                record.msg, record.args = msg, ()
        return True


_REDACT = _RedactSecrets()


def _guard_httpx_logs(secrets: list[str]) -> None:
    _RedactSecrets.secrets.update(s for s in secrets if s)
    for name in ("httpx", "httpcore"):
        lg = logging.getLogger(name)
        if _REDACT not in lg.filters:
            lg.addFilter(_REDACT)


def _split(secret: SecretStr | None) -> list[SecretStr]:
    if secret is None:
        return []
    return [SecretStr(x.strip()) for x in secret.get_secret_value().split(",") if x.strip()]


class PagingActivities:
    def __init__(self, client: httpx.AsyncClient, *, pagerduty_url: SecretStr, routing_keys: list[SecretStr],
                 slack_webhooks: list[SecretStr], timeout_s: float = 5.0, owns_client: bool = False):
        if not routing_keys or not slack_webhooks:
            raise PagingNotConfigured("paging needs at least one routing key and one Slack webhook")
        self.client = client
        self._pd_url = pagerduty_url
        self._keys = routing_keys
        self._hooks = slack_webhooks
        self.timeout_s = timeout_s
        self._owns_client = owns_client
        _guard_httpx_logs(self._secrets())

    @classmethod
    def from_settings(cls, settings: PagingSettings, client: httpx.AsyncClient | None = None) -> "PagingActivities":
        missing = []
        if settings.pagerduty_url is None or not settings.pagerduty_url.get_secret_value().strip():
            missing.append("ROLLBACKCTL_PAGERDUTY_URL")
        keys = _split(settings.pagerduty_routing_keys) or _split(settings.pagerduty_routing_key)
        if not keys:
            missing.append("ROLLBACKCTL_PAGERDUTY_ROUTING_KEYS (or ROLLBACKCTL_PAGERDUTY_ROUTING_KEY)")
        hooks = _split(settings.slack_webhook_urls) or _split(settings.slack_webhook_url)
        if not hooks:
            missing.append("ROLLBACKCTL_SLACK_WEBHOOK_URLS (or ROLLBACKCTL_SLACK_WEBHOOK_URL)")
        if missing:
            raise PagingNotConfigured(
                "paging is not configured: set " + ", ".join(missing) +
                " (pages and chat must not be dropped silently; see activities/paging.py)")
        n = len(escalation.LEVELS)
        for name, lst, plural in (("ROLLBACKCTL_PAGERDUTY_ROUTING_KEYS", keys, settings.pagerduty_routing_keys),
                                  ("ROLLBACKCTL_SLACK_WEBHOOK_URLS", hooks, settings.slack_webhook_urls)):
            if plural is not None and len(lst) != n:
                raise PagingNotConfigured(f"{name} lists {len(lst)} entries; the escalation ladder has {n} levels "
                                          f"(manual/escalation.py): give one per level, level 1 first")
        if len(keys) == 1 and n > 1:
            log.warning("one PagerDuty routing key for all %d escalation levels: escalation relies on the "
                        "PagerDuty service's own policy", n)
        owns = client is None
        return cls(client or httpx.AsyncClient(), pagerduty_url=settings.pagerduty_url, routing_keys=keys,
                   slack_webhooks=hooks, timeout_s=settings.paging_timeout_s, owns_client=owns)

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    def __repr__(self) -> str:  # never a key or a webhook URL
        return f"PagingActivities(levels={len(self._keys)} routing keys, {len(self._hooks)} webhooks)"

    # -- helpers ------------------------------------------------------------------------------------
    def _secrets(self) -> list[str]:
        return [s.get_secret_value() for s in (self._pd_url, *self._keys, *self._hooks)]

    def _scrub(self, text: str) -> str:
        for s in self._secrets():
            if s:
                text = text.replace(s, "***")
        return text

    @staticmethod
    def _pick(items: list[SecretStr], level: int) -> SecretStr:
        return items[min(level, len(items)) - 1]

    async def _post(self, what: str, url: SecretStr, body: dict[str, Any]) -> httpx.Response:
        try:
            return await self.client.post(url.get_secret_value(), json=body, timeout=self.timeout_s)
        except httpx.TimeoutException as e:
            raise ApplicationError(f"{what} did not answer within {self.timeout_s:g}s ({type(e).__name__})",
                                   type=PAGING_TIMEOUT, non_retryable=False) from None
        except httpx.TransportError as e:
            raise ApplicationError(self._scrub(f"{what} unreachable: {type(e).__name__}: {e}"),
                                   type=PAGING_UNAVAILABLE, non_retryable=False) from None

    def _refused(self, what: str, resp: httpx.Response, said: str) -> ApplicationError:
        code = resp.status_code
        msg = self._scrub(f"{what} answered {code}: {said}"[:500])
        if code in (408, 429) or code >= 500:
            return ApplicationError(msg, {"status": code}, type=PAGING_UNAVAILABLE, non_retryable=False)
        return ApplicationError(msg, {"status": code}, type=BAD_REQUEST, non_retryable=True)

    def _log(self):
        return activity.logger if activity.in_activity() else log

    # -- activities ------------------------------------------------------------------------------------
    @activity.defn(name="paging.page")
    async def page(self, inp: PageInput) -> PageResult:
        lvl = escalation.get(inp.escalation_level)
        body: dict[str, Any] = {
            "routing_key": self._pick(self._keys, lvl.level).get_secret_value(),
            "event_action": inp.event_action,
            "dedup_key": inp.dedup_key,
        }
        if inp.event_action == "trigger":
            details = {**inp.custom_details, "escalation_level": lvl.level, "escalation": lvl.name,
                       "slack_channel": lvl.slack_channel}
            if inp.escalation_level != lvl.level:
                details["escalation_level_requested"] = inp.escalation_level
            summary = inp.summary if len(inp.summary) <= SUMMARY_MAX else inp.summary[: SUMMARY_MAX - 1] + "…"
            body["payload"] = {
                "summary": summary,
                "source": inp.source,
                "severity": inp.severity,
                "timestamp": datetime.now(timezone.utc).isoformat(),
                "component": "launch-and-rollback",
                "group": "perps",
                "class": "p0" if inp.severity == "critical" else inp.severity,
                "custom_details": details,
            }
            body["client"] = "rollbackctl"
        what = f"PagerDuty ({inp.event_action}, level {lvl.level})"
        resp = await self._post(what, self._pd_url, body)
        try:
            j = resp.json()
        except ValueError:
            j = {}
        if resp.status_code != 202 and not (200 <= resp.status_code < 300):
            errs = j.get("errors") if isinstance(j, dict) else None
            said = "; ".join(map(str, errs)) if errs else (j.get("message") if isinstance(j, dict) else "") or resp.text
            raise self._refused(what, resp, str(said))
        self._log().info("page %s level %d (%s) dedup_key=%s -> %d", inp.event_action, lvl.level, lvl.name,
                         inp.dedup_key, resp.status_code)
        return PageResult(status=str(j.get("status", "success")) if isinstance(j, dict) else "success",
                          message=str(j.get("message", "")) if isinstance(j, dict) else "",
                          dedup_key=str(j.get("dedup_key") or inp.dedup_key) if isinstance(j, dict) else inp.dedup_key,
                          escalation_level=lvl.level, escalation_name=lvl.name, http_status=resp.status_code)

    @activity.defn(name="paging.chat")
    async def chat(self, inp: ChatInput) -> ChatResult:
        lvl = escalation.get(inp.escalation_level)
        text = inp.text if len(inp.text) <= SLACK_SECTION_MAX else inp.text[: SLACK_SECTION_MAX - 1] + "…"
        blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
        items = list(inp.fields.items())[:SLACK_FIELDS_MAX]
        if items:
            blocks.append({"type": "section", "fields": [
                {"type": "mrkdwn", "text": f"*{k}*\n{v}"[:2000]} for k, v in items]})
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": f"escalation level {lvl.level}: {lvl.name} ({lvl.slack_channel})"}]})
        body = {"text": inp.text[:40_000], "blocks": blocks}
        what = f"Slack webhook (level {lvl.level}, {lvl.slack_channel})"
        resp = await self._post(what, self._pick(self._hooks, lvl.level), body)
        if not 200 <= resp.status_code < 300:
            raise self._refused(what, resp, resp.text[:200])
        self._log().info("chat to level %d (%s) -> %d", lvl.level, lvl.slack_channel, resp.status_code)
        return ChatResult(ok=True, escalation_level=lvl.level, channel=lvl.slack_channel, http_status=resp.status_code)
