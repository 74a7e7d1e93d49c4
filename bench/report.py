"""The machine the figures came from, the goals, and the Markdown table for the README."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.breakdown import (
    call_made_of,
    cold_text,
    exit_made_of,
    exit_text,
    get_path,
    overhead_text,
    p99_made_of,
    run_values,
    stage_tables,
    startup_made_of,
)
from bench.docker import docker
from bench.notes import measurement_notes
from bench.stats import MB, across_runs
from bench.stats import mb as _mb

REPO = Path(__file__).resolve().parent.parent


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.machine(),
    )
    meminfo = Path("/proc/meminfo").read_text().split()
    memory = int(meminfo[meminfo.index("MemTotal:") + 1]) * 1024
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "memory_bytes": memory,
        "kernel": platform.release(),
        "docker_server": docker("version", "--format", "{{.Server.Version}}").strip(),
        "docker_client": docker("version", "--format", "{{.Client.Version}}").strip(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "git": _git(),
    }


def _git() -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    try:
        head = subprocess.run(
            [git, "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=30
        )
        dirty = subprocess.run(
            [git, "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" (work tree modified)" if dirty.stdout.strip() else "")


@dataclass(frozen=True)
class Goal:
    """One goal: the value at `path` in every run of `figure` must be <= `limit`.

    `samples` is the path to a run's sample count (calls, starts), shown as n; `made_of` says
    what the figure is made of (shown when the goal is not met).
    """

    name: str
    figure: str
    path: tuple[str, ...]
    limit: float
    unit: str
    samples: tuple[str, ...] | None = None
    sample_unit: str = ""
    absolute: bool = False
    made_of: Callable[[dict[str, Any]], str] | None = None


# Every goal of the benchmark (issue 10's and the ones it keeps), in the report's order.
GOALS: tuple[Goal, ...] = (
    Goal("added ms per call at the median", "overhead", ("added_ms_median",), 5.0, "ms",
         ("calls_per_side",), "calls", made_of=call_made_of),
    Goal("p99(MCP) / p99(direct)", "overhead", ("ratio_p99",), 1.3, "x",
         ("calls_per_side",), "calls", made_of=p99_made_of),
    Goal("cold start to the first tools/list answer (median)", "cold_start", ("tools_list_s", "median"), 1.0, "s",
         ("starts",), "starts", made_of=startup_made_of),
    Goal("exit after stdin EOF, no scan running (median)", "cold_start", ("exit_s", "median"), 0.3, "s",
         ("starts",), "starts", made_of=exit_made_of),
    Goal("unexpected errors under a burst", "concurrency", ("unexpected_errors",), 0, "calls",
         ("concurrency",), "calls"),
    Goal("peak RSS under a burst", "concurrency", ("server_peak_rss_bytes",), 150 * MB, "bytes"),
    Goal("docker stop with 4 scans running", "shutdown", ("stop_seconds",), 2.0, "s"),
    Goal("exit code after docker stop", "shutdown", ("exit_code",), 0, "", absolute=True),
    Goal("orphaned scanner processes", "shutdown", ("orphans",), 0, "processes"),
    Goal("image size", "image", ("size_bytes",), 130 * MB, "bytes"),
    Goal("idle RSS", "concurrency", ("server_idle_rss_bytes",), 100 * MB, "bytes"),
    Goal("job store time per synchronous call (median)", "jobs", ("store_calls", "total_ms", "median"), 1.0, "ms",
         ("store_calls", "calls"), "calls"),
)  # fmt: skip


def _flood_goal(figures: dict[str, Any]) -> Goal:
    cap = get_path(figures.get("flood"), ("output_cap_bytes",))
    return Goal("RSS growth under an output flood", "flood", ("rss_growth_bytes",), (cap or 0) + 20 * MB, "bytes")


def evaluate(goal: Goal, figures: dict[str, Any]) -> dict[str, Any]:
    """The goal's value in every run, their median (min-max), and met: True only if every run
    meets it; None when some run could not measure it."""
    agg = run_values(figures, goal.figure, *goal.path)
    runs: list[float | None] = agg["runs"]
    if goal.absolute:
        agg = across_runs([None if v is None else abs(v) for v in runs])
        runs = agg["runs"]
    met = None if agg["median"] is None else all(v is not None and v <= goal.limit for v in runs)
    samples = run_values(figures, goal.figure, *goal.samples)["runs"] if goal.samples else []
    return {
        "goal": goal.name,
        "figure": goal.figure,
        "value": agg["median"],
        "min": agg["min"],
        "max": agg["max"],
        "runs": runs,
        "n_runs": agg["n"],
        "samples_per_run": [None if s is None else int(s) for s in samples],
        "sample_unit": goal.sample_unit,
        "limit": goal.limit,
        "unit": goal.unit,
        "met": met,
        # Always in the JSON; the table shows it for a goal not met.
        "made_of": goal.made_of(figures) if goal.made_of is not None else None,
    }


def goals(figures: dict[str, Any], extra: Sequence[Goal] = ()) -> list[dict[str, Any]]:
    """Each goal (GOALS, the flood's, then `extra` from added figure providers) evaluated."""
    order = [*GOALS[:10], _flood_goal(figures), *GOALS[10:], *extra]
    return [evaluate(goal, figures) for goal in order]


def goal_met(goal_list: list[dict[str, Any]], name: str) -> str:
    """The table's "met" mark for the goal `name` (also used by added providers' rows)."""
    verdicts = [g["met"] for g in goal_list if g["goal"] == name]
    if not verdicts or any(v is None for v in verdicts):
        return "n/a"
    return "yes" if all(verdicts) else "**no**"


def _all_met(goal_list: list[dict[str, Any]], *names: str) -> str:
    marks = [goal_met(goal_list, n) for n in names]
    if "n/a" in marks:
        return "n/a"
    return "yes" if all(m == "yes" for m in marks) else "**no**"


def _jobs_text(d: dict[str, Any]) -> str:
    calls = d["store_calls"]
    steps = calls["steps_ms"]
    return (
        f"**{calls['total_ms']['median']:.2f} ms** median / {calls['total_ms']['p95']:.2f} ms p95 per call "
        f"(CPU time {calls['total_cpu_ms']['median']:.2f} ms), n={calls['calls']} "
        f"(create {steps['create']['median']:.2f}, running {steps['running']['median']:.2f}, "
        f"result fields {steps['result_fields']['median']:.2f}, changes_since {steps['changes_since']['median']:.2f}, "
        f"finish {steps['finish']['median']:.2f} ms); {d['stored_jobs']:,} jobs: `get_scan` "
        f"{d['get_scan_ms']['median']:.1f} / {d['get_scan_ms']['p95']:.1f} ms p95 (one-job store "
        f"{d['get_scan_one_job_store_ms']['median']:.1f} / {d['get_scan_one_job_store_ms']['p95']:.1f}), "
        f"`list_scans` first page {d['list_scans_first_page_ms']['median']:.1f} / "
        f"{d['list_scans_first_page_ms']['p95']:.1f} ms, from a cursor {d['list_scans_cursor_page_ms']['median']:.1f} "
        f"/ {d['list_scans_cursor_page_ms']['p95']:.1f} ms; **{d['bytes_per_job'] / 1000:.1f} kB per job** on disk "
        f"(record {d['record_bytes_per_job'] / 1000:.1f} kB, raw output {d['raw_bytes_per_job'] / 1000:.1f} kB)"
    )


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "?"
    if unit == "bytes":
        return _mb(value)
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "x":
        return f"x{value:.2f}"
    return f"{value:g}{' ' + unit if unit else ''}"


def _n(goal: dict[str, Any]) -> str:
    runs = f"{goal['n_runs']} run{'s' if goal['n_runs'] != 1 else ''}"
    samples = {s for s in goal["samples_per_run"] if s is not None}
    if not samples:
        return runs
    each = str(samples.pop()) if len(samples) == 1 else f"{min(goal['samples_per_run'])}-{max(goal['samples_per_run'])}"
    return f"{runs} x {each} {goal['sample_unit']}"


def goals_table(goal_list: list[dict[str, Any]]) -> list[str]:
    """One line per goal: median of the runs (min-max), n, the limit, met, and for a goal not
    met what the figure is made of."""
    rows = [
        "| goal | median of runs (min-max) | n | limit | met | made of (goals not met) |",
        "|---|---|---|---|---|---|",
    ]
    for goal in goal_list:
        value = _value(goal["value"], goal["unit"])
        if goal["n_runs"] > 1 and goal["value"] is not None:
            value += f" ({_value(goal['min'], goal['unit'])} - {_value(goal['max'], goal['unit'])})"
        met = {True: "yes", False: "**no**", None: "n/a"}[goal["met"]]
        made_of = goal["made_of"] if goal["met"] is False and goal["made_of"] else ""
        rows.append(
            f"| {goal['goal']} | {value} | {_n(goal)} | <= {_value(goal['limit'], goal['unit'])} | {met} | {made_of} |"
        )
    return rows


def timed_runs(parameters: dict[str, Any]) -> str:
    """How a timing figure was taken, for its row: "medians of 3 runs (min-max)" or "1 run"."""
    runs = parameters.get("timing_runs", 1)
    return f"medians of {runs} runs (min-max)" if runs > 1 else "1 run"


def not_measured(data: Any) -> str | None:
    """Why a figure (or one of its runs) has no result, or None when it has one."""
    if not data:
        return "skipped"
    for index, run in enumerate(data.get("runs", [data]) if isinstance(data, dict) else [data]):
        if not isinstance(run, dict):
            return "skipped"
        if "error" in run:
            return run["error"] if "runs" not in data else f"run {index + 1}: {run['error']}"
    return None


def markdown(results: dict[str, Any], extra_rows: Sequence[Callable[[dict[str, Any]], str]] = ()) -> str:
    """The goals, the figures, where the time goes, the machine, the command and what each
    figure measures. `extra_rows` render the rows of added figure providers."""
    f = results["figures"]
    g = results["goals"]
    p = results["parameters"]
    rows = ["| # | figure | result | goal | met |", "|---|---|---|---|---|"]

    def row(number: str, figure: str, render: Any, goal: str, met: str, key: str) -> None:
        data = f.get(key)
        why = not_measured(data)
        text = render(data) if why is None else f"not measured: {why}"
        rows.append(f"| {number} | {figure} | {text} | {goal} | {met} |")

    timed = timed_runs(p)
    row(
        "1",
        f"per-call overhead, one-port nmap -sT (stdio), {timed} of {p['overhead_calls']} calls",
        lambda d: overhead_text(f),
        "<= 5 ms added (median); p99 ratio <= 1.3",
        _all_met(g, "added ms per call at the median", "p99(MCP) / p99(direct)"),
        "overhead",
    )
    row(
        "2",
        f"cold start: `docker run -i` to the first `tools/list` answer, {timed} of {p['cold_start_runs']} starts",
        lambda d: cold_text(f),
        "<= 1.0 s",
        goal_met(g, "cold start to the first tools/list answer (median)"),
        "cold_start",
    )
    row(
        "2b",
        "exit: stdin closed after the `tools/list` answer to `docker run -i` exiting (no scan running)",
        lambda d: exit_text(f),
        "<= 0.3 s",
        goal_met(g, "exit after stdin EOF, no scan running (median)"),
        "cold_start",
    )
    row(
        "3",
        f"{p['concurrency']} concurrent `tools/call` (HTTP, default limits)",
        lambda d: (
            f"{d['completed']} completed, {d['refused_resource_exhausted']} refused `resource_exhausted`, "
            f"**{d['unexpected_errors']} unexpected**; latency p50 {d['latency_ms']['median']:.0f} ms, "
            f"p99 {d['latency_ms']['p99']:.0f} ms; peak RSS **{_mb(d['server_peak_rss_bytes'])}**"
        ),
        "0 unexpected; peak RSS <= 150 MB",
        _all_met(g, "unexpected errors under a burst", "peak RSS under a burst"),
        "concurrency",
    )
    row(
        "4",
        "`docker stop`, 4 scans running",
        lambda d: (
            f"**{d['stop_seconds']:.2f} s**, exit code {d['exit_code']}, {d['orphans']} orphans, "
            f"{d['results_before_exit']}/{d['scans_running']} partial results returned"
        ),
        "<= 2 s, code 0, no orphan",
        _all_met(g, "docker stop with 4 scans running", "exit code after docker stop", "orphaned scanner processes"),
        "shutdown",
    )
    row("5a", "image size", lambda d: f"**{_mb(d['size_bytes'])}**", "<= 130 MB", goal_met(g, "image size"), "image")
    row(
        "5b",
        "idle RSS of the server (HTTP, before any call)",
        lambda d: f"**{_mb(d['server_idle_rss_bytes'])}**",
        "<= 100 MB",
        goal_met(g, "idle RSS"),
        "concurrency",
    )
    row(
        "5c",
        "RSS growth under an output flood (**host mode**)",
        lambda d: (
            f"**+{_mb(d['rss_growth_bytes'])}** while {_mb(d['flood_bytes_written'])} passed a "
            f"{_mb(d['output_cap_bytes'])} cap (result: partial, `{d['partial_reason']}`)"
        ),
        "<= cap + 20 MB",
        goal_met(g, "RSS growth under an output flood"),
        "flood",
    )
    row(
        "6",
        f"job store: bookkeeping of a synchronous call; reads with {p['stored_jobs']:,} stored jobs (HTTP)",
        _jobs_text,
        "<= 1 ms per call (median)",
        goal_met(g, "job store time per synchronous call (median)"),
        "jobs",
    )
    rows += [extra(results) for extra in extra_rows]
    m = results["machine"]
    machine_line = (
        f"Measured {m['date']} ({results['mode']} mode) on {m['nproc']} CPUs ({m['cpu_model']}), "
        f"{m['memory_bytes'] / 2**30:.0f} GiB, Linux {m['kernel']}, Docker {m['docker_server']}; "
        f"load average {m['load_average_at_start'][0]} at start; image {f.get('image', {}).get('id', '?')[:19]}, "
        f"git {m['git']}."
    )
    if f.get("image", {}).get("retagged_during_run"):
        machine_line += f" **Warning: {f['image']['image']} was rebuilt during the run; measure again.**"
    return "\n".join(
        [
            *goals_table(g),
            "",
            f"Command: `{results['command']}`",
            "",
            *rows,
            "",
            *stage_tables(f),
            "",
            machine_line,
            "",
            *measurement_notes(results),
        ]
    )
