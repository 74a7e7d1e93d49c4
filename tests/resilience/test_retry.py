"""Retrying transient scanner starts only, on an injected sleep and jitter; and the runner's side of it."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance import runner
from appliance.errors import ExecutionError, NotFoundError, ScanTimeoutError, ValidationError
from appliance.resilience.retry import is_transient, retry_transient
from appliance.runner import RunLimits

FAKES = Path(__file__).parent.parent / "fakes"


def transient() -> ExecutionError:
    return ExecutionError("fork failed", rule="scanner_start_transient")


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class Start:
    """A start function that raises the given errors in turn, then returns "started"."""

    def __init__(self, *errors: BaseException) -> None:
        self._errors: Iterator[BaseException] = iter(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        error = next(self._errors, None)
        if error is not None:
            raise error
        return "started"


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def fixed_jitter(*values: float) -> Callable[[], float]:
    return iter(values).__next__


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ExecutionError("x", rule="scanner_start_transient"), True),
        (ExecutionError("x", rule="scanner_start_failed"), False),
        (ExecutionError("x", rule="argv_invalid"), False),
        (ValidationError("x", rule="scanner_start_transient"), False),
        (ScanTimeoutError("x"), False),
        (asyncio.CancelledError(), False),
        (OSError(errno.EAGAIN, "again"), False),
    ],
)
def test_is_transient(exc: BaseException, expected: bool) -> None:
    assert is_transient(exc) is expected


@pytest.mark.anyio
async def test_transient_failure_is_retried_then_succeeds(sleeps: Sleeps) -> None:
    start = Start(transient(), transient())

    result = await retry_transient(start, sleep=sleeps, jitter=fixed_jitter(1.0, 1.0))

    assert result == "started"
    assert start.calls == 3
    assert len(sleeps.delays) == 2


@pytest.mark.anyio
async def test_gives_up_after_attempts_and_reraises_the_last_error(sleeps: Sleeps) -> None:
    errors = [transient() for _ in range(4)]
    start = Start(*errors)

    with pytest.raises(ExecutionError) as excinfo:
        await retry_transient(start, attempts=3, sleep=sleeps, jitter=fixed_jitter(0.5, 0.5))

    assert excinfo.value is errors[2]
    assert start.calls == 3
    assert len(sleeps.delays) == 2  # no sleep after the last attempt


@pytest.mark.anyio
async def test_single_attempt_never_sleeps(sleeps: Sleeps) -> None:
    start = Start(transient())

    with pytest.raises(ExecutionError):
        await retry_transient(start, attempts=1, sleep=sleeps)

    assert sleeps.delays == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "error",
    [
        pytest.param(ExecutionError("exit 1", rule="scanner_start_failed"), id="permanent_start_failure"),
        pytest.param(ExecutionError("bad", rule="argv_invalid"), id="invalid_argv"),
        pytest.param(ScanTimeoutError("too slow"), id="timeout"),
        pytest.param(ValidationError("out of scope", rule="target_out_of_scope"), id="refusal"),
        pytest.param(NotFoundError("no nmap", rule="scanner_binary_missing"), id="missing_binary"),
        pytest.param(asyncio.CancelledError(), id="cancelled"),
        pytest.param(RuntimeError("parser choked"), id="other_exception"),
    ],
)
async def test_non_transient_errors_are_not_retried(sleeps: Sleeps, error: BaseException) -> None:
    start = Start(error)

    with pytest.raises(type(error)) as excinfo:
        await retry_transient(start, sleep=sleeps)

    assert excinfo.value is error
    assert start.calls == 1
    assert sleeps.delays == []


@pytest.mark.anyio
async def test_delays_follow_the_full_jitter_schedule(sleeps: Sleeps) -> None:
    start = Start(*(transient() for _ in range(5)))

    await retry_transient(
        start,
        attempts=6,
        base_delay=0.1,
        max_delay=0.5,
        sleep=sleeps,
        jitter=fixed_jitter(1.0, 0.5, 1.0, 1.0, 0.25),
    )

    # jitter * min(0.5, 0.1 * 2**n) for n = 0..4: 0.1, 0.2, 0.4, then capped at 0.5
    assert sleeps.delays == pytest.approx([0.1, 0.1, 0.4, 0.5, 0.125])


@pytest.mark.anyio
async def test_each_retry_is_logged(sleeps: Sleeps, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="appliance.resilience.retry"):
        await retry_transient(Start(transient(), transient()), sleep=sleeps, jitter=fixed_jitter(1.0, 1.0))

    assert [getattr(r, "attempt", None) for r in caplog.records] == [1, 2]


# The runner's side: the errno of a refused spawn decides whether the failure is transient.


def fail_spawn(monkeypatch: pytest.MonkeyPatch, code: int, times: int) -> list[int]:
    """Make the next `times` spawns fail with `code`; later spawns run for real. Returns the call log."""
    real = asyncio.create_subprocess_exec
    calls: list[int] = []

    async def spawn(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        calls.append(len(calls))
        if len(calls) <= times:
            raise OSError(code, "refused by the test")
        return await real(*args, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spawn)
    return calls


def limits() -> RunLimits:
    return RunLimits(timeout_seconds=30.0, output_cap_bytes=1 << 20)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("code", "rule"),
    [
        (errno.EAGAIN, "scanner_start_transient"),
        (errno.ENOMEM, "scanner_start_transient"),
        (errno.EACCES, "scanner_start_failed"),
        (errno.ENOEXEC, "scanner_start_failed"),
    ],
)
async def test_runner_marks_only_eagain_and_enomem_transient(
    monkeypatch: pytest.MonkeyPatch, code: int, rule: str
) -> None:
    fail_spawn(monkeypatch, code, times=1)

    with pytest.raises(ExecutionError) as excinfo:
        await runner.run([str(FAKES / "talk.py"), "0"], limits())

    assert excinfo.value.rule == rule


@pytest.mark.anyio
async def test_run_retried_after_eagain_completes(monkeypatch: pytest.MonkeyPatch, sleeps: Sleeps) -> None:
    calls = fail_spawn(monkeypatch, errno.EAGAIN, times=1)

    def start() -> Awaitable[runner.RunResult]:
        return runner.run([str(FAKES / "talk.py"), "0"], limits())

    result = await retry_transient(start, sleep=sleeps, jitter=fixed_jitter(1.0))

    assert result.exit_code == 0
    assert len(calls) == 2
    assert sleeps.delays == [0.05]
