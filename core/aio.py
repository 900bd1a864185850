"""Timeouts that never lose a cancellation.

Python 3.11's `asyncio.wait_for` returns the inner result when a cancellation lands after the inner
awaitable finished but before wait_for resumed: the cancellation is lost and the caller goes on (CPython
gh-86296; 3.12 rebuilt wait_for on `asyncio.timeout`). A cancelled monitor went on polling because of
it. Everything here is built on `asyncio.timeout`, which counts cancellations (Task.cancelling) and
only turns its own into TimeoutError. The project uses these, never `asyncio.wait_for`
(tests/test_layers.py checks).
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

T = TypeVar("T")


async def within(timeout_s: float, aw: Awaitable[T]) -> T:
    """`await aw`, raising TimeoutError after `timeout_s` (the awaitable is cancelled)."""
    async with asyncio.timeout(timeout_s):
        return await aw


async def wait_set(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for `event`; whether it is set (a stop signal between rounds)."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        pass
    return event.is_set()
