"""What each figure of the report measures: the notes printed below the tables."""

from __future__ import annotations

from typing import Any

from bench.stats import mb as _mb


def measurement_notes(results: dict[str, Any]) -> list[str]:
    """The notes, with the run's sizes filled in."""
    f = results["figures"]
    p = results["parameters"]
    runs = p.get("timing_runs", 1)
    not_applied = f.get("lab", {}).get("compose_keys_not_applied", [])
    return [
        "What each figure measures (sizes in MB = 10^6 bytes; percentiles are nearest-rank):",
        "How a figure counts: the timing figures (1, 2, 2b) are measured in "
        f"{runs} run{'s' if runs != 1 else ''}, interleaved (run 1 of figure 1 and of figure 2, then run 2 "
        "of each, ...), each run with its own containers and its sides alternating; a run's figure is its "
        "median, the table shows the median of the runs' figures with their min-max, and a goal is met "
        "only if every run meets it. The JSON keeps every run's figures.",
        f"1. Client side: `time.perf_counter()` in the benchmark process around `Client.call_tool('nmap_scan', "
        f"target=<lab IP>, ports='8080')`, one stdio session to `docker run -i` of the image with compose.yaml's "
        f"flags on the internal lab network, {p['overhead_calls']} calls per run after {p['overhead_warmup']} "
        f"warm-up. Direct: the argv of a `dry_run` call, run as often with `subprocess.run` (the "
        f"runner's environment, new session) by Python inside a second container of the image (same flags, "
        "same network), `time.perf_counter()` there. Neither includes container start; the sides alternate "
        "call by call. p99 ratio = p99(MCP) / p99(direct) of the run. Runner = the server's own timing of the "
        "scanner run (the result's `duration_seconds`, ms resolution) minus direct; MCP request path = client "
        "time minus that; the stdio round trip = host `time.perf_counter()` around one line sent to the harness "
        "container and its answer, no scan; a `dry_run` call = the same `call_tool` with `dry_run: true` (no "
        'process); medians of 50 each. Per-call stages: the server\'s "call timings" log lines (stderr, matched '
        "to the client's calls by `request_id`): checks, store, queue, spawn, scanner, parse, result; serialise "
        "(the SDK's dump of the CallToolResult, its per-version sieve and the JSON-RPC line), client parse (the "
        "client's version check and model parse) and client validation (`ClientSession.validate_tool_result`, "
        "the 2.x client's output-schema check) are timed in the benchmark process on 10 of the run's real "
        "results (median of 50 each); dispatch = client time - server stages - those three, per call "
        "(JSON-RPC framing and JSON text on both sides, the SDK's dispatch, the appliance's MCP boundary "
        "around the service call, docker's attach stream both ways).",
        "2. `time.perf_counter()` in the benchmark process from spawning `docker run -i ... serve` (stdio, "
        "compose's flags, lab network): `initialize` written at once, `notifications/initialized` and "
        "`tools/list` as soon as its answer is read; the clock stops when the `tools/list` response line is "
        'complete (the `initialize` answer is the secondary figure). Start-up stages: the server\'s "ready" log '
        "line (interpreter from the kernel's process start, imports, settings and policy, transport ready); "
        "docker and the first answers = client time - those (container creation and attach, the three "
        "messages). Same clock and flags, floors: `docker run ... --entrypoint /opt/venv/bin/python IMG -c pass` "
        "to its exit; python's first output = a `-c` that prints a line, to that line; imports = `import "
        f"appliance.cli, appliance.app` timed inside such a container; {p['cold_start_runs']} starts of each per "
        "run, interleaved, no `--rm` (removal after the clocks stop).",
        "2b. In the same starts: after the `tools/list` answer, stdin is closed and `time.perf_counter()` runs "
        "until the `docker run -i` process has exited (the container is gone). Beside it: the server's own "
        'figure from its "shutdown complete" log line (`seconds`), and the floor: the first-output python, '
        "which then reads stdin to EOF, timed the same way from closing its stdin to the exit.",
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
        "fields and the result's one JSON dump; changes_since: previous_completed_id + diff against the previous "
        "rescan; "
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
        *_added_notes(f, p),
        "The benchmark leaves out compose's health check (its `docker exec` would land in the measurements) "
        "and restart policy" + (f"; compose keys it does not apply: {', '.join(not_applied)}." if not_applied else "."),
    ]


def _added_notes(f: dict[str, Any], p: dict[str, Any]) -> list[str]:
    """The notes of the added figures (bench/host.py, bench/mcp1.py, bench/fleet.py) that this run has."""
    notes = []
    if "host" in f:
        notes.append(
            "7. Host, in an empty network namespace the benchmark makes (`unshare --net`, loopback only), "
            "against a listener on 127.0.0.1:8080 that accepts and closes: the appliance from .venv (stdio), "
            "bench/bare_server.py (the SDK 2.3 `MCPServer`, one tool running the appliance's argv) and each "
            "`--peer`. Per run, every server in turn: "
            f"{p['overhead_calls']} rounds of one direct run of its argv (`subprocess.run`, the runner's "
            "environment, new session) and one `tools/call` (SDK 2.x client), then "
            f"{p['cold_start_runs']} rounds of one start each (spawn to the `initialize` and `tools/list` "
            "answers, then stdin closed to the exit); `time.perf_counter()` in the namespace's benchmark "
            "process. The goal's figure: the appliance's median `tools/list` time minus the bare server's."
        )
    if "mcp1_client" in f:
        notes.append(
            "8. As 1 (container) and 7 (host, the appliance only), with the MCP 1.x Python client (mcp 1.30.0 "
            "in .venv-mcp1, bench/mcp1_client.py) timing each call in its own process; its direct side "
            "alternates call by call as in 1."
        )
    if "fleet" in f:
        notes.append(
            "9. Host, in an empty network namespace as 7, against the same listener: a nats-server of the run's "
            "own (JetStream, its own store directory) and three `.venv/bin/appliance serve` processes over HTTP, "
            "all with the host comparison's policy (127.0.0.1/32, loopback opened): a standalone appliance, a "
            "`--role segment` appliance and a `--role front`. Per run, "
            f"{p['overhead_calls']} rounds of one `nmap_scan` (one port, connect scan) through the standalone "
            "appliance and one through the front (the order alternating round by round), one streamable-HTTP "
            "session each (SDK 2.x client, bench/clients.py), after "
            f"{p['overhead_warmup']} warm-up calls each; `time.perf_counter()` in the namespace's benchmark process; "
            "added = median(fleet) - median(standalone). Stages: from each timed call's job record "
            "(its store read after the calls; event times and the client's `time.time()`, one host clock, ms "
            "resolution): the call's start to the record's creation, creation to `running` (in the fleet: the "
            "queue, the segment's fetch, claim and re-check), `running` to the end, the end to the answer. "
            "Burst: 20 calls released at once through the front (one session); jobs/s = calls that came back "
            "completed with the port open / the time from the release to the last answer. The segment's "
            "limits are its policy's (the shipped defaults)."
        )
    if "fleet_store" in f:
        notes.append(
            f"10. As 9 without the standalone appliance: {p['stored_jobs']:,} completed one-port jobs of the "
            "token's principal (a small result each, no raw output) put into the fleet's buckets with "
            "`JetStreamJobStore.put` on a connection of the benchmark's own (retention raised to keep them), "
            f"then {p['job_reads']} rounds of one `list_scans` (no arguments: the first page, limit 20) through "
            "the front over MCP and one `store.page()` with the same filter (what `appliance jobs list` reads), "
            "each timed with `time.perf_counter()`; the front's VmRSS before the fill and after the reads."
        )
    return notes
