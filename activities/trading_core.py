"""The trading core: its HTTP contract (as pydantic models) and the activities that call it.

The contract (contracts/trading_core.py) is documented in docs/trading-core-api.md; the simulator serves it
and validates its own answers against these models.

Error classes, raised as `ApplicationError(type=...)` (the `type` names are the constants below;
a workflow's RetryPolicy lists `NON_RETRYABLE`):

| what the core did                              | type              | retried? |
|------------------------------------------------|-------------------|----------|
| 401 / 403 (token refused)                      | Unauthorized      | no       |
| other 4xx (bad body, unknown action, key reuse)| BadRequest        | no       |
| 2xx with a body that breaks the contract       | SchemaViolation   | no       |
| 503 `{"error": "maintenance"}` (Level 3)       | Maintenance       | no       |
| 409 (the Idempotency-Key's request in flight)  | CoreUnavailable   | yes      |
| 408 / 429, other 5xx, other 503, refused conn. | CoreUnavailable   | yes      |

Error bodies are the contract's `{"error", "detail"}` or RFC 9457 problem documents
(`application/problem+json`; the error is the last segment of `type`, e.g. `.../problems/maintenance`);
a Retry-After header sets the next attempt's delay.
| no answer within the timeout                   | CoreTimeout       | yes      |
| wait_applied: revision not applied in time     | NotApplied        | yes      |

408 and 429 are 4xx but say "try again later" (HTTP semantics), so they are retried.
Every action carries an `Idempotency-Key` (derived by the workflow from its id and step): the core
answers a repeated key with the first result and acts once, so a retried activity never acts twice.
The bearer token is read from a SecretStr at request time and never logged or put in an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from datetime import timedelta
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from contracts.trading_core import (
    ACTION_PATH,
    ACTIONS,
    APPLIED_PATH,
    BAD_REQUEST,
    CORE_TIMEOUT,
    CORE_UNAVAILABLE,
    EXPOSURE_PATH,
    HEALTH_PATH,
    IDEMPOTENCY_HEADER,
    MAINTENANCE,
    NOT_APPLIED,
    REPLAYED_HEADER,
    SCHEMA_VIOLATION,
    UNAUTHORIZED,
    AppliedConfig,
    CoreActionInput,
    CoreActionResult,
    ExposureReport,
    HealthSnapshot,
    ReadHealthInput,
    WaitAppliedInput,
)
from core.settings import TradingCoreSettings

log = logging.getLogger(__name__)


# -- error helpers --------------------------------------------------------------------------------------
def _error_body(resp: httpx.Response) -> tuple[str, str]:
    """(error code, detail) of an error answer: the contract's `{"error", "detail"}`, or an RFC 9457
    problem document (application/problem+json: the code is the last segment of its `type` URI)."""
    try:
        j = resp.json()
    except ValueError:
        return "", resp.text[:200]
    if not isinstance(j, dict):
        return "", str(j)[:200]
    if "error" not in j and ("type" in j or "title" in j):
        kind = re.split(r"[/:#]", str(j.get("type") or "").rstrip("/"))[-1] if j.get("type") else ""
        if kind in ("", "about:blank", "blank"):
            kind = str(j.get("title") or "").strip().lower().replace(" ", "_")
        return kind, str(j.get("detail") or j.get("title") or "")
    return str(j.get("error") or ""), str(j.get("detail") or "")


def _retry_after(resp: httpx.Response) -> timedelta | None:
    try:
        return timedelta(seconds=max(0.0, min(float(resp.headers["retry-after"]), 60.0)))
    except (KeyError, ValueError):
        return None


def classify(resp: httpx.Response, what: str, *, action: bool = False) -> ApplicationError | None:
    """The ApplicationError for a non-2xx answer (None for 2xx). `what` names the call, e.g. 'GET /v1/health'."""
    code = resp.status_code
    if 200 <= code < 300:
        return None
    err, detail = _error_body(resp)
    said = f"{err}: {detail}" if err and detail else (err or detail or resp.reason_phrase)
    details = {"status": code, "error": err, "detail": detail, "call": what}
    if code in (401, 403):
        return ApplicationError(
            f"trading core refused the credentials for {what} ({code}): check ROLLBACKCTL_TRADING_CORE_TOKEN",
            details, type=UNAUTHORIZED, non_retryable=True)
    if code == 503 and err == "maintenance":
        tail = "no action can run until a Super Admin restores global_api_enabled" if action else \
            "the core is not serving this route"
        return ApplicationError(
            f"trading core is in maintenance mode (global_api_enabled=false, Degradation Level 3): "
            f"{what} answered 503; {tail}", details, type=MAINTENANCE, non_retryable=True)
    if code == 409:
        # the idempotency-key draft: a request with this key is still in flight; the same key later gets its
        # answer (never a second action), so retrying is safe and right
        return ApplicationError(f"trading core: {what} is still being processed under its Idempotency-Key "
                                f"(409 {said}); retrying", details, type=CORE_UNAVAILABLE, non_retryable=False,
                                next_retry_delay=_retry_after(resp))
    if code in (408, 429) or code >= 500:
        return ApplicationError(f"trading core unavailable: {what} answered {code} ({said})", details,
                                type=CORE_UNAVAILABLE, non_retryable=False, next_retry_delay=_retry_after(resp))
    if 400 <= code < 500:
        return ApplicationError(f"trading core rejected {what} ({code} {said})", details,
                                type=BAD_REQUEST, non_retryable=True)
    return ApplicationError(f"trading core answered {what} with unexpected status {code}", details,
                            type=CORE_UNAVAILABLE, non_retryable=False)


def schema_error(e: ValidationError, what: str) -> ApplicationError:
    """A contract violation, naming the field(s) at fault."""
    parts = []
    for err in e.errors()[:5]:
        field = ".".join(str(x) for x in err.get("loc", ())) or "(body)"
        if err.get("type") == "missing":
            parts.append(f"field {field!r} is missing")
        else:
            parts.append(f"field {field!r}: {err.get('msg')} (got {err.get('input')!r:.60})")
    fields = [".".join(str(x) for x in err.get("loc", ())) for err in e.errors()]
    return ApplicationError(f"trading core broke the contract on {what}: " + "; ".join(parts),
                            {"fields": fields, "call": what}, type=SCHEMA_VIOLATION, non_retryable=True)


def _not_json(what: str, resp: httpx.Response) -> ApplicationError:
    return ApplicationError(
        f"trading core broke the contract on {what}: body is not JSON "
        f"(content-type {resp.headers.get('content-type', '?')!r}, {len(resp.content)} bytes)",
        {"fields": ["(body)"], "call": what}, type=SCHEMA_VIOLATION, non_retryable=True)


_CLEAN_KEY = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?$")


def wire_key(key: str) -> str:
    """The Idempotency-Key header value for `key`: itself when it is a clean header value, else
    "sha256:<hex>" of it (the same key always maps to the same value, so idempotency holds)."""
    if _CLEAN_KEY.match(key):
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _logger():
    return activity.logger if activity.in_activity() else log


class TradingCoreActivities:
    """Activities against the trading core's HTTP API (or the simulator)."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, token, *, timeout_s: float = 2.0,
                 poll_interval_s: float = 0.02, owns_client: bool = False):
        self.client = client
        self.base_url = base_url.rstrip("/")
        self._token = token  # pydantic SecretStr (or a plain str in tests); read only when sending
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self._owns_client = owns_client

    @classmethod
    def from_settings(cls, settings: TradingCoreSettings, client: httpx.AsyncClient | None = None,
                      ) -> "TradingCoreActivities":
        owns = client is None
        client = client or httpx.AsyncClient()
        return cls(client, settings.url, settings.token, timeout_s=settings.timeout_s, owns_client=owns)

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    def __repr__(self) -> str:  # never the token
        return f"TradingCoreActivities(base_url={self.base_url!r})"

    # -- transport -----------------------------------------------------------------------------
    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        tok = self._token.get_secret_value() if hasattr(self._token, "get_secret_value") else str(self._token)
        return {"Authorization": f"Bearer {tok}", "Accept": "application/json", **(extra or {})}

    async def _request(self, method: str, path: str, *, timeout_s: float, json: Any = None,
                       headers: dict[str, str] | None = None, action: bool = False) -> httpx.Response:
        what = f"{method} {path}"
        try:
            resp = await self.client.request(method, self.base_url + path, json=json,
                                             headers=self._headers(headers), timeout=timeout_s)
        except httpx.TimeoutException as e:
            raise ApplicationError(f"trading core did not answer {what} within {timeout_s:g}s ({type(e).__name__})",
                                   {"call": what}, type=CORE_TIMEOUT, non_retryable=False) from None
        except httpx.TransportError as e:
            raise ApplicationError(f"trading core unreachable at {self.base_url} for {what}: {type(e).__name__}: {e}",
                                   {"call": what}, type=CORE_UNAVAILABLE, non_retryable=False) from None
        err = classify(resp, what, action=action)
        if err is not None:
            raise err
        return resp

    @staticmethod
    def _parse(model: type[BaseModel], resp: httpx.Response, what: str):
        try:
            resp.json()
        except ValueError:
            raise _not_json(what, resp) from None
        try:
            return model.model_validate_json(resp.content, strict=True)
        except ValidationError as e:
            raise schema_error(e, what) from None

    # -- activities ------------------------------------------------------------------------------
    @activity.defn(name="core.read_health")
    async def read_health(self, inp: ReadHealthInput) -> HealthSnapshot:
        resp = await self._request("GET", HEALTH_PATH, timeout_s=inp.timeout_s)
        return self._parse(HealthSnapshot, resp, f"GET {HEALTH_PATH}")

    @activity.defn(name="core.read_exposure")
    async def read_exposure(self) -> ExposureReport:
        resp = await self._request("GET", EXPOSURE_PATH, timeout_s=self.timeout_s)
        return self._parse(ExposureReport, resp, f"GET {EXPOSURE_PATH}")

    @activity.defn(name="core.action")
    async def action(self, inp: CoreActionInput) -> CoreActionResult:
        path = ACTION_PATH.format(action=inp.action)
        what = f"POST {path}"
        if inp.action not in ACTIONS:
            raise ApplicationError(f"unknown trading-core action {inp.action!r}; known: {', '.join(ACTIONS)}",
                                   {"call": what}, type=BAD_REQUEST, non_retryable=True)
        missing = [f for f in ACTIONS[inp.action] if f not in inp.body]
        if missing:
            raise ApplicationError(f"action {inp.action} needs {', '.join(missing)} in its body",
                                   {"call": what, "fields": missing}, type=BAD_REQUEST, non_retryable=True)
        key = wire_key(inp.idempotency_key)
        resp = await self._request("POST", path, timeout_s=self.timeout_s, json=inp.body,
                                   headers={IDEMPOTENCY_HEADER: key}, action=True)
        res: CoreActionResult = self._parse(CoreActionResult, resp, what)
        if res.idempotency_key != key or res.action != inp.action:
            raise ApplicationError(
                f"trading core answered {what} for another request (action {res.action!r}, key {res.idempotency_key!r})",
                {"call": what, "fields": ["action", "idempotency_key"]}, type=SCHEMA_VIOLATION, non_retryable=True)
        replayed = res.replayed or resp.headers.get(REPLAYED_HEADER, "").lower() == "true"
        res = res.model_copy(update={"replayed": replayed, "idempotency_key": inp.idempotency_key})
        _logger().info("trading core action %s key=%s -> %s%s", inp.action, inp.idempotency_key, res.status,
                       " (replayed: done before, not repeated)" if res.replayed else "")
        return res

    @activity.defn(name="core.wait_applied")
    async def wait_applied(self, inp: WaitAppliedInput) -> AppliedConfig:
        """Poll GET /v1/config/applied (every ~20 ms) until the core reports revision >= inp.revision.

        Transient failures (5xx, timeouts, refused connections) are polled through until the
        deadline; refusals (401, 4xx, maintenance, a broken body) end the wait at once.
        """
        what = f"GET {APPLIED_PATH}"
        start = time.monotonic()
        deadline = start + inp.timeout_s
        polls, seen, last_err = 0, None, None
        while True:
            left = deadline - time.monotonic()
            try:
                resp = await self._request("GET", APPLIED_PATH, timeout_s=max(0.05, min(self.timeout_s, left)))
                cfg: AppliedConfig = self._parse(AppliedConfig, resp, what)
                polls += 1
                seen, last_err = cfg.revision, None
                if cfg.revision >= inp.revision:
                    return cfg.model_copy(update={"waited_s": time.monotonic() - start, "polls": polls})
            except ApplicationError as e:
                if e.non_retryable:
                    raise
                polls += 1
                last_err = e
            if activity.in_activity():
                activity.heartbeat({"polls": polls, "revision_seen": seen})
            if time.monotonic() >= deadline:
                why = f"; last error: {last_err.message}" if last_err else ""
                raise ApplicationError(
                    f"trading core did not apply revision {inp.revision} within {inp.timeout_s:g}s "
                    f"(last applied revision seen: {seen}, {polls} polls){why}",
                    {"revision": inp.revision, "revision_seen": seen, "polls": polls},
                    type=NOT_APPLIED, non_retryable=False)
            await asyncio.sleep(min(self.poll_interval_s, max(0.0, deadline - time.monotonic())))
