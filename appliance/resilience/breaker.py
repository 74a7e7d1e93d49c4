"""A circuit breaker per tool: stop starting a scanner that keeps failing, probe it now and then.

Only execution failures (the scanner could not start, or died in a way its output does not
explain) move the breaker. Refusals, client cancellations and scans that simply found nothing
say nothing about the scanner and are recorded as neutral.

Not covered: the breaker does not tie outcomes to calls. A call admitted before the breaker
opened that ends while a probe runs is taken as the probe's outcome; for one binary on one host
that is the same evidence.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from appliance.errors import CircuitOpenError

logger = logging.getLogger(__name__)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# Called with (tool, from, to) on every change of state; the metrics module counts them.
TransitionHook = Callable[[str, BreakerState, BreakerState], None]


@dataclass(frozen=True)
class BreakerSettings:
    """One tool's breaker as the policy sets it; replaced whole on policy reload."""

    failure_threshold: int = 5  # consecutive execution failures that open the breaker
    recovery_seconds: float = 30.0  # first wait before a half-open probe
    max_recovery_seconds: float = 600.0  # cap of the doubling after each failed probe
    force: Literal["open", "closed"] | None = None  # operator override; None lets failures decide

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if not 0 < self.recovery_seconds <= self.max_recovery_seconds:
            raise ValueError("need 0 < recovery_seconds <= max_recovery_seconds")


class CircuitBreaker:
    """The breaker of one tool. Not thread-safe: every call runs on the one event loop."""

    def __init__(
        self,
        tool: str,
        settings: BreakerSettings,
        clock: Callable[[], float] = time.monotonic,
        on_transition: TransitionHook | None = None,
    ) -> None:
        self.tool = tool
        self._settings = settings
        self._clock = clock
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._recovery = settings.recovery_seconds
        self._probe_at = 0.0
        self._probe_running = False

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def effective_state(self) -> BreakerState:
        """What callers meet: an operator's override wins over the failure-driven state."""
        force = self._settings.force
        if force == "open":
            return BreakerState.OPEN
        if force == "closed":
            return BreakerState.CLOSED
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    @property
    def settings(self) -> BreakerSettings:
        return self._settings

    def update_settings(self, settings: BreakerSettings) -> None:
        """Apply reloaded settings. State, failure count and a scheduled probe time stay as they are;
        the new recovery times apply from the next opening or failed probe."""
        self._settings = settings
        self._recovery = min(self._recovery, settings.max_recovery_seconds)

    def seconds_until_probe(self) -> float | None:
        """Seconds until an open breaker lets a probe through; None when no timer refuses calls."""
        if self._state is not BreakerState.OPEN or self._settings.force is not None:
            return None
        return max(self._probe_at - self._clock(), 0.0)

    def before_call(self) -> None:
        """Admit a call or raise CircuitOpenError. A half-open breaker admits one probe at a time."""
        force = self._settings.force
        if force == "open":
            raise CircuitOpenError(
                f"{self.tool} is switched off by the operator (circuit forced open in the policy)",
                rule="circuit_forced_open",
                recovery_suggestion="Ask the appliance operator to lift the override.",
            )
        if force == "closed" or self._state is BreakerState.CLOSED:
            return
        if self._state is BreakerState.OPEN:
            wait = self._probe_at - self._clock()
            if wait > 0:
                raise CircuitOpenError(
                    f"{self.tool} failed {self._failures} times in a row; next probe in {wait:.1f} seconds",
                    rule="circuit_open",
                )
            self._move(BreakerState.HALF_OPEN)
        if self._probe_running:
            raise CircuitOpenError(
                f"{self.tool} is being probed after repeated failures; retry when the probe has finished",
                rule="circuit_open",
            )
        self._probe_running = True

    def record_success(self) -> None:
        """The scanner ran: close the breaker and forget failures and the grown recovery time."""
        self._failures = 0
        self._recovery = self._settings.recovery_seconds
        self._probe_running = False
        if self._state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED)

    def record_failure(self) -> None:
        """An execution failure: count it; open at the threshold, or again after a failed probe."""
        self._failures += 1
        if self._settings.force == "closed":
            return  # counted so the snapshot shows it, but the operator said never to refuse
        if self._state is BreakerState.HALF_OPEN:
            self._probe_running = False
            self._recovery = min(self._recovery * 2, self._settings.max_recovery_seconds)
            self._open()
        elif self._state is BreakerState.CLOSED and self._failures >= self._settings.failure_threshold:
            self._recovery = self._settings.recovery_seconds
            self._open()
        # Already open: a call admitted before the opening failed too; the probe time stays.

    def record_neutral(self) -> None:
        """The call told nothing about the scanner: free a half-open probe slot, change nothing else."""
        self._probe_running = False

    def snapshot(self) -> dict[str, object]:
        return {
            "state": self._state.value,
            "consecutive_failures": self._failures,
            "seconds_until_probe": self.seconds_until_probe(),
            "forced": self._settings.force,
        }

    def _open(self) -> None:
        self._probe_at = self._clock() + self._recovery
        self._move(BreakerState.OPEN)

    def _move(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        level = logging.WARNING if new is BreakerState.OPEN else logging.INFO
        logger.log(
            level,
            "circuit breaker changed state",
            extra={
                "tool": self.tool,
                "from": old.value,
                "to": new.value,
                "consecutive_failures": self._failures,
                "recovery_seconds": self._recovery if new is BreakerState.OPEN else None,
            },
        )
        if self._on_transition is not None:
            self._on_transition(self.tool, old, new)
