"""Concurrency slots per tool, overall and per principal, with short bounded FIFO queues in front.

A call that finds no free slot waits in its tool's queue; the wait counts against the call's own
deadline, and a full queue refuses at once, so load never piles up without bound. Waiters are
futures: a freed slot is handed to the oldest waiter whose tool, the whole appliance and whose
principal are under their limits, by the code that freed it, so no waiter polls.

Limits are checked in one documented order, each refusal with its rule: the tool's queue
(`queue_full`), then the principal's queued calls (`principal_queue_full`); a slot needs room in
the tool, overall and in the principal's share. A waiter held back only by its principal's share
does not block other principals queued behind it. Calls without a principal (stdio: one caller)
have no principal share.

Not covered: a running call is never preempted; reloaded limits apply to new admissions only.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from appliance.errors import ResourceExhaustedError

logger = logging.getLogger(__name__)

# timer(delay_seconds, callback) -> cancel: run callback once after the delay unless cancelled.
Timer = Callable[[float, Callable[[], None]], Callable[[], None]]


@dataclass(frozen=True)
class ToolLimit:
    """How many scans of one tool run at once, and how many more may wait for a slot."""

    max_concurrent: int = 2
    max_queued: int = 4

    def __post_init__(self) -> None:
        if self.max_concurrent < 1 or self.max_queued < 0:
            raise ValueError("need max_concurrent >= 1 and max_queued >= 0")


_DEFAULT_LIMIT = ToolLimit()


@dataclass(frozen=True)
class PrincipalLimit:
    """How many scans one principal runs at once (all tools), and how many of its calls may wait."""

    max_running: int = 3
    max_queued: int = 6

    def __post_init__(self) -> None:
        if self.max_running < 1 or self.max_queued < 0:
            raise ValueError("need max_running >= 1 and max_queued >= 0")


def loop_timer(delay: float, callback: Callable[[], None]) -> Callable[[], None]:
    """The default timer: the running event loop's call_later."""
    return asyncio.get_running_loop().call_later(delay, callback).cancel


@dataclass(eq=False)
class _Waiter:
    tool: str
    principal: str | None
    order: int
    future: asyncio.Future[None]
    cancel_timer: Callable[[], None] | None = None


