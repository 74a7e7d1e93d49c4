"""`scripts/bench --quick` still measures every figure and cleans up after itself.

Speed is what the benchmark reports, not what a test decides: nothing here asserts on a timing
or a size, only that each figure was measured (a number), that no call failed unexpectedly and
that the lab is gone afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support import REPO

from bench.mcp1 import GOAL_NAME as MCP1_GOAL

pytestmark = pytest.mark.integration

# The images scripts/bench measures (it honours the same variables; build-image too).
IMAGES = (
    os.environ.get("IMAGE", "mcp-scanner-appliance:latest"),
    os.environ.get("LAB_IMAGE", "mcp-scanner-lab-target:latest"),
)
# Quick mode takes well under two minutes; a machine busy with other builds takes longer.
BENCH_TIMEOUT_SECONDS = 600
# A first build (base image, wheels, both images) takes a few minutes here.
BUILD_TIMEOUT_SECONDS = 1800
# After SIGTERM the benchmark force-removes its containers and network: seconds.
CLEANUP_TIMEOUT_SECONDS = 120
DOCKER_TIMEOUT_SECONDS = 60
# The timing figures keep one entry per run under "runs" (quick mode: one run).
TIMING = ("overhead", "cold_start", "host", "mcp1_client", "fleet")
FIGURES = {
    "image": ["size_bytes"],
    "overhead": [
        "mcp_call_ms.median",
        "mcp_call_ms.p99",
        "direct_run_ms.median",
        "direct_run_ms.p99",
        "server_run_ms.median",
        "added_ms_median",
        "ratio_median",
        "ratio_p99",
        "stages.sdk.serialise_ms",
        "stages.sdk.client_parse_ms",
        "stages.sdk.client_validation_ms",
    ],
    "cold_start": [
        "tools_list_s.median",
        "initialize_s.median",
        "exit_s.median",
        "bare_python_s.median",
        "bare_python_first_output_s.median",
        "bare_python_exit_after_eof_s.median",
        "python_imports_s.median",
    ],
    # The host comparison without peers (CI has none): the appliance against the bare SDK server.
    "host": [
        "tools_list_minus_bare_s",
        "initialize_minus_bare_s",
        "servers.appliance.cold_start.tools_list_s.median",
        "servers.appliance.cold_start.exit_s.median",
        "servers.appliance.per_call.added_ms_median",
        "servers.bare-sdk.cold_start.tools_list_s.median",
        "servers.bare-sdk.per_call.added_ms_median",
    ],
    "concurrency": [
        "completed",
        "refused_resource_exhausted",
        "unexpected_errors",
        "latency_ms.median",
        "latency_ms.p99",
        "server_peak_rss_bytes",
        "server_idle_rss_bytes",
    ],
    "shutdown": ["stop_seconds", "exit_code", "orphans", "results_before_exit"],
    "flood": ["rss_growth_bytes", "peak_rss_during_bytes", "output_cap_bytes", "flood_bytes_written"],
    "jobs": [
        "store_calls.total_ms.median",
        "store_calls.total_ms.p95",
        "store_calls.steps_ms.create.median",
        "store_calls.store_methods_ms.put.median",
        "get_scan_ms.median",
        "get_scan_ms.p95",
        "list_scans_first_page_ms.median",
        "list_scans_cursor_page_ms.median",
        "get_scan_one_job_store_ms.median",
        "bytes_per_job",
    ],
    "fleet": [
        "standalone_ms.median",
        "fleet_ms.median",
        "fleet_ms.p99",
        "added_ms_median",
        "added_ms_p99",
        "burst.jobs_per_s",
        "burst.wall_s",
    ],
    "fleet_store": ["list_scans_mcp_ms.median", "store_page_ms.median", "front_rss_bytes", "fill.put_ms_per_job"],
}


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=DOCKER_TIMEOUT_SECONDS)


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        data = data[key]
    return data


@pytest.fixture(scope="module")
def images() -> None:
    if any(_docker("image", "inspect", image).returncode != 0 for image in IMAGES):
        subprocess.run([str(REPO / "scripts" / "build-image")], check=True, timeout=BUILD_TIMEOUT_SECONDS)


@pytest.mark.usefixtures("images")
def test_quick_bench_measures_every_figure_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    bench = subprocess.Popen(
        [str(REPO / "scripts" / "bench"), "--quick", "--json", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = bench.communicate(timeout=BENCH_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the benchmark then removes its containers and network.
        bench.terminate()
        stdout, stderr = bench.communicate(timeout=CLEANUP_TIMEOUT_SECONDS)
        pytest.fail(f"scripts/bench --quick ran over {BENCH_TIMEOUT_SECONDS} s:\n{stderr[-3000:]}")
    assert bench.returncode == 0, f"stdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}"
    results = json.loads(out.read_text())
    figures = results["figures"]

    assert results["mode"] == "quick"
    for figure in TIMING:
        assert len(figures[figure]["runs"]) == results["parameters"]["timing_runs"] == 1
    # The 1.x client figure is measured only where scripts/setup-bench-mcp1 made .venv-mcp1.
    mcp1 = figures["mcp1_client"]["runs"][0]
    expected = dict(FIGURES)
    if (REPO / ".venv-mcp1" / "bin" / "python").exists():
        expected["mcp1_client"] = ["host.added_ms_median", "container.added_ms_median"]
    else:
        assert mcp1["skipped"] == "not measured: run scripts/setup-bench-mcp1"
    assert figures["host"]["runs"][0]["order"] == ["appliance", "bare-sdk"]
    for figure, keys in expected.items():
        data = figures[figure]["runs"][0] if figure in TIMING else figures[figure]
        assert "error" not in data, f"{figure}: {data['error']}"
        for key in keys:
            value = _lookup(data, key)
            assert isinstance(value, int | float) and not isinstance(value, bool), f"{figure}.{key} = {value!r}"
    # Every goal has its figure, but the 1.x client's where .venv-mcp1 is missing: not measured (n/a).
    unmeasured = set() if "mcp1_client" in expected else {MCP1_GOAL}
    for goal in results["goals"]:
        if goal["goal"] in unmeasured:
            assert (goal["value"], goal["met"]) == (None, None), goal
        else:
            assert isinstance(goal["value"], int | float), goal
    assert results["unexpected_errors"] == 0
    assert figures["concurrency"]["unexpected_by_kind"] == {}
    assert figures["shutdown"]["call_outcomes"] == ["partial:shutdown"] * 4
    assert figures["flood"]["partial_reason"] == "output_cap"
    # Every stored job was still there when the appliance answered the reads (no sweep ate them).
    assert figures["jobs"]["jobs_seen_by_appliance"] == results["parameters"]["stored_jobs"]
    # Every call of the fleet's burst completed; a full page came back over the stored jobs.
    assert figures["fleet"]["runs"][0]["burst"]["outcomes"] == {"completed": 20}
    assert figures["fleet_store"]["fill"]["jobs"] == results["parameters"]["stored_jobs"]
    assert figures["fleet_store"]["scans_per_page"] == [20]
    # The goals table, the figures table and the description of the machine it ran on.
    assert stdout.startswith("| goal | median of runs (min-max) |")
    assert "\n| # | figure |" in stdout
    assert f"on {results['machine']['nproc']} CPUs" in stdout

    run_id = figures["lab"]["run_id"]
    left = _docker("ps", "--all", "--quiet", "--filter", f"label=mcp-scanner-appliance.bench={run_id}")
    assert left.stdout.strip() == ""
    assert _docker("network", "inspect", figures["lab"]["network_name"]).returncode != 0
    volumes = _docker("volume", "ls", "--quiet", "--filter", f"label=mcp-scanner-appliance.bench={run_id}")
    assert volumes.stdout.strip() == ""
