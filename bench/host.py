"""Figure 7: the host comparison, the appliance against a bare SDK 2.3 server and the peers, in an
empty network namespace against a loopback listener (issue 10's side-by-side table).

The benchmark builds the servers (bench/host_servers.py, bench/peers.py), then runs
bench/host_compare.py in a new network namespace (bench/netns.py). A `--peer` whose checkout or
venv is missing is skipped with a message in the figure, never an error. The goal: the
appliance's cold start to the first `tools/list` answer minus the bare server's, each the median
of the run's starts, <= 0.15 s in every run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import peers
from bench.breakdown import run_values, signed, spread
from bench.docker import BenchError, log
from bench.host_servers import APPLIANCE, BARE, ServerSpec, appliance, bare
from bench.lab import REPO
from bench.netns import run_in_netns
from bench.report import Goal, goal_met, not_measured, timed_runs

FIGURE = "host"
GOAL_NAME = "host: cold start to tools/list, appliance minus a bare SDK 2.3 server (median)"


@dataclass(frozen=True)
class HostParams:
    calls: int  # rounds of calls, one per server each
    warmup: int
    starts: int  # rounds of starts, one per server each


def _made_of(figures: dict[str, Any]) -> str:
    def cold(name: str, key: str) -> str:
        return spread(run_values(figures, FIGURE, "servers", name, "cold_start", key, "median"), 2)

    return (
        f"tools/list: appliance {cold(APPLIANCE, 'tools_list_s')} s, bare SDK server {cold(BARE, 'tools_list_s')} s; "
        f"initialize: appliance {cold(APPLIANCE, 'initialize_s')} s, bare {cold(BARE, 'initialize_s')} s"
    )


GOAL = Goal(GOAL_NAME, FIGURE, ("tools_list_minus_bare_s",), 0.15, "s", ("starts",), "starts", made_of=_made_of)


def servers(folder: Path, requests: Sequence[peers.PeerRequest]) -> tuple[list[ServerSpec], list[str]]:
    """The run's servers (the appliance first, the bare server, then each usable peer, each with
    a scratch folder under `folder`) and the skip message of every peer left out."""
    if not (REPO / ".venv" / "bin" / "appliance").is_file():
        raise BenchError("the host comparison needs .venv/bin/appliance (scripts/bootstrap)")
    folder.mkdir(parents=True, exist_ok=True)
    specs = [appliance(folder), bare()]
    skipped = []
    for request in requests:
        reason = peers.skip_reason(request)
        if any(spec.name == request.peer.name for spec in specs):
            reason = f"{request.peer.name}: given twice (the first --peer counts)"
        if reason is not None:
            skipped.append(reason)
            continue
        scratch = folder / request.peer.name
        scratch.mkdir(exist_ok=True)
        specs.append(peers.server(request, scratch))
    return specs, skipped


async def measure(
    workdir: Path, log_dir: Path, params: HostParams, requests: Sequence[peers.PeerRequest], run: int
) -> dict[str, Any]:
    """One run of the comparison (its own folder, servers and namespace)."""
    specs, skipped = servers(workdir / f"host-{run}", requests)
    for reason in skipped:
        log(f"host comparison: skipped {reason}")
    data = await run_in_netns(
        "host",
        {
            "servers": [spec.to_json() for spec in specs],
            "starts": params.starts,
            "calls": params.calls,
            "warmup": params.warmup,
            "log_dir": str(log_dir),
        },
    )
    return {**data, "skipped": skipped}


def _names(figures: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for run in figures[FIGURE].get("runs", []):
        names += [n for n in run.get("order", []) if n not in names]
    return names


def _server_text(figures: dict[str, Any], name: str) -> str:
    def v(*path: str, digits: int = 2) -> str:
        return spread(run_values(figures, FIGURE, "servers", name, *path), digits)

    errors = {
        run["servers"][name][part]["error"]
        for run in figures[FIGURE]["runs"]
        if name in run.get("servers", {})
        for part in ("cold_start", "per_call")
        if "error" in run["servers"][name][part]
    }
    if errors:
        return f"{name}: not measured: {'; '.join(sorted(errors))}"
    return (
        f"{name}: `initialize` {v('cold_start', 'initialize_s', 'median')} s, `tools/list` "
        f"{v('cold_start', 'tools_list_s', 'median')} s, exit {v('cold_start', 'exit_s', 'median')} s, "
        f"{signed(run_values(figures, FIGURE, 'servers', name, 'per_call', 'added_ms_median'))} ms per call "
        f"(p99 MCP {v('per_call', 'mcp_call_ms', 'p99', digits=1)} / "
        f"direct {v('per_call', 'direct_run_ms', 'p99', digits=1)} ms)"
    )


def row(results: dict[str, Any]) -> str:
    """The figures table's row 7."""
    f = results["figures"]
    p = results["parameters"]
    timed = timed_runs(p)
    figure = (
        f"host, empty network namespace: appliance, bare SDK 2.3 server and peers, interleaved, {timed} of "
        f"{p['cold_start_runs']} starts and {p['overhead_calls']} calls each (SDK 2.x client)"
    )
    why = not_measured(f.get(FIGURE))
    if why is not None:
        text = f"not measured: {why}"
    else:
        minus = signed(run_values(f, FIGURE, "tools_list_minus_bare_s"), 2)
        parts = [f"appliance minus bare server to `tools/list`: **{minus} s**"]
        parts += [_server_text(f, name) for name in _names(f)]
        skipped = sorted({s for run in f[FIGURE]["runs"] for s in run.get("skipped", [])})
        parts += [f"skipped {s}" for s in skipped]
        text = "; ".join(parts)
    return f"| 7 | {figure} | {text} | <= 0.15 s (appliance minus bare) | {goal_met(results['goals'], GOAL_NAME)} |"
