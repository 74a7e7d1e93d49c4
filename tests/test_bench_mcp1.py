"""bench/mcp1.py: the 1.x client figure without .venv-mcp1 (a message, not an error), the
alternation and arithmetic of its pairs, and its row. Fixed numbers; nothing is started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from support.bench_results import bench_results

import bench.__main__ as main
from bench import mcp1
from bench.mcp1 import Mcp1Params


def test_without_the_1x_venv_the_figure_says_how_to_make_it_and_is_no_failure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(mcp1, "PYTHON", tmp_path / "absent" / "python")
    data = anyio.run(mcp1.measure, object(), Mcp1Params(5, 1), 0)  # the lab is not touched
    assert data == {"skipped": "not measured: run scripts/setup-bench-mcp1"}
    assert not main._failed({"runs": [data]})
    row = mcp1.row(bench_results({"mcp1_client": {"runs": [data]}}, (mcp1.GOAL,)))
    assert "| not measured: run scripts/setup-bench-mcp1 | <= 10 ms added (container, median) | n/a |" in row


class _Client:
    """Answers batches like bench/mcp1_client.py, from fixed call times; records the order."""

    def __init__(self, seconds: list[float], order: list[str]) -> None:
        self.seconds = iter(seconds)
        self.order = order

    def batch(self, runs: int) -> tuple[list[float], int]:
        self.order.append(f"mcp x{runs}")
        return [next(self.seconds) for _ in range(runs)], 0


def test_pairs_alternate_direct_and_1x_calls_and_subtract_the_medians() -> None:
    order: list[str] = []
    direct = iter([0.030, 0.030, 0.031, 0.032])

    def run_direct() -> tuple[float, bool]:
        order.append("direct")
        return next(direct), True

    client: Any = _Client([0.050, 0.055, 0.060, 0.058], order)
    data = mcp1._pairs(client, run_direct, Mcp1Params(3, 1), {"argv": ["nmap"], "protocol_version": "v"})
    assert order == ["mcp x1", "direct", "direct", "mcp x1", "direct", "mcp x1", "direct", "mcp x1"]
    assert data["calls_per_side"] == 3
    assert data["mcp_call_ms"]["median"] == 58.0
    assert data["direct_run_ms"]["median"] == 31.0
    assert data["added_ms_median"] == 27.0
    assert data["unexpected_errors"] == 0


def test_the_row_shows_the_host_and_the_container_figures() -> None:
    def side(mcp: float, direct: float) -> dict[str, Any]:
        return {
            "mcp_call_ms": {"median": mcp, "p99": mcp + 10},
            "direct_run_ms": {"median": direct, "p99": direct + 5},
            "added_ms_median": round(mcp - direct, 3),
        }

    run = {"host": side(62.0, 35.0), "container": side(70.0, 33.4)}
    row = mcp1.row(bench_results({"mcp1_client": {"runs": [run]}}, (mcp1.GOAL,)))
    assert row.startswith("| 8 | per-call overhead with the MCP 1.x Python client (mcp 1.30.0)")
    assert "host: MCP 62.0 ms median / 72.0 ms p99, direct 35.0 / 40.0 ms, **+27.0 ms** at the median" in row
    assert "container: MCP 70.0 ms median / 80.0 ms p99, direct 33.4 / 38.4 ms, **+36.6 ms** at the median" in row
    assert row.endswith("| <= 10 ms added (container, median) | **no** |")


def test_the_1x_goal_is_met_only_when_every_runs_container_figure_is_within_10_ms() -> None:
    def run(added: float) -> dict[str, Any]:
        return {"host": {"added_ms_median": 1.0}, "container": {"added_ms_median": added, "calls_per_side": 400}}

    def verdict(*added: float) -> dict[str, Any]:
        results = bench_results({"mcp1_client": {"runs": [run(a) for a in added]}}, (mcp1.GOAL,))
        [goal] = [g for g in results["goals"] if g["goal"] == mcp1.GOAL_NAME]
        return goal

    assert verdict(9.0, 9.9, 10.0)["met"] is True
    met = verdict(9.0, 10.1, 8.0)
    assert met["met"] is False
    assert (met["value"], met["samples_per_run"]) == (9.0, [400, 400, 400])


def test_a_failed_run_of_the_1x_figure_is_shown_as_not_measured() -> None:
    row = mcp1.row(bench_results({"mcp1_client": {"runs": [{"error": "the 1.x client did not start"}]}}))
    assert "| not measured: run 1: the 1.x client did not start |" in row
