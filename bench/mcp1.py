"""Figure 8: what one `tools/call` adds with the MCP 1.x Python client (mcp 1.30.0), which
recompiles a tool's output schema for every result. Its goal (issue 10, set once the output
schemas were shallow): at most 10 ms added at the median in the container, twice the 2.x
client's 5 ms: the 1.x client's own per-result schema work may cost up to as much again.

bench/mcp1_client.py runs in .venv-mcp1 (scripts/setup-bench-mcp1) as a BatchProcess: one line
"1" makes one timed call. The direct side alternates with it call by call, as in figure 1:
- host: in an empty network namespace (bench/netns.py), the appliance from .venv (stdio, the host
  comparison's loopback policy) against its listener; the direct side is the dry run's argv run
  by bench/host_compare.py's direct_run in the namespace's benchmark process;
- container: `docker run -i` of the image as figure 1 runs it, on the lab network; the direct side
  is figure 1's harness container.
Without .venv-mcp1 the figure says "not measured: run scripts/setup-bench-mcp1" (no error).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from bench.breakdown import run_values, signed, spread
from bench.docker import DOCKER, BenchError, log
from bench.host_compare import direct_run, listener
from bench.host_servers import PORT, appliance
from bench.lab import REPO, TARGET_PORT, Lab
from bench.netns import run_in_netns
from bench.overhead import BatchProcess, Harness
from bench.report import Goal, goal_met, not_measured, timed_runs
from bench.stats import percentile, summary_ms

FIGURE = "mcp1_client"
GOAL_NAME = "added ms per call at the median, MCP 1.x client (container)"
GOAL = Goal(GOAL_NAME, FIGURE, ("container", "added_ms_median"), 10.0, "ms", ("container", "calls_per_side"), "calls")
PYTHON = REPO / ".venv-mcp1" / "bin" / "python"
CLIENT = REPO / "bench" / "mcp1_client.py"
SKIPPED = "not measured: run scripts/setup-bench-mcp1"
# The client's start includes the server's (a `docker run -i` start, imports, a dry run).
READY_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class Mcp1Params:
    calls: int
    warmup: int


def _client(command: list[str], env: dict[str, str], target: str, port: int, log_dir: Path, role: str) -> BatchProcess:
    config = {
        "command": command,
        "env": env,
        "tool": "nmap_scan",
        "arguments": {"target": target, "ports": str(port)},
        "port": port,
        "errlog": str(log_dir / f"{role}-server.log"),
    }
    return BatchProcess([str(PYTHON), str(CLIENT), json.dumps(config)], log_dir / f"{role}-client.log")


def _pairs(
    client: BatchProcess, direct: Callable[[], tuple[float, bool]], params: Mcp1Params, ready: dict[str, Any]
) -> dict[str, Any]:
    """`params.calls` alternating pairs (one direct run, one 1.x call) after the warm-up."""
    client.batch(params.warmup)
    for _ in range(params.warmup):
        direct()
    mcp: list[float] = []
    direct_s: list[float] = []
    failures = {"mcp": 0, "direct": 0}
    for _ in range(params.calls):
        seconds, ok = direct()
        direct_s.append(seconds)
        failures["direct"] += 0 if ok else 1
        call, failed = client.batch(1)
        mcp += call
        failures["mcp"] += failed
    m, d = summary_ms(mcp), summary_ms(direct_s)
    return {
        "argv": ready["argv"],
        "protocol_version": ready.get("protocol_version"),
        "calls_per_side": len(mcp),
        "mcp_call_ms": m,
        "direct_run_ms": d,
        "added_ms_median": round(m["median"] - d["median"], 3),
        "added_ms_p99": round(m["p99"] - d["p99"], 3),
        "ratio_p99": round(percentile(mcp, 99) / percentile(direct_s, 99), 3),
        "failures": failures,
        "unexpected_errors": failures["mcp"] + failures["direct"],
    }


def _ready(client: BatchProcess) -> dict[str, Any]:
    ready = client.line(READY_TIMEOUT_SECONDS)
    if not ready.get("ready"):
        raise BenchError(f"the 1.x client did not start: {ready}")
    return ready


async def host_run(params: dict[str, Any]) -> dict[str, Any]:
    """The host half, inside the namespace (bench/netns.py's "mcp1" mode)."""
    folder, log_dir = Path(params["folder"]), Path(params["log_dir"])
    spec = appliance(folder)
    sizes = Mcp1Params(params["calls"], params["warmup"])

    def measure() -> dict[str, Any]:
        client = _client(list(spec.command), spec.env, "127.0.0.1", PORT, log_dir, "mcp1-host")
        try:
            ready = _ready(client)
            argv = tuple(ready["argv"])
            return _pairs(client, lambda: direct_run(argv), sizes, ready)
        finally:
            client.close()

    with listener():
        return await anyio.to_thread.run_sync(measure)


def _container(lab: Lab, params: Mcp1Params, run: int) -> dict[str, Any]:
    name = lab.name(f"mcp1-{run}")
    command = [DOCKER, *lab.appliance_run(name, {"APPLIANCE_TRANSPORT": "stdio"}, interactive=True)]
    client = _client(command, dict(os.environ), lab.target_ip, TARGET_PORT, lab.log_dir, name)
    try:
        ready = _ready(client)
        harness = Harness(lab, [str(a) for a in ready["argv"]], run, role="mcp1-direct")
        try:

            def direct() -> tuple[float, bool]:
                seconds, failed = harness.batch(1)
                return seconds[0], failed == 0

            return _pairs(client, direct, params, ready)
        finally:
            harness.close()
    finally:
        client.close()


async def measure(lab: Lab, params: Mcp1Params, run: int) -> dict[str, Any]:
    """One run: the host half, then the container half (each its own session)."""
    if not os.access(PYTHON, os.X_OK):
        log(f"{FIGURE}: {SKIPPED}")
        return {"skipped": SKIPPED}
    folder = lab.workdir / f"mcp1-host-{run}"
    folder.mkdir()
    host = await run_in_netns(
        "mcp1", {"folder": str(folder), "log_dir": str(lab.log_dir), "calls": params.calls, "warmup": params.warmup}
    )
    container = await anyio.to_thread.run_sync(_container, lab, params, run)
    return {
        "host": host,
        "container": container,
        "unexpected_errors": host["unexpected_errors"] + container["unexpected_errors"],
    }


def row(results: dict[str, Any]) -> str:
    """The figures table's row 8."""
    f = results["figures"]
    p = results["parameters"]
    timed = timed_runs(p)
    figure = (
        f"per-call overhead with the MCP 1.x Python client (mcp 1.30.0), one-port nmap -sT (stdio), "
        f"{timed} of {p['overhead_calls']} calls: host (empty network namespace) and container"
    )
    data = f.get(FIGURE)
    why = not_measured(data)
    if why is not None:
        text = f"not measured: {why}"
    elif any("skipped" in run for run in data.get("runs", [])):
        text = SKIPPED
    else:

        def v(*path: str) -> str:
            return spread(run_values(f, FIGURE, *path))

        text = "; ".join(
            f"{where}: MCP {v(where, 'mcp_call_ms', 'median')} ms median / {v(where, 'mcp_call_ms', 'p99')} ms p99, "
            f"direct {v(where, 'direct_run_ms', 'median')} / {v(where, 'direct_run_ms', 'p99')} ms, "
            f"**{signed(run_values(f, FIGURE, where, 'added_ms_median'))} ms** at the median"
            for where in ("host", "container")
        )
    return f"| 8 | {figure} | {text} | <= 10 ms added (container, median) | {goal_met(results['goals'], GOAL_NAME)} |"
