"""The machine the figures came from, the goals, and the Markdown table for the README."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.docker import docker

MB = 1_000_000  # every size in the report is in decimal megabytes, as `docker images` prints them
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


def _signed(value: float | None) -> str:
    return "?" if value is None else f"{value:+.1f}"


def _mb(value: float) -> str:
    return f"{value / MB:.1f} MB"


def goals(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal with the measured value, or None when the figure could not be measured."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, unit: str, figure: str) -> None:
        met = None if value is None else value <= limit
        out.append({"goal": name, "figure": figure, "value": value, "limit": limit, "unit": unit, "met": met})

    def get(figure: str, *path: str) -> Any:
        data = figures.get(figure) or {}
        for key in path:
            data = data.get(key) if isinstance(data, dict) else None
        return data

    add("added ms per call at the median", get("overhead", "added_ms_median"), 5.0, "ms", "overhead")
    add("cold start to initialize (median)", get("cold_start", "initialize_s", "median"), 1.0, "s", "cold_start")
    add("unexpected errors under a burst", get("concurrency", "unexpected_errors"), 0, "calls", "concurrency")
    peak = get("concurrency", "server_peak_rss_bytes")
    add("peak RSS under a burst", peak, 150 * MB, "bytes", "concurrency")
    add("docker stop with 4 scans running", get("shutdown", "stop_seconds"), 2.0, "s", "shutdown")
    code = get("shutdown", "exit_code")
    add("exit code after docker stop", None if code is None else abs(code), 0, "", "shutdown")
    add("orphaned scanner processes", get("shutdown", "orphans"), 0, "processes", "shutdown")
    add("image size", get("image", "size_bytes"), 130 * MB, "bytes", "image")
    add("idle RSS", get("concurrency", "server_idle_rss_bytes"), 100 * MB, "bytes", "concurrency")
    cap = get("flood", "output_cap_bytes")
    add("RSS growth under an output flood", get("flood", "rss_growth_bytes"), (cap or 0) + 20 * MB, "bytes", "flood")
    store_ms = get("jobs", "store_calls", "total_ms", "median")
    add("job store time per synchronous call (median)", store_ms, 1.0, "ms", "jobs")
    return out


def _met(goal_list: list[dict[str, Any]], name: str) -> str:
    verdicts = [g["met"] for g in goal_list if g["goal"] == name]
    if not verdicts or any(v is None for v in verdicts):
        return "n/a"
    return "yes" if all(verdicts) else "**no**"


def _all_met(goal_list: list[dict[str, Any]], *names: str) -> str:
    marks = [_met(goal_list, n) for n in names]
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


def markdown(results: dict[str, Any]) -> str:
    """The table, the machine line, the command line and what each figure measures."""
    f = results["figures"]
    g = results["goals"]
    p = results["parameters"]
    rows = ["| # | figure | result | goal | met |", "|---|---|---|---|---|"]

    def row(number: str, figure: str, render: Any, goal: str, met: str, key: str) -> None:
        data = f.get(key)
        measured = data and "error" not in data
        text = render(data) if measured else f"not measured: {(data or {}).get('error', 'skipped')}"
        rows.append(f"| {number} | {figure} | {text} | {goal} | {met} |")

    row(
        "1",
        "per-call overhead, one-port nmap -sT (stdio)",
        lambda d: (
            f"MCP {d['mcp_call_ms']['median']:.1f} ms median / {d['mcp_call_ms']['p99']:.1f} ms p99; "
            f"direct {d['direct_run_ms']['median']:.1f} / {d['direct_run_ms']['p99']:.1f} ms; "
            f"**+{d['added_ms_median']:.1f} ms** (x{d['ratio_median']:.2f}) at the median, n={d['calls_per_side']} "
            f"(runner {_signed(d['breakdown_median_ms']['runner'])} ms, MCP request path "
            f"{_signed(d['breakdown_median_ms']['protocol_transport_and_validation'])} ms; a `dry_run` call "
            f"takes {d['breakdown_median_ms']['dry_run_call']:.1f} ms, a bare `docker run -i` stdio round trip "
            f"{d['breakdown_median_ms']['docker_stdio_round_trip']:.1f} ms)"
        ),
        "<= 5 ms added (median)",
        _met(g, "added ms per call at the median"),
        "overhead",
    )
    row(
        "2",
        "cold start: `docker run -i` to `initialize` answer",
        lambda d: (
            f"**{d['initialize_s']['median']:.2f} s** median of {d['runs']} = python's first output "
            f"{d['breakdown_median_s']['docker_and_interpreter']:.2f} s + imports "
            f"{d['breakdown_median_s']['imports']:.2f} s + server start-up and handshake "
            f"{d['breakdown_median_s']['server_start_and_handshake']:.2f} s; bare `python -c pass` to exit "
            f"{d['bare_python_s']['median']:.2f} s"
        ),
        "<= 1.0 s",
        _met(g, "cold start to initialize (median)"),
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
    row("5a", "image size", lambda d: f"**{_mb(d['size_bytes'])}**", "<= 130 MB", _met(g, "image size"), "image")
    row(
        "5b",
        "idle RSS of the server (HTTP, before any call)",
        lambda d: f"**{_mb(d['server_idle_rss_bytes'])}**",
        "<= 100 MB",
        _met(g, "idle RSS"),
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
        _met(g, "RSS growth under an output flood"),
        "flood",
    )
    row(
        "6",
        f"job store: bookkeeping of a synchronous call; reads with {p['stored_jobs']:,} stored jobs (HTTP)",
        _jobs_text,
        "<= 1 ms per call (median)",
        _met(g, "job store time per synchronous call (median)"),
        "jobs",
    )
    m = results["machine"]
    not_applied = f.get("lab", {}).get("compose_keys_not_applied", [])
    machine_line = (
        f"Measured {m['date']} ({results['mode']} mode) on {m['nproc']} CPUs ({m['cpu_model']}), "
        f"{m['memory_bytes'] / 2**30:.0f} GiB, Linux {m['kernel']}, Docker {m['docker_server']}; "
        f"load average {m['load_average_at_start'][0]} at start; image {f.get('image', {}).get('id', '?')[:19]}, "
        f"git {m['git']}."
    )
    notes = [
        "What each figure measures (sizes in MB = 10^6 bytes; percentiles are nearest-rank):",
        f"1. Client side: `time.perf_counter()` in the benchmark process around `Client.call_tool('nmap_scan', "
        f"target=<lab IP>, ports='8080')`, one stdio session to `docker run -i` of the image with compose.yaml's "
        f"flags on the internal lab network, {p['overhead_calls']} calls after {p['overhead_warmup']} warm-up. "
        f"Direct: the argv of a `dry_run` call, run {p['overhead_calls']} times with `subprocess.run` (the "
        f"runner's environment, new session) by Python inside a second container of the image (same flags, "
        "same network), `time.perf_counter()` there. Neither includes container start; the sides alternate "
        "call by call. Runner = the server's own timing of the scanner run (the result's "
        "`duration_seconds`, monotonic clock, ms resolution) minus direct; MCP request path = client time minus "
        "that (the client SDK, JSON-RPC through docker's attach stream, validation, scope checks, audit lines, "
        "result parsing); the stdio round trip = host `time.perf_counter()` around one line sent to the harness "
        "container and its answer, no scan; a `dry_run` call = the same `call_tool` with `dry_run: true` (no "
        "process); medians of 50 each.",
        "2. `time.perf_counter()` in the benchmark process from spawning `docker run -i ... serve` (stdio, "
        "compose's flags, lab network) to reading the `initialize` response line. Same clock and flags: "
        "`docker run ... --entrypoint /opt/venv/bin/python IMG -c pass` to its exit; python's first output = "
        "`-c \"print('up')\"` to that line; imports = `import appliance.cli, appliance.app` timed inside such a "
        "container; server start-up = initialize - first output - imports (differences of medians, "
        f"approximate); median of {p['cold_start_runs']} runs each, no `--rm` (removal after the clock stops).",
        "3. The image as compose.yaml runs it (HTTP, bearer token, compose's policy pinned to the lab target, "
        "default limits), one MCP session from the host; every call released at once, each timed with "
        "`time.perf_counter()` in the benchmark process. Peak RSS = VmHWM of the server's Python process "
        "(host /proc/<pid>/status; lifetime peak, start-up included).",
        "4. Same deployment, a policy allowing 4 nmap scans at once; 4 calls scanning ports 1-1000 with "
        "`--scan-delay 1s`; once 4 nmap processes run, `docker stop -t 10` timed with `time.perf_counter()` "
        "(the CLI returns when the container has exited); orphans = nmap processes seen before the stop and "
        "still alive after it.",
        "5. Image: `docker image inspect` Size. Idle RSS: VmRSS of the server process after /readyz answers and "
        "its RSS has settled, before any MCP request. Flood (host mode, not the container): `.venv/bin/appliance "
        "serve` under `unshare --net` with APPLIANCE_NMAP_PATH set to a fake nmap that writes "
        f"{_mb(p['flood_bytes'])} of XML to stdout and ignores SIGTERM; growth = VmHWM after the call (reset "
        "before it via clear_refs) minus the settled VmRSS before it.",
        "6. Bookkeeping: a container of the image (compose's flags) with a new named volume at /var/lib/appliance "
        "runs bench/jobs_harness.py: the appliance's JobManager, AuditSink (a file on the container's /tmp "
        "tmpfs) and SqliteJobStore on the volume, the sequence a completed synchronous call makes "
        "(admissible: free-space check; create: audit line + put; running: put; result fields: the job's "
        "fields and the result's one JSON dump; changes_since: previous_completed + diff against the previous rescan; "
        "finish: put of the record with the nmap XML, one commit), each step timed with `time.perf_counter()` in the "
        "container (and the whole with `time.thread_time()`: CPU time, which a busy machine does not inflate), "
        f"{p['job_store_calls']} calls after {p['job_store_warmup']} warm-up; the result is "
        "nmap_scan's own assembly of a version-scan XML (two variants alternating, so every rescan has a "
        "diff); the scanner and its parsing are not in the figure. Reads: the same harness stores "
        f"{p['stored_jobs']:,} jobs through the same path (2 principals, 5 targets, one minute apart), then "
        "the appliance (HTTP, compose's flags, on that volume, retention raised to keep them all) answers "
        f"{p['job_reads']} `get_scan` of random own scans and as many `list_scans` (limit 20) first pages "
        "and pages from a random cursor, one MCP session, `time.perf_counter()` in the benchmark process; "
        "the one-job figure: `get_scan` on the same volume when it held only that job. Bytes per job: "
        "(SQLite file + WAL, with the writer's connection open) / jobs.",
        "The benchmark leaves out compose's health check (its `docker exec` would land in the measurements) "
        "and restart policy" + (f"; compose keys it does not apply: {', '.join(not_applied)}." if not_applied else "."),
    ]
    if f.get("image", {}).get("retagged_during_run"):
        machine_line += f" **Warning: {f['image']['image']} was rebuilt during the run; measure again.**"
    return "\n".join([*rows, "", machine_line, "", f"Command: `{results['command']}`", "", *notes])
