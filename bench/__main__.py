"""`scripts/bench [--quick] [--json PATH] [--peer NAME=PATH ...]`: measure, print a Markdown table, write JSON.

Exit status: 0 when every figure was measured (whether or not it meets its goal), 1 when one
could not be measured (the JSON and the table say which and why), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from bench import coldstart, concurrency, fleet, footprint, host, jobs, mcp1, overhead, peers, shutdown
from bench.docker import BenchError, log
from bench.lab import REPO, Lab, lab
from bench.report import Goal, goals, machine, markdown

DEFAULT_JSON = REPO / "bench-results" / "latest.json"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    timing_runs: int  # runs of each timing figure (per-call overhead, cold start and exit)
    overhead_calls: int
    overhead_warmup: int
    cold_start_runs: int
    concurrency: int
    flood_bytes: int
    output_cap_bytes: int
    job_store_calls: int
    job_store_warmup: int
    stored_jobs: int
    job_reads: int


# Issue 10: a figure is the median of 3 interleaved runs of at least 400 calls and 10 starts each.
FULL = Sizes(3, 400, 3, 10, 200, 100_000_000, 8 * MIB, 1000, 20, 10_000, 200)
# For CI: proves the command and every figure still work, in well under two minutes.
QUICK = Sizes(1, 5, 1, 1, 20, 10_000_000, 8 * MIB, 50, 5, 200, 5)


@dataclass(frozen=True)
class Provider:
    """A figure beyond the built-in ones (host-side runs, peers, another client): `measure` is
    called with the lab, the sizes and the run index; a `timed` figure is measured in every
    timing run, interleaved with overhead and cold start (kept as {"runs": [...]}), the others
    once after the built-in figures. Its goals join report.goals(), its row the table."""

    key: str
    measure: Callable[[Lab, Sizes, int], Awaitable[dict[str, Any]]]
    timed: bool = True
    goals: tuple[Goal, ...] = ()
    row: Callable[[dict[str, Any]], str] | None = None


def extra_figures(requests: Sequence[peers.PeerRequest] = ()) -> list[Provider]:
    """The added figure providers: the host comparison (with the `--peer` checkouts), the 1.x
    client's per-call figure and the fleet's per-call and burst figure, measured in every timing
    run; the fleet's store figure, once."""
    return [
        Provider(
            host.FIGURE,
            lambda lab, sizes, run: host.measure(
                lab.workdir,
                lab.log_dir,
                host.HostParams(sizes.overhead_calls, sizes.overhead_warmup, sizes.cold_start_runs),
                requests,
                run,
            ),
            goals=(host.GOAL,),
            row=host.row,
        ),
        Provider(
            mcp1.FIGURE,
            lambda lab, sizes, run: mcp1.measure(
                lab, mcp1.Mcp1Params(sizes.overhead_calls, sizes.overhead_warmup), run
            ),
            goals=(mcp1.GOAL,),
            row=mcp1.row,
        ),
        Provider(
            fleet.FIGURE,
            lambda lab, sizes, run: fleet.measure(
                lab, fleet.FleetParams(sizes.overhead_calls, sizes.overhead_warmup), run
            ),
            goals=(fleet.GOAL,),
            row=fleet.row,
        ),
        Provider(
            fleet.STORE_FIGURE,
            lambda lab, sizes, run: fleet.measure_store(lab, fleet.StoreParams(sizes.stored_jobs, sizes.job_reads)),
            timed=False,
            row=fleet.store_row,
        ),
    ]


# Added figure providers (bench/host.py, bench/mcp1.py, ...) are listed here; main() gives the
# host comparison the command line's peers.
EXTRA_FIGURES: list[Provider] = extra_figures()


