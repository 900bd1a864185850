"""The one wait helper of the tests: poll a condition with a deadline (never a bare sleep standing in
for synchronisation)."""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Awaitable, Callable


async def wait_until(pred: Callable[[], Any | Awaitable[Any]], timeout: float = 20.0, what: str = "condition",
                     every: float = 0.02) -> Any:
    """Poll `pred` until it returns something truthy (returned); AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            r = pred()
            if inspect.isawaitable(r):
                r = await r
            if r:
                return r
        except AssertionError:
            raise
        except Exception as e:  # a server that is still coming up: keep polling
            last_exc = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        await asyncio.sleep(every)


async def wait_for_value(fetch: Callable[[], Awaitable[Any]], pred: Callable[[Any], bool], timeout: float = 20.0,
                         what: str = "condition", every: float = 0.05) -> Any:
    """Fetch until `pred(value)` holds and return that value (which may itself be falsy); on timeout the
    AssertionError shows the last value fetched. A fetch that fails (not started yet) is retried."""
    last: list[Any] = []

    async def check() -> tuple[Any] | None:
        v = await fetch()
        last[:] = [v]
        return (v,) if pred(v) else None

    try:
        return (await wait_until(check, timeout, what, every))[0]
    except AssertionError as e:
        raise AssertionError(f"{e}; last value: {last[0] if last else 'none fetched'}") from None
