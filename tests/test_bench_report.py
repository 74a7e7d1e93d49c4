"""How a figure counts (bench/stats.py, bench/report.py, bench/breakdown.py): the median of the
runs with their min-max, a goal met only if every run meets it, a run that failed making the
goal unmeasured, and the tables that show it. Fixed numbers in, no timing measured.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.__main__ import FULL, QUICK
from bench.report import GOALS, Goal, evaluate, goals, markdown
from bench.stats import across_runs

ADDED = "added ms per call at the median"
COLD = "cold start to the first tools/list answer (median)"
EXIT = "exit after stdin EOF, no scan running (median)"
MACHINE = {"date": "d", "nproc": 2, "cpu_model": "c", "memory_bytes": 2**31, "kernel": "k",
           "docker_server": "20", "load_average_at_start": [1.0], "git": "g"}  # fmt: skip


def _overhead_run(added: float, p99_ratio: float = 1.1, stages: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "calls_per_side": 400,
        "added_ms_median": added,
        "ratio_p99": p99_ratio,
        "mcp_call_ms": {"median": 50.0 + added, "p99": 80.0},
        "direct_run_ms": {"median": 50.0, "p99": 70.0},
        "breakdown_median_ms": {"runner": 1.0, "protocol_transport_and_validation": added - 1.0},
        "stages": stages or {"reported": False, "calls_matched": 0},
    }


def _cold_run(tools_list: float, exit_s: float = 0.2, stages: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "starts": 10,
        "tools_list_s": {"median": tools_list},
        "initialize_s": {"median": tools_list - 0.01},
        "exit_s": {"median": exit_s},
        "server_shutdown_s": {"median": 0.01},
        "exit_stages": {"until_shutdown_complete_s": {"median": 0.05}, "after_shutdown_complete_s": {"median": 0.1}},
        "bare_python_s": {"median": 0.5},
        "bare_python_first_output_s": {"median": 0.4},
        "bare_python_exit_after_eof_s": {"median": 0.1},
        "python_imports_s": {"median": 0.6},
        "stages": stages or {"reported": False},
    }


def _goal(goal_list: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(g for g in goal_list if g["goal"] == name)


# across_runs


def test_across_runs_gives_every_run_their_median_min_and_max() -> None:
    assert across_runs([4.0, 6.5, 5.0]) == {"runs": [4.0, 6.5, 5.0], "n": 3, "median": 5.0, "min": 4.0, "max": 6.5}


def test_across_runs_with_an_unmeasured_run_has_no_median() -> None:
    agg = across_runs([4.0, None, 5.0])

    assert agg["median"] is None and agg["runs"] == [4.0, None, 5.0] and agg["n"] == 3


def test_across_runs_of_nothing_has_no_median() -> None:
    assert across_runs([])["median"] is None


# goals over runs


def test_a_goal_is_met_only_if_every_run_meets_it() -> None:
    # The median (4.8 ms) meets the 5 ms goal; one run (5.2 ms) does not: not met.
    figures = {"overhead": {"runs": [_overhead_run(4.5), _overhead_run(5.2), _overhead_run(4.8)]}}

    goal = _goal(goals(figures), ADDED)

    assert goal["value"] == 4.8 and (goal["min"], goal["max"]) == (4.5, 5.2)
    assert goal["runs"] == [4.5, 5.2, 4.8]
    assert goal["met"] is False


def test_a_goal_every_run_meets_is_met() -> None:
    figures = {"overhead": {"runs": [_overhead_run(4.5), _overhead_run(4.9), _overhead_run(4.8)]}}

    goal = _goal(goals(figures), ADDED)

    assert goal["met"] is True and goal["n_runs"] == 3 and goal["samples_per_run"] == [400, 400, 400]


def test_a_run_that_could_not_measure_makes_the_goal_unmeasured() -> None:
    figures = {"cold_start": {"runs": [_cold_run(0.9), {"error": "no tools/list answer"}, _cold_run(0.8)]}}

    goal = _goal(goals(figures), COLD)

    assert goal["value"] is None and goal["met"] is None


def test_the_p99_ratio_and_exit_goals_use_their_limits() -> None:
    figures = {
        "overhead": {"runs": [_overhead_run(4.0, p99_ratio=1.29), _overhead_run(4.0, p99_ratio=1.31)]},
        "cold_start": {"runs": [_cold_run(0.9, exit_s=0.29), _cold_run(0.9, exit_s=0.3)]},
    }

    goal_list = goals(figures)

    assert _goal(goal_list, "p99(MCP) / p99(direct)")["met"] is False
    assert _goal(goal_list, EXIT)["met"] is True  # <= 0.3 s, both runs
    assert _goal(goal_list, COLD)["met"] is True


def test_a_figure_measured_once_is_its_own_single_run() -> None:
    goal = _goal(
        goals({"shutdown": {"stop_seconds": 2.5, "exit_code": -15, "orphans": 0}}), "exit code after docker stop"
    )

    assert goal["runs"] == [15.0] and goal["met"] is False  # the absolute value: a signal is not "below 0"


def test_extra_goals_from_an_added_figure_are_evaluated_with_the_others() -> None:
    extra = Goal("host cold start minus a bare SDK server", "host", ("added_s",), 0.15, "s")
    figures = {"host": {"runs": [{"added_s": 0.1}, {"added_s": 0.12}, {"added_s": 0.2}]}}

    goal = _goal(goals(figures, [extra]), extra.name)

    assert goal["value"] == 0.12 and goal["met"] is False


def test_every_goal_names_a_unique_goal() -> None:
    names = [g.name for g in GOALS]

    assert len(names) == len(set(names))


def test_made_of_names_the_start_up_stages_when_the_build_reports_them() -> None:
    stages = {"reported": True, "interpreter": 40.0, "imports": 600.0, "settings_policy": 30.0,
              "transport_ready": 5.0, "first_tools_list": 325.0}  # fmt: skip
    figures = {"cold_start": {"runs": [_cold_run(1.0, stages=stages), _cold_run(1.1, stages=stages)]}}

    made_of = evaluate(next(g for g in GOALS if g.name == COLD), figures)["made_of"]

    assert "interpreter 40 (40-40) + imports 600 (600-600)" in made_of
    assert "docker and the first answers 325" in made_of


def test_made_of_says_when_the_build_reports_no_stages() -> None:
    figures = {"overhead": {"runs": [_overhead_run(7.0)]}, "cold_start": {"runs": [_cold_run(1.2)]}}

    goal_list = goals(figures)

    assert _goal(goal_list, ADDED)["made_of"].startswith("per-call stages not reported by this build")
    assert _goal(goal_list, COLD)["made_of"].startswith("start-up stages not reported by this build")


# the tables


def _results(figures: dict[str, Any], sizes: Any = FULL) -> dict[str, Any]:
    results = {"figures": figures, "parameters": sizes.__dict__, "machine": MACHINE, "mode": "full"}
    results["goals"] = goals(figures)
    results["command"] = "scripts/bench"
    return results


def test_goals_table_shows_the_median_min_max_n_and_what_an_unmet_goal_is_made_of() -> None:
    call_stages = {
        "reported": True,
        "calls_matched": 400,
        "stages_ms": {"checks": 0.5, "store": 0.9, "queue": 0.0, "spawn": 1.5, "scanner": 51.0, "parse": 0.4,
                      "result": 0.3},
        "server_sum_ms": 54.6, "serialise_ms": 0.1, "client_parse_ms": 0.1, "client_validation_ms": 0.2,
        "dispatch_ms": 2.5,
    }  # fmt: skip
    runs = [_overhead_run(a, stages=call_stages) for a in (5.5, 6.0, 5.8)]
    text = markdown(_results({"overhead": {"runs": runs}, "cold_start": {"runs": [_cold_run(0.8)] * 3}}))

    added = next(line for line in text.splitlines() if line.startswith(f"| {ADDED} |"))
    assert "| 5.8 ms (5.5 ms - 6.0 ms) | 3 runs x 400 calls | <= 5.0 ms | **no** |" in added
    assert "dispatch 2.50 (2.50-2.50); checks 0.50" in added
    cold = next(line for line in text.splitlines() if line.startswith(f"| {COLD} |"))
    assert cold.endswith("| yes |  |")  # met: no breakdown in the goal line
    assert "| dispatch | 2.50 (2.50-2.50) |" in text  # the per-call stage table
    assert 'Start-up stages: not reported by this build (no "ready" line' in text
    assert "Command: `scripts/bench`" in text


def test_a_failed_run_shows_as_not_measured_in_the_figures_table() -> None:
    runs = [_overhead_run(4.0), {"error": "the direct-execution harness gave no answer"}]

    text = markdown(_results({"overhead": {"runs": runs}}))

    row = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    assert "not measured: run 2: the direct-execution harness gave no answer" in row


def test_full_mode_makes_three_runs_of_at_least_400_calls_and_10_starts_and_quick_one() -> None:
    assert (FULL.timing_runs, QUICK.timing_runs) == (3, 1)
    assert FULL.overhead_calls >= 400 and FULL.cold_start_runs >= 10


@pytest.mark.parametrize("sizes", [FULL, QUICK])
def test_every_goal_appears_once_in_the_goals_table(sizes: Any) -> None:
    text = markdown(_results({}, sizes))

    for goal in goals({}):
        assert sum(line.startswith(f"| {goal['goal']} |") for line in text.splitlines()) == 1
