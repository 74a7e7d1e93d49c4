"""Every way an admitted call ends leaves the breaker free, one audit end line and one count.

The runner here is a scripted fake: each test says what the "scanner" does. Targets are lab
addresses the fake never contacts (no process starts, no packet leaves).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry
from support import LabService, replay_output
from support.lab import audit_records

from appliance.errors import ApplianceError, CircuitOpenError, ExecutionError, UnexpectedError
from appliance.runner import RunLimits, RunResult
from appliance.service import ScanService
from appliance.tools import TOOLS

pytestmark = pytest.mark.anyio
NMAP = TOOLS["nmap_scan"]
CALL = {"target": "10.20.0.5", "ports": "80"}
XML = (Path(__file__).parent / "fixtures" / "nmap" / "connect.xml").read_bytes()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Scripted:
    """A runner that plays one scripted behaviour per call: 'fail', 'ok', or an exception to raise."""

    def __init__(self, script: Iterator[Any]) -> None:
        self.script = script

    async def __call__(self, argv: Any, limits: RunLimits, **kwargs: Any) -> RunResult:
        step = next(self.script)
        if isinstance(step, BaseException):
            raise step
        if step == "fail":  # exits non-zero with no output: an execution failure
            return RunResult(tuple(argv), 1, b"", b"nmap: cannot start", False, False, 0.01, pid=0)
        await replay_output(XML, b"", kwargs)
        return RunResult(tuple(argv), 0, XML, b"", False, False, 0.01, pid=0)


BREAKER = {"resilience": {"breaker_failure_threshold": 1, "breaker_recovery_seconds": 10}}


@pytest.fixture
def make(
    lab_service: Callable[..., LabService],
) -> Callable[..., tuple[ScanService, io.StringIO, CollectorRegistry, Clock]]:
    def build(*script: Any) -> tuple[ScanService, io.StringIO, CollectorRegistry, Clock]:
        clock = Clock()
        lab = lab_service(BREAKER, runner=Scripted(iter(script)), privilege_mode="connect", clock=clock)
        return lab.service, lab.audit, lab.registry, clock

    return build


def lines(audit: io.StringIO) -> list[dict[str, Any]]:
    return audit_records(audit.getvalue())


async def open_breaker(service: ScanService, clock: Clock) -> None:
    with pytest.raises(ExecutionError):
        await service.call(NMAP, CALL, "r-fail")
    assert service.breakers["nmap_scan"].state.value == "open"
    clock.now += 11  # past the recovery time: the next call is the half-open probe


async def test_probe_ending_in_a_foreign_exception_does_not_hold_the_breaker_half_open(
    make: Callable[..., Any],
) -> None:
    service, audit, _, clock = make("fail", RuntimeError("bug in a parser"), "ok")
    await open_breaker(service, clock)

    with pytest.raises(UnexpectedError):  # the caller's view of the RuntimeError (logged in full)
        await service.call(NMAP, CALL, "r-probe")
    # Before the fix the probe slot stayed taken: every later call got circuit_open for good.
    report = await service.call(NMAP, CALL, "r-next")

    assert not report.partial
    assert service.breakers["nmap_scan"].state.value == "closed"
    ends = [line for line in lines(audit) if line.get("event") == "end"]
    starts = [line for line in lines(audit) if line.get("event") == "start"]
    assert [e["request_id"] for e in ends] == [s["request_id"] for s in starts] == ["r-fail", "r-probe", "r-next"]
    assert ends[1]["outcome"] == "unknown" and ends[1]["rule"] == "unexpected_exception"


async def test_probe_whose_progress_stream_fails_still_finishes_and_closes_the_breaker(
    make: Callable[..., Any],
) -> None:
    service, audit, _, clock = make("fail", "ok")
    await open_breaker(service, clock)

    async def broken_progress(done: float, total: float | None, message: str | None) -> None:
        raise anyio.BrokenResourceError

    report = await service.call(NMAP, CALL, "r-probe", broken_progress)

    assert report.hosts  # type: ignore[attr-defined]
    assert service.breakers["nmap_scan"].state.value == "closed"
    assert lines(audit)[-1] | {"event": "end", "outcome": "ok"} == lines(audit)[-1]


async def test_cancelled_probe_frees_the_breaker_and_is_audited(make: Callable[..., Any]) -> None:
    service, audit, registry, clock = make("fail", asyncio.CancelledError(), "ok")
    await open_breaker(service, clock)

    # The job's task ended cancelled; the waiting call is not cancelled, it reports the job.
    cancelled = await service.call(NMAP, CALL, "r-probe")
    await service.call(NMAP, CALL, "r-next")

    assert cancelled.status == "cancelled" and cancelled.scan_id is not None

    outcomes = [line["outcome"] for line in lines(audit) if line.get("event") == "end"]
    assert outcomes == ["execution_error", "cancelled", "ok"]
    assert registry.get_sample_value("appliance_tool_calls_total", {"tool": "nmap_scan", "outcome": "cancelled"}) == 1


async def test_open_breaker_refusal_is_audited_once(make: Callable[..., Any]) -> None:
    service, audit, _, clock = make("fail")
    await open_breaker(service, clock)
    clock.now -= 11  # back inside the recovery window

    with pytest.raises(CircuitOpenError):
        await service.call(NMAP, CALL, "r-open")

    assert lines(audit)[-1]["rule"] == "circuit_open"
    assert lines(audit)[-1]["request_id"] == "r-open"


async def test_unexpected_exception_in_a_check_is_audited_and_counted(
    lab_service: Callable[..., LabService],
) -> None:
    async def broken_resolver(name: str) -> list[str]:
        raise RuntimeError("resolver bug")

    lab = lab_service(resolve=broken_resolver, runner=Scripted(iter(())), privilege_mode="connect")
    service, audit, registry = lab.service, lab.audit, lab.registry

    with pytest.raises(RuntimeError):
        await service.call(NMAP, {"target": "web.lab.internal", "dry_run": True}, "r-bug")

    [line] = lines(audit)
    assert (line["request_id"], line["verdict"], line["rule"]) == ("r-bug", "refused", "unexpected_exception")
    assert registry.get_sample_value("appliance_tool_calls_total", {"tool": "nmap_scan", "outcome": "refused"}) == 1


async def test_call_refused_by_a_full_queue_is_a_refusal_line_not_an_end_without_start(
    lab_service: Callable[..., LabService],
) -> None:
    release, running = asyncio.Event(), asyncio.Event()

    async def held(argv: Any, limits: RunLimits, **kwargs: Any) -> RunResult:
        running.set()
        await release.wait()
        await replay_output(XML, b"", kwargs)
        return RunResult(tuple(argv), 0, XML, b"", False, False, 0.01, pid=0)

    one_slot = {"limits": {"concurrency": {"per_tool": {"nmap_scan": {"running": 1, "queued": 0}}}}}
    lab = lab_service(one_slot, runner=held, privilege_mode="connect")
    service, audit, registry = lab.service, lab.audit, lab.registry
    first = asyncio.create_task(service.call(NMAP, CALL, "r-first"))
    await asyncio.wait_for(running.wait(), 10)

    with pytest.raises(ApplianceError) as refused:
        await service.call(NMAP, CALL, "r-second")
    release.set()
    await first

    assert refused.value.rule == "queue_full"
    second = [line for line in lines(audit) if line["request_id"] == "r-second"]
    assert [(line["verdict"], line["rule"], line.get("event")) for line in second] == [("refused", "queue_full", None)]
    assert registry.get_sample_value("appliance_tool_calls_total", {"tool": "nmap_scan", "outcome": "refused"}) == 1
    assert service.breakers["nmap_scan"].state.value == "closed"
