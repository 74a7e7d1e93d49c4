"""Waiting on a condition instead of sleeping: one poller, run in a thread for async tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio


def wait_until(
    condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str | None = None
) -> Any:
    """Poll `condition` until it returns something truthy (and return that); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {what or condition}")
        time.sleep(interval)


async def eventually(
    condition: Callable[[], Any], within: float, interval: float = 0.05, what: str | None = None
) -> Any:
    """wait_until in a worker thread, so that tasks on this event loop keep running meanwhile."""
    return await anyio.to_thread.run_sync(lambda: wait_until(condition, within, interval, what))