async def _measure(key: str, measure: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """One figure (or one run of it); a failure becomes {"error": ...} and costs no other figure."""
    log(f"measuring {key}")
    started = time.monotonic()
    try:
        data = await measure()
    except BenchError as exc:
        log(f"{key}: not measured: {exc}")
        data = {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one broken figure must not cost the others; traceback logged
        log(f"{key}: not measured:\n{''.join(traceback.format_exception(exc))}")
        data = {"error": f"{type(exc).__name__}: {exc}"}
    data["wall_seconds"] = round(time.monotonic() - started, 1)
    return data


def _timing_figures(
    the_lab: Lab, sizes: Sizes, providers: Sequence[Provider] | None = None
) -> dict[str, Callable[[int], Awaitable[dict[str, Any]]]]:
    """The figures measured in every timing run, in the order each run measures them
    (`providers`: EXTRA_FIGURES unless given)."""
    figures: dict[str, Callable[[int], Awaitable[dict[str, Any]]]] = {
        "overhead": lambda run: overhead.measure(
            the_lab, overhead.OverheadParams(sizes.overhead_calls, sizes.overhead_warmup), run
        ),
        "cold_start": lambda run: anyio.to_thread.run_sync(
            coldstart.measure, the_lab, coldstart.ColdStartParams(sizes.cold_start_runs), run
        ),
    }
    for provider in EXTRA_FIGURES if providers is None else providers:
        if provider.timed:
            figures[provider.key] = lambda run, p=provider: p.measure(the_lab, sizes, run)
    return figures


async def run(sizes: Sizes, providers: Sequence[Provider] | None = None) -> dict[str, Any]:
    providers = EXTRA_FIGURES if providers is None else providers
    figures: dict[str, Any] = {}
    with lab() as the_lab:
        figures["image"] = await _measure("image", lambda: anyio.to_thread.run_sync(footprint.image_facts))
        # Interleaved: run 1 of every timing figure, then run 2 of each, ... so that a slow
        # stretch of the shared machine lands in one run of each rather than in one figure.
        timing = _timing_figures(the_lab, sizes, providers)
        for key in timing:
            figures[key] = {"runs": []}
        for index in range(sizes.timing_runs):
            for key, measure in timing.items():
                data = await _measure(f"{key} (run {index + 1}/{sizes.timing_runs})", lambda m=measure, i=index: m(i))
                figures[key]["runs"].append(data)
        figures["concurrency"] = await _measure(
            "concurrency",
            lambda: concurrency.measure(the_lab, concurrency.ConcurrencyParams(sizes.concurrency)),
        )
        figures["shutdown"] = await _measure("shutdown", lambda: shutdown.measure(the_lab))
        figures["flood"] = await _measure(
            "flood",
            lambda: footprint.measure_flood(
                footprint.FloodParams(sizes.flood_bytes, sizes.output_cap_bytes), the_lab.log_dir
            ),
        )
        figures["jobs"] = await _measure(
            "jobs",
            lambda: jobs.measure(
                the_lab,
                jobs.JobsParams(sizes.job_store_calls, sizes.job_store_warmup, sizes.stored_jobs, sizes.job_reads),
            ),
        )
        for provider in providers:
            if not provider.timed:
                figures[provider.key] = await _measure(provider.key, lambda p=provider: p.measure(the_lab, sizes, 0))
        if "id" in figures["image"]:
            # Another build may retag the image meanwhile; later figures would then measure it.
            figures["image"]["retagged_during_run"] = footprint.image_facts()["id"] != figures["image"]["id"]
        if any(_failed(data) for data in figures.values()):
            the_lab.keep_workdir = True
        _describe_lab(figures, the_lab)
    return figures


def _failed(data: dict[str, Any]) -> bool:
    """The figure, or one of its runs, could not be measured."""
    return "error" in data or any("error" in run for run in data.get("runs", []))


def _unexpected(data: dict[str, Any]) -> int:
    return sum(int(run.get("unexpected_errors", 0)) for run in data.get("runs", [data]))


def _describe_lab(figures: dict[str, Any], the_lab: Lab) -> None:
    figures["lab"] = {
        "run_id": the_lab.run_id,
        "network_name": the_lab.network,
        "network": "internal Docker network created by the benchmark",
        "target": f"lab target container at {the_lab.target_ip}:8080 (the only address the policy allows)",
        "compose_keys_not_applied": list(the_lab.deployment.not_applied),
        "appliance_flags": list(the_lab.deployment.flags),
    }


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM (a CI timeout, `kill`) takes the same path as Ctrl-C, so the lab's cleanup runs.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and one timing run, for CI (under two minutes)"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default: {DEFAULT_JSON})")
    known = peers.load()
    parser.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="NAME=PATH",
        type=lambda text: peers.parse_option(text, known),
        help=f"add a peer's checkout (with its venv: scripts/setup-bench-peers) to the host comparison; "
        f"repeatable; NAME one of {', '.join(sorted(known))}",
    )
    args = parser.parse_args(argv)
    providers = extra_figures(args.peer)
    sizes = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _interrupt)
    command = shlex.join(["scripts/bench", *(argv if argv is not None else sys.argv[1:])])
    started = time.monotonic()
    facts = machine()
    try:
        figures = anyio.run(run, sizes, providers)
    except BenchError as exc:
        log(f"failed: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted: the lab's containers and network are removed")
        return 130
    results: dict[str, Any] = {
        "schema": 1,
        "mode": "quick" if args.quick else "full",
        "command": command,
        "machine": facts,
        "parameters": sizes.__dict__,
        "figures": figures,
    }
    results["goals"] = goals(figures, [goal for provider in providers for goal in provider.goals])
    results["unexpected_errors"] = sum(_unexpected(data) for data in figures.values() if isinstance(data, dict))
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results, [p.row for p in providers if p.row is not None]))
    log(f"wrote {args.json} in {results['wall_seconds']} s")
    return 1 if any(_failed(data) for data in figures.values() if isinstance(data, dict)) else 0


if __name__ == "__main__":
    sys.exit(main())
