"""Retry a scanner start the kernel refused for a passing reason, with jittered exponential backoff.

Only `ExecutionError(rule="scanner_start_transient")` is retried: the runner raises it when fork
or exec fails with EAGAIN or ENOMEM. Not covered, on purpose: timeouts, refusals, scanner exit
codes, cancellation and every other error; a scan that ran is never run again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from appliance.errors import ExecutionError

logger = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT_START_RULE = "scanner_start_transient"


def is_transient(exc: BaseException) -> bool:
    """True for a scanner start failure that may succeed if tried again shortly."""
    return isinstance(exc, ExecutionError) and exc.rule == TRANSIENT_START_RULE


async def retry_transient(
    start: Callable[[], Awaitable[T]],
    *,
    attempts: int = 3,
    base_delay: float = 0.05,
    max_delay: float = 0.5,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    jitter: Callable[[], float] = random.random,
) -> T:
    """Await `start()` up to `attempts` times while it fails transiently; re-raise the last failure.

    Before retry n (0-based) it sleeps jitter() * min(max_delay, base_delay * 2**n) ("full jitter"),
    so callers refused together do not all come back at the same moment.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    attempt = 0
    while True:
        try:
            return await start()
        except ExecutionError as exc:
            attempt += 1
            if attempt >= attempts or not is_transient(exc):
                raise
            delay = jitter() * min(max_delay, base_delay * 2 ** (attempt - 1))
            logger.warning(
                "scanner start failed transiently; retrying",
                extra={"attempt": attempt, "attempts": attempts, "delay_seconds": delay, "reason": exc.message},
            )
            await sleep(delay)
