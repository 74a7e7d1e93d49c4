"""Scans as jobs through ScanService: the wait, get_scan, cancel, who sees what, what is a job.

The scanner is a gated fake (tests/support/runners.GatedRunner): the test decides when the
"scan" ends, so timing is never guessed. Real nmap jobs run in tests/integration/test_jobs*.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import GatedRunner, LabService, eventually

from appliance.errors import ApplianceError, ExecutionError, NotFoundError, ValidationError
from appliance.jobs.manager import JobManager
from appliance.jobs.queries import CancelScanRequest, DiffScansRequest, GetScanRequest, JobQueries, ListScansRequest
from appliance.jobs.sqlite import SqliteJobStore
from appliance.jobs.store import JobFilter
from appliance.tools import TOOLS

pytestmark = pytest.mark.anyio

NMAP = TOOLS["nmap_scan"]
XML = (Path(__file__).resolve().parents[1] / "fixtures" / "nmap" / "connect.xml").read_bytes()
GOBUSTER_DIR = (Path(__file__).resolve().parents[1] / "fixtures" / "gobuster" / "dir.txt").read_bytes()
CALL = {"target": "10.20.0.5", "ports": "18081-18083"}


@pytest.fixture
def gated(lab_service: Callable[..., LabService]) -> tuple[LabService, GatedRunner, JobQueries]:
    runner = GatedRunner(XML)
    lab = lab_service(runner=runner, privilege_mode="connect")
    service = lab.service
    queries = JobQueries(service.jobs, lambda: service.store.current.policy)
    return lab, runner, queries


async def started_scan(lab: LabService, runner: GatedRunner) -> str:
    """A scan call that returns at once (wait 0) while the gated "scanner" runs: its scan_id."""
    report = await lab.service.call(NMAP, {**CALL, "wait_seconds": 0}, "r1", principal="alice")
    assert report.scan_id is not None
    await asyncio.wait_for(runner.started.wait(), 5)
    return report.scan_id


async def test_a_scan_longer_than_its_wait_returns_running_with_a_scan_id_and_goes_on(
    gated: tuple[LabService, GatedRunner, JobQueries],
) -> None:
    lab, runner, queries = gated

    report = await lab.service.call(NMAP, {**CALL, "wait_seconds": 0}, "r1", principal="alice")

    assert report.status == "running"
    assert report.scan_id is not None
    assert report.resource_uri == f"scan://{report.scan_id}"
    assert report.retry_after_seconds is not None
    runner.gate.set()
    job = await queries.get_scan(GetScanRequest(scan_id=report.scan_id, wait_seconds=10), "alice")
    assert job.state == "completed"
    assert job.result is not None
    assert [p["port"] for p in job.result["hosts"][0]["ports"] if p["state"] == "open"] == [18081, 18082]


async def test_a_scan_finishing_within_its_wait_returns_its_full_result(
    gated: tuple[LabService, GatedRunner, JobQueries],
) -> None:
    lab, runner, _ = gated
    runner.gate.set()

    report = await lab.service.call(NMAP, {**CALL, "wait_seconds": 10}, "r1", principal="alice")

    assert report.status == "completed"
    assert report.hosts  # type: ignore[attr-defined]
    assert report.progress == 100.0
    assert report.retry_after_seconds is None
    end = [line for line in lab.audit_lines() if line.get("event") == "end"]
    assert end[0]["scan_id"] == report.scan_id
    assert end[0]["state"] == "completed"


async def test_cancelling_the_call_before_it_returned_the_scan_id_cancels_the_job(
    gated: tuple[LabService, GatedRunner, JobQueries],
) -> None:
    lab, runner, _ = gated
    call = asyncio.create_task(lab.service.call(NMAP, {**CALL, "wait_seconds": 30}, "r1", principal="alice"))
    await asyncio.wait_for(runner.started.wait(), 5)

    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    [job] = lab.service.jobs.page(JobFilter(principal="alice"), 10, None).jobs
    assert job.state == "cancelled"
    assert runner.cancelled == 1


async def test_cancelling_a_get_scan_wait_never_cancels_the_job(
    gated: tuple[LabService, GatedRunner, JobQueries],
) -> None:
    lab, runner, queries = gated
    report = await lab.service.call(NMAP, {**CALL, "wait_seconds": 0}, "r1", principal="alice")
    assert report.scan_id is not None
    waiting = asyncio.create_task(queries.get_scan(GetScanRequest(scan_id=report.scan_id, wait_seconds=30), "alice"))
    await asyncio.sleep(0)

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    runner.gate.set()

    job = await queries.get_scan(GetScanRequest(scan_id=report.scan_id, wait_seconds=10), "alice")
    assert job.state == "completed"
    assert runner.cancelled == 0


async def test_cancel_scan_stops_the_scanner_and_keeps_the_job_as_cancelled(
    gated: tuple[LabService, GatedRunner, JobQueries],
) -> None:
    lab, runner, queries = gated
    scan_id = await started_scan(lab, runner)

    job, stopped = await queries.cancel_scan(CancelScanRequest(scan_id=scan_id), "alice")

    assert stopped
    assert job.state == "cancelled"
    assert runner.cancelled == 1
    again, stopped_again = await queries.cancel_scan(CancelScanRequest(scan_id=scan_id), "alice")
    assert not stopped_again
    assert again.state == "cancelled"
    end = [line for line in lab.audit_lines() if line.get("event") == "end"]
    assert end[-1]["outcome"] == "cancelled"


async def test_another_principal_can_neither_see_read_list_diff_nor_cancel_a_scan(
    gated: tuple[LabService, GatedRunner, JobQueries],
) -> None:
    lab, runner, queries = gated
    report = await lab.service.call(NMAP, {**CALL, "wait_seconds": 0}, "r1", principal="alice")
    scan_id = report.scan_id
    assert scan_id is not None

    for attempt in (
        queries.get_scan(GetScanRequest(scan_id=scan_id), "bob"),
        queries.cancel_scan(CancelScanRequest(scan_id=scan_id), "bob"),
    ):
        with pytest.raises(NotFoundError) as refused:
            await attempt
        assert refused.value.rule == "scan_not_found"
    with pytest.raises(NotFoundError):
        queries.diff_scans(DiffScansRequest(scan_id=scan_id), "bob")
    assert queries.list_scans(ListScansRequest(), "bob").scans == []
    assert [s.scan_id for s in queries.list_scans(ListScansRequest(), "alice").scans] == [scan_id]
    assert runner.cancelled == 0
    runner.gate.set()


async def test_a_refusal_and_a_dry_run_are_audited_but_are_not_jobs(
    gated: tuple[LabService, GatedRunner, JobQueries],
) -> None:
    lab, runner, queries = gated

    with pytest.raises(ValidationError):
        await lab.service.call(NMAP, {"target": "169.254.169.254"}, "r1", principal="alice")
    dry = await lab.service.call(NMAP, {**CALL, "dry_run": True}, "r2", principal="alice")

    assert dry.status == "dry_run"
    assert dry.scan_id is None
    assert queries.list_scans(ListScansRequest(), "alice").scans == []
    assert runner.calls == []
    assert [line.get("verdict") for line in lab.audit_lines()] == ["refused", "allowed"]


async def test_a_wait_over_the_policy_bound_is_refused_with_its_rule(
    gated: tuple[LabService, GatedRunner, JobQueries],
) -> None:
    lab, runner, _ = gated

    with pytest.raises(ValidationError) as refused:
        await lab.service.call(NMAP, {**CALL, "wait_seconds": 121}, "r1", principal="alice")

    assert refused.value.rule == "wait_out_of_bounds"
    assert runner.calls == []


async def test_a_full_queue_refuses_before_a_job_exists(lab_service: Callable[..., LabService]) -> None:
    runner = GatedRunner(XML)
    limits = {"limits": {"concurrency": {"per_tool": {"nmap_scan": {"running": 1, "queued": 0}}}}}
    lab = lab_service(limits, runner=runner, privilege_mode="connect")

    first = await lab.service.call(NMAP, {**CALL, "wait_seconds": 0}, "r1", principal="alice")
    with pytest.raises(ApplianceError) as refused:
        await lab.service.call(NMAP, {**CALL, "wait_seconds": 0}, "r2", principal="alice")

    assert refused.value.rule == "queue_full"
    jobs = lab.service.jobs.page(JobFilter(), 10, None).jobs
    assert [j.scan_id for j in jobs] == [first.scan_id]
    runner.gate.set()


async def test_a_store_that_refuses_writes_refuses_new_scans_with_its_rule(
    gated: tuple[LabService, GatedRunner, JobQueries],
) -> None:
    lab, runner, _ = gated
    runner.gate.set()
    done = await lab.service.call(NMAP, {**CALL, "wait_seconds": 10}, "r1", principal="alice")
    store: Any = lab.service.jobs.store
    store._db.execute("PRAGMA query_only = ON")  # as a read-only file or a failing disk would

    with pytest.raises(ApplianceError) as refused:
        await lab.service.call(NMAP, {**CALL, "wait_seconds": 10}, "r2", principal="alice")

    assert refused.value.rule == "store_unwritable"
    assert lab.audit_lines()[-1]["rule"] == "store_unwritable"
    assert len(runner.calls) == 1  # the refused call started nothing
    assert lab.service.jobs.visible(done.scan_id or "", "alice").state == "completed"  # nothing lost


async def test_a_stop_of_the_appliance_ends_a_running_job_interrupted(
    gated: tuple[LabService, GatedRunner, JobQueries],
) -> None:
    lab, runner, queries = gated
    scan_id = await started_scan(lab, runner)

    lab.service.stop_scans.set()
    job = await queries.get_scan(GetScanRequest(scan_id=scan_id, wait_seconds=10), "alice")

    assert job.state == "interrupted"
    assert job.result is not None  # what the scanner had written is kept


async def test_jobs_left_running_by_a_crash_are_interrupted_at_the_next_start(
    gated: tuple[LabService, GatedRunner, JobQueries],
) -> None:
    lab, _, _ = gated
    await lab.service.call(NMAP, {**CALL, "wait_seconds": 0}, "r1", principal="alice")
    [left] = lab.service.jobs.store.unfinished()

    recovered = lab.service.jobs.recover()

    assert [j.scan_id for j in recovered] == [left.scan_id]
    stored = lab.service.jobs.store.get(left.scan_id)
    assert stored is not None
    assert stored.state == "interrupted"
    assert lab.audit_lines()[-1] | {"event": "job", "state": "interrupted"} == lab.audit_lines()[-1]


async def test_a_rescan_names_its_changes_and_diff_scans_defaults_to_the_previous_scan(
    gated: tuple[LabService, GatedRunner, JobQueries],
) -> None:
    lab, runner, queries = gated
    runner.gate.set()
    first = await lab.service.call(NMAP, {**CALL, "wait_seconds": 10}, "r1", principal="alice")
    # The second "scan" finds 18083 open too.
    runner.stdout = XML.replace(b'portid="18083"><state state="closed"', b'portid="18083"><state state="open"')

    second = await lab.service.call(NMAP, {**CALL, "wait_seconds": 10}, "r2", principal="alice")

    assert first.changes_since_previous is None
    changes = second.changes_since_previous
    assert changes is not None
    assert changes["previous_scan_id"] == first.scan_id
    assert [(e["kind"], e["port"]) for e in changes["entries"]] == [("port_opened", 18083)]
    diff = queries.diff_scans(DiffScansRequest(scan_id=second.scan_id or ""), "alice")
    assert diff.against_scan_id == first.scan_id
    assert [(e.kind, e.port) for e in diff.entries] == [("port_opened", 18083)]


async def test_a_rescans_previous_scan_is_looked_up_while_its_scanner_runs_not_after(
    gated: tuple[LabService, GatedRunner, JobQueries], monkeypatch: pytest.MonkeyPatch
) -> None:
    # README "Diffs": the previous scan is the newest completed one when the rescan starts (a
    # fleet store's lookup is round trips: made while the scanner runs, off the way to the answer).
    lab, runner, queries = gated
    runner.gate.set()
    first = await lab.service.call(NMAP, {**CALL, "wait_seconds": 10}, "r1", principal="alice")
    runner.gate.clear()
    runner.started.clear()
    store = lab.service.jobs.store
    real = store.previous_completed_id
    scanner_done_at_lookup: list[bool] = []

    def spy(tool: str, target: str, principal: str, before: str) -> str | None:
        scanner_done_at_lookup.append(runner.gate.is_set())
        return real(tool, target, principal, before)

    monkeypatch.setattr(store, "previous_completed_id", spy)
    second = await started_scan(lab, runner)
    await eventually(lambda: scanner_done_at_lookup, within=5)
    assert scanner_done_at_lookup == [False]
    runner.gate.set()
    job = await queries.get_scan(GetScanRequest(scan_id=second, wait_seconds=10), "alice")
    assert job.state == "completed"
    assert job.result is not None and job.result["changes_since_previous"]["previous_scan_id"] == first.scan_id
    assert scanner_done_at_lookup == [False]  # not looked up again at the end


async def test_a_rescan_whose_store_cannot_say_the_previous_scan_still_completes_without_its_changes(
    gated: tuple[LabService, GatedRunner, JobQueries], monkeypatch: pytest.MonkeyPatch
) -> None:
    lab, runner, _ = gated
    runner.gate.set()
    await lab.service.call(NMAP, {**CALL, "wait_seconds": 10}, "r1", principal="alice")
    lookups: list[str] = []

    def unreachable(tool: str, target: str, principal: str, before: str) -> str | None:
        lookups.append(before)
        raise ExecutionError("NATS is electing a leader", rule="store_unreachable")

    monkeypatch.setattr(lab.service.jobs.store, "previous_completed_id", unreachable)
    second = await lab.service.call(NMAP, {**CALL, "wait_seconds": 10}, "r2", principal="alice")
    assert second.status == "completed"
    assert second.changes_since_previous is None
    assert lookups == [second.scan_id, second.scan_id]  # at the start, and again at the end
    stored = lab.service.jobs.store.get(second.scan_id or "")
    assert stored is not None and stored.state == "completed"


async def test_a_rescan_after_a_restart_still_names_its_changes_since_the_scan_before(
    gated: tuple[LabService, GatedRunner, JobQueries], tmp_path: Path
) -> None:
    lab, runner, _ = gated
    runner.gate.set()
    lab.service.jobs = JobManager(SqliteJobStore(tmp_path / "data"), lab.service.audit)
    first = await lab.service.call(NMAP, {**CALL, "wait_seconds": 10}, "r1", principal="alice")
    lab.service.jobs.store.close()
    # The appliance restarted on the same data directory: only the store file knows the first scan.
    lab.service.jobs = JobManager(SqliteJobStore(tmp_path / "data"), lab.service.audit)
    runner.stdout = XML.replace(b'portid="18083"><state state="closed"', b'portid="18083"><state state="open"')

    second = await lab.service.call(NMAP, {**CALL, "wait_seconds": 10}, "r2", principal="alice")

    changes = second.changes_since_previous
    assert changes is not None
    assert changes["previous_scan_id"] == first.scan_id
    assert [(e["kind"], e["port"]) for e in changes["entries"]] == [("port_opened", 18083)]


async def test_a_running_job_shows_the_findings_so_far_and_keeps_them(
    lab_service: Callable[..., LabService],
) -> None:
    # gobuster reports one line per finding: two are out before the "scan" is held at the gate.
    lines = GOBUSTER_DIR.splitlines()
    runner = GatedRunner(b"\n".join(lines[4:]) + b"\n", early=b"\n".join(lines[:4]) + b"\n")
    lab = lab_service(runner=runner, privilege_mode="connect", resolves={"web.lab.internal": ["10.20.0.5"]})
    arguments = {"mode": "dir", "target": "http://web.lab.internal:8080/", "wait_seconds": 0}

    report = await lab.service.call(TOOLS["gobuster_scan"], arguments, "r1", principal="alice")
    await asyncio.wait_for(runner.started.wait(), 5)
    scan_id = report.scan_id or ""

    def recorded() -> list[str]:
        job = lab.service.jobs.store.get(scan_id)
        return [] if job is None or job.result is None else [f["value"] for f in job.result["findings"]]

    # The second finding came within a second of the first: it is written about a second later,
    # although the "scanner" says nothing more (recorded, so a crash now keeps both).
    await eventually(lambda: recorded() == ["/admin", "/images"], 5)
    running = lab.service.jobs.visible(scan_id, "alice")
    assert running.state == "running"
    assert running.result is not None
    assert running.result["mode"] == "dir"
    runner.gate.set()