class ConcurrencyLimiter:
    """Slots for every tool of one appliance. Not thread-safe: use it from the one event loop.

    A tool missing from `per_tool` gets `ToolLimit()`.
    """

    def __init__(
        self,
        per_tool: Mapping[str, ToolLimit],
        global_max: int = 4,
        *,
        clock: Callable[[], float] = time.monotonic,
        timer: Timer = loop_timer,
        on_change: Callable[[str], None] | None = None,
        per_principal: PrincipalLimit | None = None,
    ) -> None:
        self._per_tool: dict[str, ToolLimit] = {}
        self._per_principal: PrincipalLimit | None = None
        self._global_max = 0
        self._clock = clock
        self._timer = timer
        self._on_change = on_change
        self._running: dict[str, int] = {}
        self._running_total = 0
        self._running_by_principal: dict[str, int] = {}
        self._queued_by_principal: dict[str, int] = {}
        self._queues: dict[str, deque[_Waiter]] = {}
        self._order = itertools.count()
        self._closed = False
        self.update(per_tool, global_max, per_principal)

    def update(
        self, per_tool: Mapping[str, ToolLimit], global_max: int, per_principal: PrincipalLimit | None = None
    ) -> None:
        """Apply reloaded limits to new admissions; running calls keep their slots, waiters their places.

        `per_principal` None: no principal share at all.
        """
        if global_max < 1:
            raise ValueError("global_max must be at least 1")
        self._per_tool = dict(per_tool)
        self._global_max = global_max
        self._per_principal = per_principal
        self._dispatch()  # higher limits may admit waiters now

    def in_flight(self, tool: str) -> int:
        return self._running.get(tool, 0)

    def capacity(self, tool: str) -> int:
        """How many calls `tool`'s queue holds before it refuses (`queue_full`)."""
        return self._per_tool.get(tool, ToolLimit()).max_queued

    def queued(self, tool: str) -> int:
        return len(self._queues.get(tool, ()))

    def running_for(self, principal: str) -> int:
        return self._running_by_principal.get(principal, 0)

    def queued_for(self, principal: str) -> int:
        return self._queued_by_principal.get(principal, 0)

    def close(self) -> None:
        """Shut down: refuse every waiter and every later call; running calls finish normally."""
        self._closed = True
        refused = sum(len(queue) for queue in self._queues.values())
        logger.info("concurrency limiter closed", extra={"refused_waiters": refused})
        for queue in self._queues.values():
            while queue:
                waiter = queue[0]
                self._drop(waiter)
                waiter.future.set_exception(_shutting_down())

    @asynccontextmanager
    async def slot(self, tool: str, deadline: float, principal: str | None = None) -> AsyncIterator[float]:
        """Hold one slot of `tool` for the body; yield the seconds left until `deadline` (clock time).

        Raises ResourceExhaustedError: `queue_full` at once when the tool's queue is full,
        `principal_queue_full` when `principal` already has its share of calls waiting,
        `queue_wait_timeout` when the deadline passes before a slot frees, `shutting_down` after close().
        """
        await self._acquire(tool, deadline, principal)
        try:
            yield max(deadline - self._clock(), 0.0)
        finally:
            self._release(tool, principal)

    def refusal(self, tool: str, principal: str | None) -> ResourceExhaustedError | None:
        """The refusal a call for `tool` would get at once now, or None when it would run or queue.

        Side-effect free: the service asks before it records a job (a refusal is not a job).
        """
        if self._closed:
            return _shutting_down()
        if self._has_room(tool, principal):
            return None
        queue = self._queues.get(tool, ())
        if len(queue) >= self._limit(tool).max_queued:
            return ResourceExhaustedError(
                f"{tool} already has {self.in_flight(tool)} scans running and {len(queue)} waiting",
                rule="queue_full",
            )
        share = self._per_principal
        if principal is not None and share is not None and self.queued_for(principal) >= share.max_queued:
            return ResourceExhaustedError(
                f"principal {principal} already has {self.queued_for(principal)} calls waiting, its limit",
                rule="principal_queue_full",
                recovery_suggestion="Wait for your running scans to finish before sending more.",
            )
        return None

    async def _acquire(self, tool: str, deadline: float, principal: str | None) -> None:
        refusal = self.refusal(tool, principal)
        if refusal is not None:
            raise refusal
        queue = self._queues.setdefault(tool, deque())
        # Every change re-dispatches, so a waiter still queued has no room: a caller with room
        # here (its principal under its share where the waiters' are not) overtakes no one fairly owed.
        if self._has_room(tool, principal):
            self._take(tool, principal)
            return
        wait = deadline - self._clock()
        if wait <= 0:
            raise _wait_timeout(tool)

        waiter = _Waiter(tool, principal, next(self._order), asyncio.get_running_loop().create_future())
        queue.append(waiter)
        if principal is not None:
            self._queued_by_principal[principal] = self.queued_for(principal) + 1
        waiter.cancel_timer = self._timer(wait, lambda: self._expire(waiter))
        self._changed(tool)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self._release(tool, principal)  # the slot was handed over just before the cancellation landed
            else:
                self._drop(waiter)
            raise
        if self._clock() >= deadline:
            # Handed a slot in the same instant the deadline passed: no time is left to scan with it.
            self._release(tool, principal)
            raise _wait_timeout(tool)

    def _limit(self, tool: str) -> ToolLimit:
        return self._per_tool.get(tool, _DEFAULT_LIMIT)

    def _has_room(self, tool: str, principal: str | None) -> bool:
        if self._running_total >= self._global_max or self.in_flight(tool) >= self._limit(tool).max_concurrent:
            return False
        share = self._per_principal
        return principal is None or share is None or self.running_for(principal) < share.max_running

    def _take(self, tool: str, principal: str | None) -> None:
        self._running[tool] = self.in_flight(tool) + 1
        self._running_total += 1
        if principal is not None:
            self._running_by_principal[principal] = self.running_for(principal) + 1
        self._changed(tool)

    def _release(self, tool: str, principal: str | None) -> None:
        self._running[tool] -= 1
        self._running_total -= 1
        if principal is not None:
            self._running_by_principal[principal] -= 1
            if not self._running_by_principal[principal]:
                del self._running_by_principal[principal]  # principals come and go: keep no empty entries
        self._changed(tool)
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to the oldest waiters that have room in their tool, overall and in their share."""
        while self._running_total < self._global_max:
            heads = [
                next((w for w in queue if self._has_room(tool, w.principal)), None)
                for tool, queue in self._queues.items()
                if queue
            ]
            ready = [w for w in heads if w is not None]
            if not ready:
                return
            waiter = min(ready, key=lambda w: w.order)
            self._drop(waiter)
            self._take(waiter.tool, waiter.principal)
            waiter.future.set_result(None)

    def _expire(self, waiter: _Waiter) -> None:
        if waiter.future.done():
            return
        self._drop(waiter)
        waiter.future.set_exception(_wait_timeout(waiter.tool))

    def _drop(self, waiter: _Waiter) -> None:
        """Take a waiter out of its queue and stop its timer; harmless if it is already out."""
        if waiter.cancel_timer is not None:
            waiter.cancel_timer()
            waiter.cancel_timer = None
        queue = self._queues[waiter.tool]
        if waiter in queue:
            queue.remove(waiter)
            if waiter.principal is not None:
                self._queued_by_principal[waiter.principal] -= 1
                if not self._queued_by_principal[waiter.principal]:
                    del self._queued_by_principal[waiter.principal]
            self._changed(waiter.tool)

    def _changed(self, tool: str) -> None:
        if self._on_change is not None:
            self._on_change(tool)


def _wait_timeout(tool: str) -> ResourceExhaustedError:
    return ResourceExhaustedError(
        f"no {tool} slot became free before the call's deadline",
        rule="queue_wait_timeout",
        recovery_suggestion="Retry when fewer scans are running, or with a larger timeout_seconds.",
    )


def _shutting_down() -> ResourceExhaustedError:
    return ResourceExhaustedError(
        "the appliance is shutting down and starts no new scans",
        rule="shutting_down",
        recovery_suggestion="Retry once the appliance is back.",
    )
