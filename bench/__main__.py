"""`scripts/bench [--quick] [--json PATH]`: measure, print a Markdown table, write JSON.

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from bench import coldstart, concurrency, footprint, jobs, overhead, shutdown
from bench.docker import BenchError, log
from bench.lab import REPO, Lab, lab
from bench.report import goals, machine, markdown

DEFAULT_JSON = REPO / "bench-results" / "latest.json"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
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


FULL = Sizes(400, 3, 10, 200, 100_000_000, 8 * MIB, 1000, 20, 10_000, 200)
# For CI: proves the command and every figure still work, in well under two minutes.
QUICK = Sizes(5, 1, 1, 20, 10_000_000, 8 * MIB, 50, 5, 200, 5)


async def _figure(results: dict[str, Any], key: str, measure: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    log(f"measuring {key}")
    started = time.monotonic()
    try:
        results[key] = await measure()
    except BenchError as exc:
        log(f"{key}: not measured: {exc}")
        results[key] = {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one broken figure must not cost the others; traceback logged
        log(f"{key}: not measured:\n{''.join(traceback.format_exception(exc))}")
        results[key] = {"error": f"{type(exc).__name__}: {exc}"}
    results[key]["wall_seconds"] = round(time.monotonic() - started, 1)


async def run(sizes: Sizes) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    with lab() as the_lab:
        await _figure(figures, "image", lambda: anyio.to_thread.run_sync(footprint.image_facts))
        await _figure(
            figures,
            "overhead",
            lambda: overhead.measure(
                the_lab,
                overhead.OverheadParams(sizes.overhead_calls, sizes.overhead_warmup),
            ),
        )
        await _figure(
            figures,
            "cold_start",
            lambda: anyio.to_thread.run_sync(
                coldstart.measure, the_lab, coldstart.ColdStartParams(sizes.cold_start_runs)
            ),
        )
        await _figure(
            figures,
            "concurrency",
            lambda: concurrency.measure(the_lab, concurrency.ConcurrencyParams(sizes.concurrency)),
        )
        await _figure(figures, "shutdown", lambda: shutdown.measure(the_lab))
        await _figure(
            figures,
            "flood",
            lambda: footprint.measure_flood(
                footprint.FloodParams(sizes.flood_bytes, sizes.output_cap_bytes), the_lab.log_dir
            ),
        )
        await _figure(
            figures,
            "jobs",
            lambda: jobs.measure(
                the_lab,
                jobs.JobsParams(sizes.job_store_calls, sizes.job_store_warmup, sizes.stored_jobs, sizes.job_reads),
            ),
        )
        if "id" in figures["image"]:
            # Another build may retag the image meanwhile; later figures would then measure it.
            figures["image"]["retagged_during_run"] = footprint.image_facts()["id"] != figures["image"]["id"]
        if any("error" in data for data in figures.values()):
            the_lab.keep_workdir = True
        _describe_lab(figures, the_lab)
    return figures


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
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI (under two minutes)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default: {DEFAULT_JSON})")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _interrupt)
    command = shlex.join(["scripts/bench", *(argv if argv is not None else sys.argv[1:])])
    started = time.monotonic()
    facts = machine()
    try:
        figures = anyio.run(run, sizes)
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
    results["goals"] = goals(figures)
    results["unexpected_errors"] = sum(
        int(data.get("unexpected_errors", 0)) for data in figures.values() if isinstance(data, dict)
    )
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    log(f"wrote {args.json} in {results['wall_seconds']} s")
    return 1 if any("error" in data for data in figures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
