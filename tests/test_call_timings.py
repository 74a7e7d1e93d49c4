"""The "call timings" log line: one per admitted call, after its job's final state is stored."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import LOOPBACK_POLICY, GatedRunner, SpyRunner, tcp_listener, write_policy

from appliance.audit import AuditSink
from appliance.config import Settings
from appliance.errors import ApplianceError, ValidationError
from appliance.jobs.manager import JobManager
from appliance.jobs.sqlite import SqliteJobStore
from appliance.policy.netinfo import NetworkFacts
from appliance.policy.store import PolicyStore
from appliance.service import ScanService
from appliance.timings import STAGES
from appliance.tools import TOOLS
from appliance.tools.nmap import NmapRequest

pytestmark = pytest.mark.anyio


class TimingLines(logging.Handler):
    """Collects "call timings" records, with the job's state in the store when each was written."""

    def __init__(self, store: SqliteJobStore) -> None:
        super().__init__()
        self.store = store
        self.lines: list[tuple[dict[str, Any], str | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() != "call timings":
            return
        fields = {name: getattr(record, name, None) for name in ("request_id", "scan_id", "tool", "outcome")}
        fields["timings_ms"] = getattr(record, "timings_ms", None)
        job = self.store.get(str(fields["scan_id"]))
        self.lines.append((fields, None if job is None else job.state))


@pytest.fixture
def store(tmp_path: Path) -> SqliteJobStore:
    return SqliteJobStore(tmp_path / "data")


@pytest.fixture
def timing_lines(store: SqliteJobStore) -> Iterator[TimingLines]:
    handler = TimingLines(store)
    logger = logging.getLogger("appliance.timings")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def make_service(tmp_path: Path, store: SqliteJobStore, runner: Any = None) -> ScanService:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    audit = AuditSink(tmp_path / "audit.jsonl")
    kwargs: dict[str, Any] = {} if runner is None else {"runner": runner}
    return ScanService(
        Settings(policy_path=policy, privilege_mode="connect"),  # type: ignore[arg-type]
        PolicyStore(policy, facts=NetworkFacts),
        audit,
        jobs=JobManager(store, audit),
        **kwargs,
    )


async def test_real_nmap_call_writes_one_timings_line_with_every_stage(
    tmp_path: Path, store: SqliteJobStore, timing_lines: TimingLines
) -> None:
    service = make_service(tmp_path, store)
    with tcp_listener() as port:
        report = await service.call(TOOLS["nmap_scan"], {"target": "127.0.0.1", "ports": str(port)}, "rid-timed")
    assert report.status == "completed"
    [(line, state_when_written)] = timing_lines.lines
    # Written once the final state is in the store, not before.
    assert state_when_written == "completed"
    assert {k: line[k] for k in ("request_id", "scan_id", "tool", "outcome")} == {
        "request_id": "rid-timed",
        "scan_id": report.scan_id,
        "tool": "nmap_scan",
        "outcome": "ok",
    }
    timings = line["timings_ms"]
    assert list(timings) == list(STAGES)
    assert all(isinstance(value, float) and value >= 0.0 for value in timings.values())
    # A real call does real work in every stage but the queue (no other call holds a slot).
    for stage in ("checks", "store", "spawn", "scanner", "parse", "result"):
        assert timings[stage] > 0.0, stage
    # Spawn and scanner are parts of the run the result reports (parsing meanwhile is apart).
    assert (timings["spawn"] + timings["scanner"]) / 1000 <= report.duration_seconds + 0.001


async def test_dry_runs_and_refusals_write_no_timings_line(
    tmp_path: Path, store: SqliteJobStore, timing_lines: TimingLines
) -> None:
    service = make_service(tmp_path, store, runner=SpyRunner())
    await service.call(TOOLS["nmap_scan"], {"target": "127.0.0.1", "dry_run": True}, "rid-dry")
    with pytest.raises(ValidationError):
        await service.call(TOOLS["nmap_scan"], {"target": "169.254.169.254"}, "rid-refused")
    assert timing_lines.lines == []


async def test_cancelled_call_writes_its_timings_line_with_the_cancel(
    tmp_path: Path, store: SqliteJobStore, timing_lines: TimingLines
) -> None:
    runner = GatedRunner()
    service = make_service(tmp_path, store, runner=runner)
    call = asyncio.create_task(service.call(TOOLS["nmap_scan"], NmapRequest(target="127.0.0.1"), "rid-cancel"))
    await runner.started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    [(line, state_when_written)] = timing_lines.lines
    assert (line["outcome"], state_when_written) == ("cancelled", "cancelled")
    assert line["timings_ms"]["store"] > 0.0  # create and running were written


async def test_a_call_refused_while_queued_writes_its_timings_line_with_the_wait(
    tmp_path: Path, store: SqliteJobStore, timing_lines: TimingLines
) -> None:
    runner = GatedRunner()
    one_slot = {"limits": {"concurrency": {"per_tool": {"nmap_scan": {"running": 1, "queued": 1}}}}}
    policy = write_policy(tmp_path, LOOPBACK_POLICY, one_slot)
    audit = AuditSink(tmp_path / "audit.jsonl")
    service = ScanService(
        Settings(policy_path=policy, privilege_mode="connect"),  # type: ignore[arg-type]
        PolicyStore(policy, facts=NetworkFacts),
        audit,
        jobs=JobManager(store, audit),
        runner=runner,
    )
    first = asyncio.create_task(service.call(TOOLS["nmap_scan"], NmapRequest(target="127.0.0.1"), "rid-first"))
    await runner.started.wait()
    # Its budget runs out while it waits for the slot the first call holds.
    with pytest.raises(ApplianceError) as refused:
        await service.call(TOOLS["nmap_scan"], NmapRequest(target="127.0.0.1", timeout_seconds=1), "rid-queued")
    assert refused.value.rule == "queue_wait_timeout"
    [(line, state_when_written)] = [entry for entry in timing_lines.lines if entry[0]["request_id"] == "rid-queued"]
    assert (line["outcome"], state_when_written) == ("resource_exhausted", "failed")
    assert line["timings_ms"]["queue"] > 0.0  # the wait that ended in the refusal is counted
    assert line["timings_ms"]["spawn"] == line["timings_ms"]["scanner"] == 0.0  # nothing ran
    runner.gate.set()
    await first
