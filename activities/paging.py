"""Paging (PagerDuty Events API v2, Change Events) and chat (Slack incoming webhook) activities.

Workflows do not call these directly: they hand notices to the pager workflow (workflows/pager.py,
through `paging.submit`, activities/pager_client.py), which keeps PagerDuty's and Slack's budgets and
calls these. Their rules come from the services' documentation (see contracts/paging.py):

- PagerDuty: 202 is success; 400 is a refused event (never retried: BadRequest); 429 means "not
  ingested, retry later" and 5xx / network errors are retried (PagingUnavailable, PagingTimeout; a
  Retry-After header, when given, sets the next attempt's delay).
- Slack: 200 `ok`; 400 invalid_payload / no_text / invalid_blocks, 403 action_prohibited, 404
  channel_not_found / no_service, 410 channel_is_archived are permanent (BadRequest, with Slack's
  word); 429 is retried after its Retry-After (`ApplicationError(next_retry_delay=...)`). Text is
  escaped (`&` `<` `>` -> `&amp;` `&lt;` `&gt;`): "margin <150% ... > 200%" would otherwise be read as a
  control sequence and shown mangled.

Settings (core.settings.PagingSettings; all secrets, never logged nor put in an error):
- ROLLBACKCTL_PAGERDUTY_URL: the Events API v2 endpoint (https://events.pagerduty.com/v2/enqueue;
  the dev stack points it at the simulator's sink, http://127.0.0.1:8700/sim/pagerduty/v2/enqueue);
  ROLLBACKCTL_PAGERDUTY_CHANGE_URL: the Change Events endpoint (default: the same URL with
  /v2/change/enqueue).
- ROLLBACKCTL_PAGERDUTY_ROUTING_KEYS: comma list, one 32-character integration key per escalation
  level (manual/escalation.py, level 1 first); or ROLLBACKCTL_PAGERDUTY_ROUTING_KEY for every level.
- ROLLBACKCTL_SLACK_WEBHOOK_URLS: one incoming-webhook URL per level; or ROLLBACKCTL_SLACK_WEBHOOK_URL.
- ROLLBACKCTL_PAGERDUTY_DRILL_ROUTING_KEYS / ROLLBACKCTL_SLACK_DRILL_WEBHOOK_URLS (optional): where a
  drill's pages and chat go (`rollbackctl drill`: a game-day PagerDuty service and channel), one entry for
  every level or one per level. Unset, a drill pages the real keys, its summaries marked [DRILL].
- ROLLBACKCTL_PAGING_TIMEOUT_S: per-request timeout (default 5).

`check_paging(settings)` refuses what the services would refuse (a key that is not 32 characters, a
URL that is not http(s), plain http off loopback, a list that does not have one entry per level) with
one line naming the variable: the worker and `dev up` call it before they start.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, NamedTuple
from urllib.parse import urlparse

import httpx
from pydantic import BaseModel, Field, SecretStr
from temporalio import activity
from temporalio.exceptions import ApplicationError

from contracts.errors import ErrorKind
from contracts.paging import (
    DEDUP_KEY_MAX,
    ROUTING_KEY_LENGTH,
    SLACK_FIELD_MAX,
    SLACK_FIELDS_MAX,
    SLACK_SECTION_MAX,
    SLACK_TEXT_MAX,
    SUMMARY_MAX,
)
from core import metrics
from core.settings import PagingSettings
from manual import escalation

log = logging.getLogger(__name__)

BAD_REQUEST = ErrorKind.BAD_REQUEST
NOT_CONFIGURED = ErrorKind.NOT_CONFIGURED
PAGING_UNAVAILABLE = ErrorKind.PAGING_UNAVAILABLE
PAGING_TIMEOUT = ErrorKind.PAGING_TIMEOUT
NON_RETRYABLE = [BAD_REQUEST, NOT_CONFIGURED]

_KEY = re.compile(rf"^[A-Za-z0-9]{{{ROUTING_KEY_LENGTH}}}$")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class PagingNotConfigured(ValueError):
    """Paging settings are missing or malformed; the message (one line) names the variable to fix."""


def slack_escape(text: str) -> str:
    """Slack's three control characters as entities (api.slack.com "Basic message formatting")."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class PageInput(BaseModel):
    event_action: Literal["trigger", "acknowledge", "resolve"]
    dedup_key: str = Field(min_length=1, max_length=DEDUP_KEY_MAX)
    summary: str = Field(min_length=1)
    severity: Literal["critical", "error", "warning", "info"] = "critical"
    source: str = "rollbackctl"
    custom_details: dict[str, Any] = {}
    escalation_level: int = Field(default=1, ge=1)
    links: list[dict[str, str]] = []  # [{"href", "text"}]: the Temporal UI, the runbook
    drill: bool = False  # a game day's page: to the drill routing key when one is configured


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
    drill: bool = False  # to the drill webhook when one is configured


