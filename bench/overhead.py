"""Figure 1: what one MCP `tools/call` adds to the scanner run it wraps.

Two long-lived containers of the appliance image, both with compose's flags, on the lab network:

- the server over stdio (`docker run -i ... serve`), one MCP session; the client times each
  `call_tool("nmap_scan", {target, ports: "8080"})` with time.perf_counter in this process;
- a harness (`--entrypoint /opt/venv/bin/python -c HARNESS`) that runs the exact argv the
  server reports for that call (a `dry_run: true` call) with subprocess.run, with the runner's
  scrubbed environment and a new session, timing each run with time.perf_counter inside the
  container.

Neither figure includes `docker run` start-up. The two sides strictly alternate (one direct
run, one MCP call, ...) so that background load on the machine falls on both alike; besides the
difference of the medians, the median of the per-pair differences is kept (less sensitive to
load that drifts during the run). One `measure()` is one run, with its own two containers; the
benchmark makes several runs, interleaved with the other timing figures' runs.

Breakdown: the server's "call timings" log lines (its stderr, matched to the client's calls by
the result's `request_id`) give the server-side stages; bench/sdkcost.py times the SDK's
serialisation, the client's parse and its output-schema check on a sample of the run's real
results; dispatch is what is left of the client's time (bench/stages.py).
"""

from __future__ import annotations

import json
import select
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from mcp_types import CallToolResult

from bench import sdkcost, stages
from bench.clients import error_type, port_open, stdio_session
from bench.docker import DOCKER, BenchError, log
from bench.lab import TARGET_PORT, Lab
from bench.stats import percentile, summary_ms

# Runs the argv it is given N times for every line "N" on stdin; answers one JSON line per batch.
HARNESS = r"""
import json, subprocess, sys, time
from appliance.runner import BASE_ENV
argv = json.loads(sys.argv[1])
for line in sys.stdin:
    seconds, failures = [], 0
    for _ in range(int(line)):
        started = time.perf_counter()
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=dict(BASE_ENV), start_new_session=True, check=False)
        seconds.append(time.perf_counter() - started)
        if done.returncode != 0 or b'<state state="open"' not in done.stdout:
            failures += 1
    print(json.dumps({"seconds": seconds, "failures": failures}), flush=True)
"""
# One batch is at most a few dozen one-port scans of ~0.1 s each; the first also imports Python.
HARNESS_BATCH_TIMEOUT_SECONDS = 120
# stdin closed: the harness loop ends and the container exits at once.
HARNESS_EXIT_TIMEOUT_SECONDS = 30
PROGRESS_EVERY = 100
ECHO_ROUND_TRIPS = 50
# Real results the SDK steps are timed on (spread over the run); each is timed REPEATS times.
SDK_SAMPLE = 10


@dataclass(frozen=True)
class OverheadParams:
    calls: int
    warmup: int


