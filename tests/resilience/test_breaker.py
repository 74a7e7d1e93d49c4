"""Circuit breaker transitions, driven by a fake clock."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from appliance.errors import CircuitOpenError
from appliance.resilience.breaker import BreakerSettings, BreakerState, CircuitBreaker

SETTINGS = BreakerSettings(failure_threshold=3, recovery_seconds=10.0, max_recovery_seconds=35.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.transitions: list[tuple[str, BreakerState, BreakerState]] = []

    def __call__(self, tool: str, old: BreakerState, new: BreakerState) -> None:
        self.transitions.append((tool, old, new))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def hook() -> Recorder:
    return Recorder()


@pytest.fixture
def breaker(clock: FakeClock, hook: Recorder) -> CircuitBreaker:
    return CircuitBreaker("nmap_scan", SETTINGS, clock=clock, on_transition=hook)


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.before_call()
        breaker.record_failure()


def refusal(breaker: CircuitBreaker) -> CircuitOpenError:
    with pytest.raises(CircuitOpenError) as excinfo:
        breaker.before_call()
    return excinfo.value


def open_then_probe(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """Open the breaker from closed and let the recovery time pass; the next call is the probe."""
    fail(breaker, SETTINGS.failure_threshold)
    clock.now += SETTINGS.recovery_seconds


def test_new_breaker_is_closed_and_admits(breaker: CircuitBreaker) -> None:
    breaker.before_call()

    assert breaker.state is BreakerState.CLOSED
    assert breaker.seconds_until_probe() is None


def test_failures_below_threshold_keep_it_closed(breaker: CircuitBreaker, hook: Recorder) -> None:
    fail(breaker, SETTINGS.failure_threshold - 1)

    assert breaker.state is BreakerState.CLOSED
    assert breaker.consecutive_failures == SETTINGS.failure_threshold - 1
    assert hook.transitions == []


def test_threshold_of_consecutive_failures_opens(breaker: CircuitBreaker, hook: Recorder) -> None:
    fail(breaker, SETTINGS.failure_threshold)

    assert breaker.state is BreakerState.OPEN
    assert hook.transitions == [("nmap_scan", BreakerState.CLOSED, BreakerState.OPEN)]


def test_success_between_failures_resets_the_count(breaker: CircuitBreaker) -> None:
    fail(breaker, SETTINGS.failure_threshold - 1)
    breaker.record_success()
    fail(breaker, SETTINGS.failure_threshold - 1)

    assert breaker.state is BreakerState.CLOSED
    assert breaker.consecutive_failures == SETTINGS.failure_threshold - 1


def test_open_breaker_refuses_with_the_time_left(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, SETTINGS.failure_threshold)
    clock.now += 4.0

    error = refusal(breaker)

    assert error.rule == "circuit_open"
    assert "6.0 seconds" in error.message
    assert breaker.seconds_until_probe() == pytest.approx(6.0)
    assert breaker.state is BreakerState.OPEN


def test_recovery_time_passed_lets_one_probe_through(breaker: CircuitBreaker, clock: FakeClock, hook: Recorder) -> None:
    open_then_probe(breaker, clock)

    breaker.before_call()

    assert breaker.state is BreakerState.HALF_OPEN
    assert hook.transitions[-1] == ("nmap_scan", BreakerState.OPEN, BreakerState.HALF_OPEN)
    assert breaker.seconds_until_probe() is None


def test_second_call_while_probe_runs_is_refused(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_then_probe(breaker, clock)
    breaker.before_call()

    error = refusal(breaker)

    assert error.rule == "circuit_open"
    assert breaker.state is BreakerState.HALF_OPEN


def test_successful_probe_closes_and_resets(breaker: CircuitBreaker, clock: FakeClock, hook: Recorder) -> None:
    open_then_probe(breaker, clock)
    breaker.before_call()

    breaker.record_success()

    assert breaker.state is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0
    assert hook.transitions[-1] == ("nmap_scan", BreakerState.HALF_OPEN, BreakerState.CLOSED)
    breaker.before_call()
    breaker.before_call()  # closed again: no single-probe limit


def test_failed_probe_reopens_with_doubled_recovery_up_to_the_cap(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_then_probe(breaker, clock)
    waits = []
    for _ in range(4):
        breaker.before_call()  # the probe
        breaker.record_failure()
        assert breaker.state is BreakerState.OPEN
        wait = breaker.seconds_until_probe()
        assert wait is not None
        waits.append(wait)
        clock.now += wait

    assert waits == [20.0, 35.0, 35.0, 35.0]  # 10 doubled, then capped at max_recovery_seconds


def test_success_after_grown_recovery_starts_over_at_the_first_wait(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_then_probe(breaker, clock)
    breaker.before_call()
    breaker.record_failure()  # recovery now 20 s
    clock.now += 20.0
    breaker.before_call()
    breaker.record_success()

    fail(breaker, SETTINGS.failure_threshold)

    assert breaker.seconds_until_probe() == SETTINGS.recovery_seconds


def test_neutral_outcomes_do_not_count(breaker: CircuitBreaker) -> None:
    fail(breaker, SETTINGS.failure_threshold - 1)
    for _ in range(10):
        breaker.before_call()
        breaker.record_neutral()

    assert breaker.state is BreakerState.CLOSED
    assert breaker.consecutive_failures == SETTINGS.failure_threshold - 1


def test_neutral_probe_frees_the_probe_slot_and_stays_half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_then_probe(breaker, clock)
    breaker.before_call()

    breaker.record_neutral()

    assert breaker.state is BreakerState.HALF_OPEN
    breaker.before_call()  # the next call is the new probe
    assert refusal(breaker).rule == "circuit_open"


def test_failure_of_a_call_admitted_before_opening_keeps_the_probe_time(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    breaker.before_call()  # still running when the breaker opens
    fail(breaker, SETTINGS.failure_threshold)
    clock.now += 4.0

    breaker.record_failure()

    assert breaker.state is BreakerState.OPEN
    assert breaker.seconds_until_probe() == pytest.approx(6.0)


def test_forced_open_refuses_even_when_closed(breaker: CircuitBreaker) -> None:
    breaker.update_settings(BreakerSettings(force="open"))

    error = refusal(breaker)

    assert error.rule == "circuit_forced_open"
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["forced"] == "open"


def test_forced_closed_admits_an_open_breaker_without_probe_limit(breaker: CircuitBreaker) -> None:
    fail(breaker, SETTINGS.failure_threshold)

    breaker.update_settings(BreakerSettings(failure_threshold=3, force="closed"))

    for _ in range(3):
        breaker.before_call()
    assert breaker.seconds_until_probe() is None


def test_forced_closed_never_opens_but_counts(clock: FakeClock) -> None:
    breaker = CircuitBreaker("gobuster_scan", BreakerSettings(failure_threshold=3, force="closed"), clock=clock)

    fail(breaker, 10)

    assert breaker.state is BreakerState.CLOSED
    assert breaker.consecutive_failures == 10
    assert breaker.snapshot()["forced"] == "closed"


def test_lifting_forced_closed_opens_on_the_next_failure(clock: FakeClock) -> None:
    breaker = CircuitBreaker("masscan_scan", BreakerSettings(failure_threshold=3, force="closed"), clock=clock)
    fail(breaker, 5)

    breaker.update_settings(BreakerSettings(failure_threshold=3))
    breaker.before_call()
    breaker.record_failure()

    assert breaker.state is BreakerState.OPEN


def test_update_settings_keeps_state_and_counts(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, SETTINGS.failure_threshold)
    clock.now += 4.0

    breaker.update_settings(BreakerSettings(failure_threshold=10, recovery_seconds=1.0, max_recovery_seconds=2.0))

    assert breaker.state is BreakerState.OPEN
    assert breaker.consecutive_failures == SETTINGS.failure_threshold
    assert breaker.seconds_until_probe() == pytest.approx(6.0)  # the scheduled probe stays
    clock.now += 6.0
    breaker.before_call()
    breaker.record_failure()
    assert breaker.seconds_until_probe() == 2.0  # the new cap applies from the next failed probe


def test_snapshot_reports_state_failures_and_probe_time(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, SETTINGS.failure_threshold)
    clock.now += 2.5

    assert breaker.snapshot() == {
        "state": "open",
        "consecutive_failures": SETTINGS.failure_threshold,
        "seconds_until_probe": 7.5,
        "forced": None,
    }


def test_transitions_are_logged_with_tool_and_states(breaker: CircuitBreaker, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="appliance.resilience.breaker"):
        fail(breaker, SETTINGS.failure_threshold)

    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert {key: record.__dict__[key] for key in ("tool", "from", "to")} == {
        "tool": "nmap_scan",
        "from": "closed",
        "to": "open",
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"recovery_seconds": 0.0},
        {"recovery_seconds": 60.0, "max_recovery_seconds": 30.0},
    ],
)
def test_settings_reject_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        BreakerSettings(**kwargs)
