"""bench/fleet.py and bench/fleet_run.py: the fleet goal's arithmetic, the rows, the policy the
fleet runs under, and one real run of both figures (tiny sizes) in this suite's empty network
namespace: a nats-server, a standalone appliance, a segment appliance and a front of its own,
real nmap against a loopback listener (no timing is asserted: only that it was measured)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from support.bench_results import bench_results
from support.nats import nats_missing

import bench.__main__ as main
from bench import fleet, fleet_run, notes
from bench.lab import REPO


def _stages(created_to_running: float) -> dict[str, Any]:
    medians = {
        "to_created": 3.5,
        "created_to_running": created_to_running,
        "running_to_end": 42.0,
        "end_to_answer": 4.0,
    }
    return {key: {"median": value} for key, value in medians.items()}


def _run(added: float, *, completed: int = fleet.FLEET_BURST) -> dict[str, Any]:
    return {
        "stages_ms": {"fleet": _stages(9.0), "standalone": _stages(1.0)},
        "calls_per_side": 400,
        "standalone_ms": {"median": 50.0, "p99": 70.0},
        "fleet_ms": {"median": 50.0 + added, "p99": 90.0},
        "added_ms_median": added,
        "added_ms_p99": 20.0,
        "burst": {
            "completed": completed,
            "jobs_per_s": 12.5,
            "wall_s": 1.6,
            "segment_limits": {"nmap_scan_running": 2, "global_running": 4},
        },
    }


def _goal(results: dict[str, Any]) -> dict[str, Any]:
    return next(g for g in results["goals"] if g["goal"] == fleet.GOAL_NAME)


def test_the_fleet_goal_is_met_only_when_every_run_adds_at_most_10_ms() -> None:
    met = bench_results({"fleet": {"runs": [_run(8.0), _run(10.0)]}}, (fleet.GOAL,))
    missed = bench_results({"fleet": {"runs": [_run(8.0), _run(10.5)]}}, (fleet.GOAL,))
    assert _goal(met)["met"] is True
    assert _goal(met)["runs"] == [8.0, 10.0]
    assert _goal(missed)["met"] is False
    assert "through the fleet 58.0 (58.0-60.5) ms median" in _goal(missed)["made_of"]
    assert "record to running 9.0 (9.0-9.0) vs 1.0 (1.0-1.0)" in _goal(missed)["made_of"]


def test_a_failed_fleet_run_leaves_the_goal_unmeasured_and_the_row_says_why() -> None:
    results = bench_results(
        {"fleet": {"runs": [_run(8.0), {"error": "nats-server did not start in 20 s"}]}}, (fleet.GOAL,)
    )
    assert _goal(results)["met"] is None
    assert "not measured: run 2: nats-server did not start in 20 s" in fleet.row(results)


def test_the_fleet_row_shows_both_sides_the_difference_and_the_burst() -> None:
    row = fleet.row(bench_results({"fleet": {"runs": [_run(12.0)]}}, (fleet.GOAL,)))
    assert row.startswith("| 9 | fleet: one-port nmap -sT through front + segment vs standalone")
    assert "fleet 62.0 ms median / 90.0 ms p99, standalone 50.0 / 70.0 ms: **+12.0 ms** at the median" in row
    assert f"{fleet.FLEET_BURST} of {fleet.FLEET_BURST} completed, **12.5 jobs/s**" in row
    assert "the segment runs 2 nmap scans at once, 4 scans in all" in row
    assert "to the job's record 3.5 vs 3.5, record to running 9.0 vs 1.0, running to the end 42.0 vs 42.0" in row
    assert row.endswith("| <= 10 ms added (median) | **no** |")


def test_the_store_row_shows_both_reads_and_the_fronts_rss() -> None:
    data = {
        "reads": 200,
        "list_scans_mcp_ms": {"median": 810.0, "p99": 990.0},
        "store_page_ms": {"median": 760.0, "p99": 900.0},
        "scan_mcp_ms": {"median": 61.25, "p99": 80.0, "n": 50},
        "front_rss_bytes": 120_000_000,
        "front_idle_rss_bytes": 96_000_000,
        "fill": {"put_ms_per_job": 2.6},
    }
    row = fleet.store_row(bench_results({"fleet_store": data}))
    assert row.startswith(f"| 10 | fleet: `list_scans` (first page, limit 20) with {main.QUICK.stored_jobs:,} finished")
    assert "through the front (MCP) **810 ms** median / 990 ms p99, store.page() 760 / 900 ms (n=200)" in row
    assert "a one-port scan through the front meanwhile 61.2 ms median (n=50)" in row
    assert "front RSS **120.0 MB** (96.0 MB before the fill)" in row
    assert "not measured: skipped" in fleet.store_row(bench_results({}))


def test_the_benchmark_measures_the_fleet_in_every_timing_run_and_its_store_once() -> None:
    providers = {p.key: p for p in main.extra_figures()}
    assert providers[fleet.FIGURE].timed and providers[fleet.FIGURE].goals == (fleet.GOAL,)
    assert not providers[fleet.STORE_FIGURE].timed


def test_the_fleet_policy_keeps_every_stored_job_and_opens_only_the_listener(tmp_path: Path) -> None:
    policy = yaml.safe_load(fleet_run.write_policy(tmp_path, 10_000).read_text())
    assert policy["scope"]["allow_networks"] == ["127.0.0.1/32"]
    assert policy["retention"]["max_count"] >= 10_000
    assert policy["limits"]["concurrency"]["per_principal"]["stored_jobs"] >= 10_000


def test_the_fronts_share_of_the_fleet_holds_the_burst_and_the_segment_keeps_the_shipped_limits(
    tmp_path: Path,
) -> None:
    path = fleet_run.write_policy(tmp_path, 0)
    front = yaml.safe_load(fleet_run.write_front_policy(path).read_text())
    share = front["limits"]["concurrency"]["per_principal"]
    assert share["running"] + share["queued"] >= fleet.FLEET_BURST
    assert yaml.safe_load(path.read_text())["limits"]["concurrency"]["per_principal"]["queued"] == 6
    assert front["scope"] == yaml.safe_load(path.read_text())["scope"]


def test_a_calls_stages_come_from_its_jobs_events_and_a_job_without_them_is_left_out() -> None:
    job = fleet_run.finished_job(0, 1000.0)  # created 999.8, running at 999.8, completed at 1000.0
    unfinished = fleet_run.finished_job(1, 1000.0)
    unfinished.events = [e for e in unfinished.events if e["state"] != "running"]
    store = {job.scan_id: job, unfinished.scan_id: unfinished}

    class Store:
        def get(self, scan_id: str) -> Any:
            return store.get(scan_id)

    calls = [(job.scan_id, 999.7, 1000.05), (unfinished.scan_id, 998.0, 999.5), ("scan_gone", 1.0, 2.0)]
    parts = fleet_run.stages(calls, Store())  # type: ignore[arg-type]
    assert {key: part["n"] for key, part in parts.items()} == dict.fromkeys(
        ("to_created", "created_to_running", "running_to_end", "end_to_answer"), 1
    )
    assert parts["to_created"]["median"] == pytest.approx(100.0, abs=0.01)
    assert parts["created_to_running"]["median"] == pytest.approx(0.0, abs=0.01)
    assert parts["running_to_end"]["median"] == pytest.approx(200.0, abs=0.01)
    assert parts["end_to_answer"]["median"] == pytest.approx(50.0, abs=0.01)


def test_a_stored_job_is_a_finished_scan_of_the_tokens_principal() -> None:
    job = fleet_run.finished_job(3, 1_800_000_000.0)
    assert job.state == "completed" and job.finished_at == 1_800_000_000.0 - 3
    assert job.principal == fleet_run.PRINCIPAL and job.result is not None


def test_the_notes_describe_figures_9_and_10_only_when_the_run_has_them() -> None:
    sizes = main.QUICK.__dict__
    assert notes._added_notes({}, sizes) == []
    both = notes._added_notes({"fleet": {}, "fleet_store": {}}, sizes)
    assert [n[:3] for n in both] == ["9. ", "10."]


def _loopback_only() -> bool:
    return sorted(name for _, name in socket.if_nameindex()) == ["lo"]


needs_namespace = pytest.mark.skipif(
    not _loopback_only(), reason="runs only inside the unit suite's empty network namespace"
)
needs_fleet = pytest.mark.skipif(
    shutil.which("nmap") is None or not (REPO / ".venv" / "bin" / "appliance").is_file(),
    reason="needs nmap and .venv/bin/appliance",
)


@needs_namespace
@needs_fleet
def test_calls_through_the_fleet_and_the_standalone_appliance_are_measured_in_this_namespace(tmp_path: Path) -> None:
    assert nats_missing() is None, nats_missing()
    data = anyio.run(fleet_run.run, {"folder": str(tmp_path), "calls": 3, "warmup": 1, "burst": 4})
    assert data["failures"] == {"standalone": 0, "fleet": 0}
    # Every timed call's job was found in its store with its running and end times.
    assert {part["n"] for side in ("standalone", "fleet") for part in data["stages_ms"][side].values()} == {3}
    assert data["standalone_ms"]["n"] == data["fleet_ms"]["n"] == 3
    assert isinstance(data["added_ms_median"], float)
    assert data["burst"]["outcomes"] == {"completed": 4}
    assert data["burst"]["jobs_per_s"] > 0
    assert data["burst"]["segment_limits"]["nmap_scan_running"] >= 1
    assert data["unexpected_errors"] == 0


@needs_namespace
@needs_fleet
def test_list_scans_through_the_front_reads_the_jobs_put_into_the_store(tmp_path: Path) -> None:
    assert nats_missing() is None, nats_missing()
    data = anyio.run(fleet_run.store_run, {"folder": str(tmp_path), "jobs": 30, "reads": 2})
    assert data["fill"]["jobs"] == 30
    assert data["scans_per_page"] == [fleet_run.LIST_LIMIT]
    assert data["list_scans_mcp_ms"]["n"] == data["store_page_ms"]["n"] == 2
    assert data["scan_mcp_ms"]["n"] == fleet_run.SCANS_WITH_STORE_MIN  # each one port open (else unexpected)
    assert data["front_rss_bytes"] > 0
    assert data["unexpected_errors"] == 0