class BatchProcess:
    """A process that answers each line "N" on its stdin with one JSON line for a batch of N
    runs ({"seconds": [...], "failures": k}): the direct-execution harness below, and the 1.x
    client of bench/mcp1_client.py. Its stderr goes to `log_path`."""

    def __init__(self, command: list[str], log_path: Path, env: Mapping[str, str] | None = None) -> None:
        self._log = log_path.open("w")
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=None if env is None else dict(env),
        )

    def line(self, timeout: float = HARNESS_BATCH_TIMEOUT_SECONDS) -> dict[str, Any]:
        """Its next JSON line; BenchError when none comes within `timeout`."""
        assert self._proc.stdout is not None
        # One short JSON line per batch, written at once: readable means the whole line is there.
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline() if ready else b""
        if not line:
            raise BenchError(f"{Path(self._log.name).stem} gave no answer (see {self._log.name})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def batch(self, runs: int) -> tuple[list[float], int]:
        """`runs` runs in the process; per-run seconds and the failed runs."""
        assert self._proc.stdin is not None
        self._proc.stdin.write(f"{runs}\n".encode())
        self._proc.stdin.flush()
        answer = self.line()
        return [float(s) for s in answer["seconds"]], int(answer["failures"])

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=HARNESS_EXIT_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._log.close()


class Harness(BatchProcess):
    """The direct-execution side: a python process in an appliance container, fed batch sizes."""

    def __init__(self, lab: Lab, argv: list[str], run: int, role: str = "direct") -> None:
        self.name = lab.name(f"{role}-{run}")
        args = lab.appliance_run(
            self.name,
            {},
            interactive=True,
            entrypoint="/opt/venv/bin/python",
            command=["-c", HARNESS, json.dumps(argv)],
        )
        super().__init__([DOCKER, *args], lab.log_dir / f"{self.name}.log")


def _request_id(result: CallToolResult) -> str | None:
    value = (result.structured_content or {}).get("request_id")
    return value if isinstance(value, str) else None


async def measure(lab: Lab, params: OverheadParams, run_index: int = 0) -> dict[str, Any]:
    """One run: `params.calls` alternating pairs, then the echo and dry-run sub-figures."""
    arguments = {"target": lab.target_ip, "ports": str(TARGET_PORT)}
    name = lab.name(f"stdio-{run_index}")
    errlog = lab.log_dir / f"{name}.log"
    run = lab.appliance_run(name, {"APPLIANCE_TRANSPORT": "stdio"}, interactive=True)
    client_ms: dict[str, float] = {}
    kept: list[CallToolResult] = []
    sample_every = max(params.calls // SDK_SAMPLE, 1)
    mcp_seconds: list[float] = []
    server_seconds: list[float] = []
    direct_seconds: list[float] = []
    echo_seconds: list[float] = []
    dry_seconds: list[float] = []
    failures = {"mcp": 0, "direct": 0}
    async with stdio_session([DOCKER, *run], errlog) as client:
        dry = await client.call_tool("nmap_scan", {**arguments, "dry_run": True})
        if dry.is_error or not dry.structured_content:
            raise BenchError(f"the dry run was refused: {dry.content}")
        argv = [str(a) for a in dry.structured_content["argv"]]
        protocol = client.protocol_version
        harness = Harness(lab, argv, run_index)
        try:
            _, warm_failures = await anyio.to_thread.run_sync(harness.batch, params.warmup)
            for _ in range(params.warmup):
                await client.call_tool("nmap_scan", arguments)
            if warm_failures:
                raise BenchError("the direct runs of the argv fail in the harness container")
            for call in range(params.calls):
                seconds, failed = await anyio.to_thread.run_sync(harness.batch, 1)
                direct_seconds += seconds
                failures["direct"] += failed
                started = time.perf_counter()
                result = await client.call_tool("nmap_scan", arguments)
                mcp_seconds.append(time.perf_counter() - started)
                if error_type(result) is not None or not port_open(result, TARGET_PORT):
                    failures["mcp"] += 1
                else:
                    server_seconds.append(float((result.structured_content or {})["duration_seconds"]))
                    if (rid := _request_id(result)) is not None:
                        client_ms[rid] = mcp_seconds[-1] * 1000
                    if call % sample_every == 0 and len(kept) < SDK_SAMPLE:
                        kept.append(result)
                if (call + 1) % PROGRESS_EVERY == 0:
                    log(f"overhead run {run_index + 1}: {call + 1}/{params.calls} pairs")
            # What the docker attach path alone costs: a line to the harness and its answer back,
            # with no scan in between (the same hop every MCP message over stdio takes).
            for _ in range(ECHO_ROUND_TRIPS):
                started = time.perf_counter()
                await anyio.to_thread.run_sync(harness.batch, 0)
                echo_seconds.append(time.perf_counter() - started)
            # The whole request path without a scanner: the same call with dry_run (validation,
            # scope checks, audit line, JSON-RPC both ways, client SDK; no process, no parsing).
            for _ in range(ECHO_ROUND_TRIPS):
                started = time.perf_counter()
                await client.call_tool("nmap_scan", {**arguments, "dry_run": True})
                dry_seconds.append(time.perf_counter() - started)
            sdk = await sdkcost.measure(client, "nmap_scan", kept)
        finally:
            await anyio.to_thread.run_sync(harness.close)
    # The session has ended: the server has exited and its stderr is complete.
    breakdown = stages.call_breakdown(client_ms, stages.call_timings(errlog.read_text()), sdk)
    mcp = summary_ms(mcp_seconds)
    direct = summary_ms(direct_seconds)
    server = summary_ms(server_seconds) if server_seconds else None
    paired = [m - d for m, d in zip(mcp_seconds, direct_seconds, strict=True)]
    return {
        "argv": argv,
        "calls_per_side": len(mcp_seconds),
        "warmup_per_side": params.warmup,
        "mcp_call_ms": mcp,
        "direct_run_ms": direct,
        # The server's own timing of the scanner run (the result's duration_seconds: monotonic
        # clock in the server, ms resolution), which splits the added time in two.
        "server_run_ms": server,
        "breakdown_median_ms": {
            "runner": round(server["median"] - direct["median"], 3) if server else None,
            "protocol_transport_and_validation": round(mcp["median"] - server["median"], 3) if server else None,
            # Measured apart (host perf_counter around an empty batch of the harness).
            "docker_stdio_round_trip": summary_ms(echo_seconds)["median"],
            "dry_run_call": summary_ms(dry_seconds)["median"],
        },
        "stages": {**breakdown, "sdk": sdk},
        # Every call's time (ms), in call order: the pairs are (mcp[i], direct[i]).
        "samples_ms": {
            "mcp": [round(x * 1000, 3) for x in mcp_seconds],
            "direct": [round(x * 1000, 3) for x in direct_seconds],
        },
        "added_ms_median": round(mcp["median"] - direct["median"], 3),
        "added_ms_p99": round(mcp["p99"] - direct["p99"], 3),
        "ratio_p99": round(percentile(mcp_seconds, 99) / percentile(direct_seconds, 99), 3),
        "paired_added_ms_median": round(percentile(paired, 50) * 1000, 3),
        "ratio_median": round(percentile(mcp_seconds, 50) / percentile(direct_seconds, 50), 3),
        "protocol_version": protocol,
        "unexpected_errors": failures["mcp"] + failures["direct"],
        "failures": failures,
    }