class ChatResult(BaseModel):
    ok: bool
    escalation_level: int
    channel: str  # the level's channel (manual/escalation.py); the webhook URL decides where it lands
    http_status: int


class ChangeEventInput(BaseModel):
    """One audited switch change, for PagerDuty's incident view ("what changed")."""

    summary: str = Field(min_length=1)
    source: str = "rollbackctl"
    timestamp: str | None = None
    custom_details: dict[str, Any] = {}
    links: list[dict[str, str]] = []


class ChangeEventResult(BaseModel):
    http_status: int
    message: str = ""


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


def _url_problem(url: str) -> str | None:
    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        return "is not an http(s) URL"
    if u.scheme == "http" and u.hostname not in _LOOPBACK and not u.hostname.startswith("127."):
        return "must be https (plain http is allowed on loopback only)"
    return None


def change_url_for(events_url: str) -> str:
    """PagerDuty's Change Events endpoint beside its Events API endpoint (…/v2/enqueue -> …/v2/change/enqueue)."""
    base = events_url.rstrip("/")
    if base.endswith("/v2/enqueue"):
        return base[: -len("/v2/enqueue")] + "/v2/change/enqueue"
    return base + "/v2/change/enqueue"


class PagingConfig(NamedTuple):
    url: SecretStr  # the Events API
    keys: list[SecretStr]  # routing keys, per level (or one for all)
    hooks: list[SecretStr]  # Slack webhooks, per level (or one for all)
    change: SecretStr  # the Change Events API
    drill_keys: list[SecretStr]  # a drill's routing keys ([]: the keys above)
    drill_hooks: list[SecretStr]  # a drill's webhooks ([]: the webhooks above)


def _check_key(var: str, i: int, k: SecretStr) -> None:
    v = k.get_secret_value()
    if not _KEY.match(v):
        raise PagingNotConfigured(
            f"{var}: entry {i} is {len(v)} characters; a PagerDuty integration key is exactly "
            f"{ROUTING_KEY_LENGTH} letters and digits (PagerDuty answers 400 to anything else)")


def check_paging(settings: PagingSettings) -> PagingConfig:
    """The paging configuration, checked as PagerDuty and Slack would check it. Raises
    PagingNotConfigured (one line naming the variable)."""
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
    key_var = "ROLLBACKCTL_PAGERDUTY_ROUTING_KEYS" if settings.pagerduty_routing_keys else "ROLLBACKCTL_PAGERDUTY_ROUTING_KEY"
    for i, k in enumerate(keys, 1):
        _check_key(key_var, i, k)
    drill_keys, drill_hooks = _split(settings.pagerduty_drill_routing_keys), _split(settings.slack_drill_webhook_urls)
    for name, lst in (("ROLLBACKCTL_PAGERDUTY_DRILL_ROUTING_KEYS", drill_keys),
                      ("ROLLBACKCTL_SLACK_DRILL_WEBHOOK_URLS", drill_hooks)):
        if len(lst) not in (0, 1, n):
            raise PagingNotConfigured(f"{name} lists {len(lst)} entries; give one for every level, or one per level "
                                      f"({n}, level 1 first: manual/escalation.py)")
    for i, k in enumerate(drill_keys, 1):
        _check_key("ROLLBACKCTL_PAGERDUTY_DRILL_ROUTING_KEYS", i, k)
    live = {k.get_secret_value() for k in keys}
    if any(k.get_secret_value() in live for k in drill_keys):
        raise PagingNotConfigured("ROLLBACKCTL_PAGERDUTY_DRILL_ROUTING_KEYS repeats a real routing key: a drill key "
                                  "exists to keep game-day pages off the real services (leave it unset to share them)")
    url = settings.pagerduty_url.get_secret_value().strip()
    if (why := _url_problem(url)) is not None:
        raise PagingNotConfigured(f"ROLLBACKCTL_PAGERDUTY_URL {why}")
    change = settings.pagerduty_change_url.get_secret_value().strip() if settings.pagerduty_change_url else ""
    change = change or change_url_for(url)
    if (why := _url_problem(change)) is not None:
        raise PagingNotConfigured(f"ROLLBACKCTL_PAGERDUTY_CHANGE_URL {why}")
    hook_var = "ROLLBACKCTL_SLACK_WEBHOOK_URLS" if settings.slack_webhook_urls else "ROLLBACKCTL_SLACK_WEBHOOK_URL"
    for var, lst in ((hook_var, hooks), ("ROLLBACKCTL_SLACK_DRILL_WEBHOOK_URLS", drill_hooks)):
        for i, h in enumerate(lst, 1):
            if (why := _url_problem(h.get_secret_value())) is not None:
                raise PagingNotConfigured(f"{var}: entry {i} {why}")
    return PagingConfig(SecretStr(url), keys, hooks, SecretStr(change), drill_keys, drill_hooks)


