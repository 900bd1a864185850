"""A small async client of the simulator's controls (tests, benchmarks, the demo).

    async with SimClient("http://127.0.0.1:8700", token="dev-token") as sim:
        await sim.inject(hl_connected=False)
        h = await sim.health()
        await sim.clear_faults()
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx


class SimClient:
    def __init__(self, base_url: str, token: str = "dev-token", client: httpx.AsyncClient | None = None):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._own = client is None
        self.http = client or httpx.AsyncClient(timeout=10.0)

    async def __aenter__(self) -> "SimClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own:
            await self.http.aclose()

    def url(self, path: str) -> str:
        return self.base_url + path

    async def _sim(self, method: str, path: str, json: Any = None) -> Any:
        r = await self.http.request(method, self.url(path), json=json)
        r.raise_for_status()
        return r.json()

    # -- controls ----------------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        return await self._sim("GET", "/sim/status")

    async def reset(self, prefix: str | None = None, seed: int | None = None) -> dict[str, Any]:
        body = {k: v for k, v in {"prefix": prefix, "seed": seed}.items() if v is not None}
        return await self._sim("POST", "/sim/reset", body)

    async def inject(self, faults: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        """Merge faults (metric overrides and api_* faults); returns the faults in force."""
        return await self._sim("POST", "/sim/faults", {**(faults or {}), **kw})

    async def clear_faults(self) -> dict[str, Any]:
        return await self._sim("DELETE", "/sim/faults")

    async def faults(self) -> dict[str, Any]:
        return await self._sim("GET", "/sim/faults")

    async def actions(self) -> list[dict[str, Any]]:
        return await self._sim("GET", "/sim/actions")

    async def clear_actions(self) -> list[dict[str, Any]]:
        return await self._sim("DELETE", "/sim/actions")

    async def switches(self) -> dict[str, Any]:
        return await self._sim("GET", "/sim/switches")

    async def pages(self) -> list[dict[str, Any]]:
        return await self._sim("GET", "/sim/pagerduty")

    async def incidents(self) -> list[dict[str, Any]]:
        return await self._sim("GET", "/sim/pagerduty/incidents")

    async def chats(self, path: str = "") -> list[Any]:
        return await self._sim("GET", "/sim/slack" + (f"/{path}" if path else ""))

    async def clear_sinks(self) -> None:
        await self._sim("DELETE", "/sim/pagerduty")
        await self._sim("DELETE", "/sim/slack")

    async def pagerduty(self) -> dict[str, Any]:
        """The PagerDuty sink's state: alerts, notifications, rejected, dropped, change_events, webhooks."""
        return await self._sim("GET", "/sim/pagerduty/state")

    async def notifications(self) -> list[dict[str, Any]]:
        """Each time PagerDuty would have notified a person (a new alert, an acknowledgement that timed out)."""
        return (await self.pagerduty())["notifications"]

    async def slack(self) -> dict[str, Any]:
        """The Slack sink's state: messages (with `mangled` reasons), rejected, broken webhooks."""
        return (await self._sim("GET", "/sim/paging/state"))["slack"]

    async def paging_config(self, **changes: Any) -> dict[str, Any]:
        """Change the sinks' strictness (rate limits, known keys, webhook target, broken Slack webhooks);
        their state is forgotten. No arguments: read it."""
        if not changes:
            return await self._sim("GET", "/sim/paging/config")
        return await self._sim("POST", "/sim/paging/config", changes)

    async def pagerduty_app(self, action: str, dedup_key: str, user: str = "On-call Person") -> dict[str, Any]:
        """A person acts in the PagerDuty app (acknowledge | unacknowledge | resolve): the sink's alert
        changes and the signed v3 webhook is posted to the configured receiver; returns the delivery."""
        return await self._sim("POST", f"/sim/pagerduty/app/{action}", {"dedup_key": dedup_key, "user": user})

    # -- the contract (with the token) --------------------------------------------------------------
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def health(self) -> dict[str, Any]:
        r = await self.http.get(self.url("/v1/health"), headers=self.auth())
        r.raise_for_status()
        return r.json()

    async def v1(self, method: str, path: str, json: Any = None, headers: dict[str, str] | None = None
                 ) -> httpx.Response:
        return await self.http.request(method, self.url(path), json=json, headers={**self.auth(), **(headers or {})})

    # -- waiting (poll a condition with a deadline; never a bare sleep) -----------------------------
    async def wait_for(self, fetch, predicate, timeout: float = 5.0, interval: float = 0.01, what: str = "condition"):
        """Poll `await fetch()` until `predicate(value)`; returns the value or raises TimeoutError."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            last = await fetch()
            if predicate(last):
                return last
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{what} not reached within {timeout:g}s (last: {str(last)[:300]})")
            await asyncio.sleep(interval)

    async def wait_applied(self, revision: int, timeout: float = 5.0) -> dict[str, Any]:
        return await self.wait_for(self.switches, lambda s: s["revision"] >= revision, timeout,
                                   what=f"simulator at revision {revision}")
