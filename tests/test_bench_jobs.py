"""The job store figure's parts that run without Docker: the XML it stores, the harness that
runs inside the image (here on the host, on a tmp dir), its summary and its row in the report.

No timing is asserted (the benchmark reports speed; tests check that it measures what it says).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.jobs.diff import diff_results
from appliance.jobs.sqlite import SqliteJobStore
from appliance.jobs.store import JobFilter
from appliance.parsers.nmap_xml import parse_nmap_xml
from bench import jobs, jobs_harness
from bench.__main__ import QUICK
from bench.report import goals, markdown

XML = [jobs.nmap_xml(4, variant) for variant in (0, 1)]


def _request(tmp_path: Path, **fields: Any) -> dict[str, Any]:
    return {
        "xml": XML,
        "ports": jobs.PORTS,
        "data_dir": str(tmp_path / "data"),
        "audit_path": str(tmp_path / "audit.jsonl"),
        **fields,
    }


@pytest.mark.parametrize("variant", [0, 1])
def test_bench_xml_is_a_complete_four_host_report_of_realistic_size(variant: int) -> None:
    parsed = parse_nmap_xml(XML[variant].encode())

    assert parsed.complete and parsed.error is None
    assert [h.status for h in parsed.hosts] == ["up"] * 4
    assert all(any(p.state == "open" and p.version for p in h.ports) for h in parsed.hosts)
    assert 2_000 <= len(XML[variant].encode()) <= 20_000


def test_bench_xml_rescan_variant_opens_a_port_and_changes_a_version() -> None:
    plan = jobs_harness.plan_for(jobs.TARGETS[0], jobs.PORTS)
    before, after = (jobs_harness.report_for(plan, x.encode(), "r").model_dump(mode="json") for x in XML)

    diff = diff_results("nmap_scan", before, after, scan_id="scan_b", against_scan_id="scan_a")

    kinds = {(entry.kind, entry.host, entry.port) for entry in diff.entries}
    assert ("port_opened", "10.77.0.2", 8443) in kinds
    assert ("version_changed", "10.77.0.3", 80) in kinds


def test_harness_calls_time_every_step_and_store_each_call_as_a_job(tmp_path: Path) -> None:
    answer = jobs_harness.calls(
        _request(tmp_path, mode="calls", calls=5, warmup=1, target=jobs.TARGETS[0], owner="default")
    )

    assert len(answer["per_call"]) == 5
    expected = {*jobs_harness.STEPS, "cpu.total", *(f"store.{m}" for m in jobs_harness.STORE_METHODS)}
    assert all(set(call) == expected for call in answer["per_call"])
    assert all(call["store.previous_completed_id"] > 0 and call["store.put"] > 0 for call in answer["per_call"])
    assert answer["jobs_in_store"] == 6
    store = SqliteJobStore(tmp_path / "data")
    try:
        newest = store.page(JobFilter(principal="default"), 1).jobs[0]
        # The real call path ran: the rescan names its changes, the raw XML is kept, the trail has the job.
        assert newest.state == "completed"
        assert newest.result is not None
        assert newest.result["changes_since_previous"]["entries"]
        assert store.raw(newest.scan_id) == XML[1].encode()  # call 5 (of 0-5): the variants alternate
    finally:
        store.close()
    assert (tmp_path / "audit.jsonl").read_text().count('"event": "job"') == 6


def test_harness_populate_spreads_jobs_over_principals_and_reports_sizes(tmp_path: Path) -> None:
    answer = jobs_harness.populate(
        _request(
            tmp_path,
            mode="populate",
            jobs=12,
            targets=list(jobs.TARGETS[:3]),
            principals=["default", "other"],
            seconds_between_jobs=60.0,
        )
    )

    assert answer["jobs"] == 12
    assert {p: len(ids) for p, ids in answer["ids"].items()} == {"default": 6, "other": 6}
    assert answer["db_bytes"] > 0
    assert answer["wal_bytes"] > 0  # measured before the connection closed: the WAL is still there
    # Jobs 0-5 (each target once per principal) store variant 0, jobs 6-11 variant 1.
    assert answer["raw_bytes"] == 6 * len(XML[0].encode()) + 6 * len(XML[1].encode())
    store = SqliteJobStore(tmp_path / "data")
    try:
        times = [job.created_at for job in store.page(JobFilter(principal="default"), 100).jobs]
    finally:
        store.close()
    # At least a minute apart, newest first, all in the past: the sweep sees weeks of use, not a burst.
    assert times[0] < time.time()
    assert all(newer - older >= 59.9 for newer, older in itertools.pairwise(times))


def test_store_call_total_is_the_sum_of_steps_without_counting_store_methods_twice() -> None:
    per_call = [
        {"create": 0.001, "finish": 0.002, "store.put": 0.0025, "cpu.total": 0.002},
        {"create": 0.003, "finish": 0.001, "store.put": 0.0035, "cpu.total": 0.003},
        {"create": 0.002, "finish": 0.002, "store.put": 0.003, "cpu.total": 0.0025},
    ]

    summary = jobs._store_calls(per_call)

    assert summary["total_ms"]["median"] == pytest.approx(4.0)
    assert summary["steps_ms"]["create"]["median"] == pytest.approx(2.0)
    assert summary["store_methods_ms"]["put"]["median"] == pytest.approx(3.0)
    assert summary["total_cpu_ms"]["median"] == pytest.approx(2.5)


def test_report_has_the_job_store_goal_and_row() -> None:
    per_call = [{"admissible": 0.00001, "create": 0.0002, "running": 0.0001, "result_fields": 0.0001,
                 "changes_since": 0.0003, "finish": 0.0004, "store.put": 0.0005, "cpu.total": 0.0009}] * 3  # fmt: skip
    read = {"n": 3, "median": 20.0, "p95": 30.0, "p99": 30.0, "min": 10.0, "max": 30.0}
    figure = {
        "store_calls": jobs._store_calls(per_call),
        "stored_jobs": 200,
        "get_scan_ms": read,
        "list_scans_first_page_ms": read,
        "list_scans_cursor_page_ms": read,
        "get_scan_one_job_store_ms": read,
        "bytes_per_job": 50_000,
        "record_bytes_per_job": 20_000,
        "raw_bytes_per_job": 10_000,
    }
    machine = {"date": "d", "nproc": 2, "cpu_model": "c", "memory_bytes": 2**31, "kernel": "k",
               "docker_server": "20", "load_average_at_start": [1.0], "git": "g"}  # fmt: skip
    results = {"figures": {"jobs": figure}, "parameters": QUICK.__dict__, "machine": machine, "mode": "quick"}
    results["goals"] = goals(results["figures"])
    results["command"] = "scripts/bench --quick"

    goal = next(g for g in results["goals"] if g["figure"] == "jobs")
    row = next(line for line in markdown(results).splitlines() if line.startswith("| 6 |"))

    assert goal["value"] == pytest.approx(1.11) and goal["met"] is False
    assert "**1.11 ms** median" in row and "(CPU time 0.90 ms)" in row
    assert "**50.0 kB per job**" in row and row.endswith("| **no** |")