@contextmanager
def _counted(channel: str, level: int, drill: bool):
    """rollbackctl_pages_sent_total / _failed_total (core/metrics.py) for one attempt."""
    labels = (channel, str(level), metrics.drill_label(drill))
    try:
        yield
    except Exception:
        metrics.PAGES_FAILED.labels(*labels).inc()
        raise
    metrics.PAGES_SENT.labels(*labels).inc()


def _retry_after(resp: httpx.Response) -> timedelta | None:
    ra = resp.headers.get("retry-after")
    if ra is None:
        return None
    try:
        return timedelta(seconds=max(0.0, min(float(ra), 300.0)))
    except ValueError:
        return None


class PagingActivities:
    def __init__(self, client: httpx.AsyncClient, *, pagerduty_url: SecretStr, routing_keys: list[SecretStr],
                 slack_webhooks: list[SecretStr], timeout_s: float = 5.0, owns_client: bool = False,
                 change_url: SecretStr | None = None, console_origin: str = "",
                 drill_routing_keys: list[SecretStr] | None = None, drill_webhooks: list[SecretStr] | None = None):
        if not routing_keys or not slack_webhooks:
            raise PagingNotConfigured("paging needs at least one routing key and one Slack webhook")
        self.client = client
        self._pd_url = pagerduty_url
        self._change_url = change_url or SecretStr(change_url_for(pagerduty_url.get_secret_value()))
        self._keys = routing_keys
        self._hooks = slack_webhooks
        self._drill_keys = drill_routing_keys or []
        self._drill_hooks = drill_webhooks or []
        self.timeout_s = timeout_s
        self._owns_client = owns_client
        self.console_origin = console_origin.rstrip("/")
        _guard_httpx_logs(self._secrets())

    def decision_link(self, wid: Any, step: Any) -> dict[str, str] | None:
        """The console page of the decision a workflow waits for at `step` (None: no console, or no wait)."""
        if not self.console_origin or not isinstance(wid, str) or not wid or not isinstance(step, str) or not step:
            return None
        from urllib.parse import quote

        return {"href": f"{self.console_origin}/decide/{quote(wid, safe='')}/{quote(step, safe='')}",
                "text": f"Decide in the console ({step})"}

    @classmethod
    def from_settings(cls, settings: PagingSettings, client: httpx.AsyncClient | None = None) -> "PagingActivities":
        cfg = check_paging(settings)
        if len(cfg.keys) == 1 and len(escalation.LEVELS) > 1:
            log.warning("one PagerDuty routing key for all %d escalation levels: escalation relies on the "
                        "PagerDuty service's own policy", len(escalation.LEVELS))
        owns = client is None
        return cls(client or httpx.AsyncClient(), pagerduty_url=cfg.url, routing_keys=cfg.keys, slack_webhooks=cfg.hooks,
                   timeout_s=settings.paging_timeout_s, owns_client=owns, change_url=cfg.change,
                   console_origin=settings.console_origin, drill_routing_keys=cfg.drill_keys,
                   drill_webhooks=cfg.drill_hooks)

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    def __repr__(self) -> str:  # never a key or a webhook URL
        return (f"PagingActivities(levels={len(self._keys)} routing keys, {len(self._hooks)} webhooks, "
                f"drill: {len(self._drill_keys)} keys, {len(self._drill_hooks)} webhooks)")

    # -- helpers ------------------------------------------------------------------------------------
    def _secrets(self) -> list[str]:
        return [s.get_secret_value() for s in (self._pd_url, self._change_url, *self._keys, *self._hooks,
                                               *self._drill_keys, *self._drill_hooks)]

    def _scrub(self, text: str) -> str:
        for s in sorted(self._secrets(), key=len, reverse=True):
            if s:
                text = text.replace(s, "***")
        return text

    @staticmethod
    def _pick(items: list[SecretStr], level: int, drill_items: list[SecretStr] | None = None,
              drill: bool = False) -> SecretStr:
        """The entry for `level` (the last one past the list's end); a drill's from `drill_items` when configured."""
        items = drill_items if drill and drill_items else items
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
            return ApplicationError(msg, {"status": code}, type=PAGING_UNAVAILABLE, non_retryable=False,
                                    next_retry_delay=_retry_after(resp))
        return ApplicationError(msg, {"status": code}, type=BAD_REQUEST, non_retryable=True)

    def _log(self):
        return activity.logger if activity.in_activity() else log

    @staticmethod
    def _pd_said(resp: httpx.Response) -> str:
        try:
            j = resp.json()
        except ValueError:
            return resp.text[:200]
        if isinstance(j, dict):
            errs = j.get("errors")
            return "; ".join(map(str, errs)) if errs else str(j.get("message") or j.get("status") or "")
        return str(j)[:200]

    # -- activities ------------------------------------------------------------------------------------
    @activity.defn(name="paging.page")
    async def page(self, inp: PageInput) -> PageResult:
        lvl = escalation.get(inp.escalation_level)
        body: dict[str, Any] = {
            "routing_key": self._pick(self._keys, lvl.level, self._drill_keys, inp.drill).get_secret_value(),
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
            decide = self.decision_link(inp.custom_details.get("workflow_id"), inp.custom_details.get("decision_step"))
            links = [lk for lk in inp.links if lk.get("href")] + ([decide] if decide else [])
            if links:  # PagerDuty Events API v2: payload-level `links` [{href, text}], shown on the alert
                body["links"] = links
        what = f"PagerDuty ({inp.event_action}, level {lvl.level}{', drill' if inp.drill else ''})"
        with _counted("pagerduty", lvl.level, inp.drill):
            resp = await self._post(what, self._pd_url, body)
            if resp.status_code != 202 and not (200 <= resp.status_code < 300):
                raise self._refused(what, resp, self._pd_said(resp))
        try:
            j = resp.json()
        except ValueError:
            j = {}
        j = j if isinstance(j, dict) else {}
        self._log().info("page %s level %d (%s) dedup_key=%s -> %d", inp.event_action, lvl.level, lvl.name,
                         inp.dedup_key, resp.status_code)
        return PageResult(status=str(j.get("status", "success")), message=str(j.get("message", "")),
                          dedup_key=str(j.get("dedup_key") or inp.dedup_key), escalation_level=lvl.level,
                          escalation_name=lvl.name, http_status=resp.status_code)

    @activity.defn(name="paging.chat")
    async def chat(self, inp: ChatInput) -> ChatResult:
        lvl = escalation.get(inp.escalation_level)
        raw = inp.text if len(inp.text) <= SLACK_SECTION_MAX - 200 else inp.text[: SLACK_SECTION_MAX - 201] + "…"
        blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": slack_escape(raw)}}]
        items = list(inp.fields.items())[:SLACK_FIELDS_MAX]
        if items:
            blocks.append({"type": "section", "fields": [
                {"type": "mrkdwn", "text": f"*{slack_escape(str(k))}*\n{slack_escape(str(v))}"[:SLACK_FIELD_MAX]}
                for k, v in items]})
        decide = self.decision_link(inp.fields.get("workflow"), inp.fields.get("step"))
        if decide:  # Slack mrkdwn link <url|text>; the URL's own characters are not escaped, the text is
            blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                       "text": f"<{decide['href']}|{slack_escape(decide['text'])}>"}})
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": slack_escape(f"escalation level {lvl.level}: {lvl.name} ({lvl.slack_channel})")}]})
        body = {"text": slack_escape(inp.text)[:SLACK_TEXT_MAX], "blocks": blocks}
        what = f"Slack webhook (level {lvl.level}, {lvl.slack_channel}{', drill' if inp.drill else ''})"
        with _counted("slack", lvl.level, inp.drill):
            resp = await self._post(what, self._pick(self._hooks, lvl.level, self._drill_hooks, inp.drill), body)
            if not 200 <= resp.status_code < 300:
                raise self._refused(what, resp, resp.text[:200])
        self._log().info("chat to level %d (%s) -> %d", lvl.level, lvl.slack_channel, resp.status_code)
        return ChatResult(ok=True, escalation_level=lvl.level, channel=lvl.slack_channel, http_status=resp.status_code)

    @activity.defn(name="paging.change_event")
    async def change_event(self, inp: ChangeEventInput) -> ChangeEventResult:
        """A PagerDuty Change Event (level 1's integration key): not an alert, it notifies nobody."""
        summary = inp.summary if len(inp.summary) <= SUMMARY_MAX else inp.summary[: SUMMARY_MAX - 1] + "…"
        payload: dict[str, Any] = {"summary": summary, "source": inp.source,
                                   "timestamp": inp.timestamp or datetime.now(timezone.utc).isoformat(),
                                   "custom_details": inp.custom_details}
        body: dict[str, Any] = {"routing_key": self._keys[0].get_secret_value(), "payload": payload}
        if inp.links:
            body["links"] = inp.links
        what = "PagerDuty (change event)"
        resp = await self._post(what, self._change_url, body)
        if not 200 <= resp.status_code < 300:
            raise self._refused(what, resp, self._pd_said(resp))
        return ChangeEventResult(http_status=resp.status_code, message=self._pd_said(resp))
