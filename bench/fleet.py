"""Figures 9 and 10: the fleet (issue 13), on the host in an empty network namespace (bench/netns.py,
loopback only) against the host comparison's listener; bench/fleet_run.py measures, this module
plans the runs, holds the goal and renders the rows.

9. Per timing run: a one-port connect scan through a front and a segment appliance against the
   same scan through a standalone appliance (same policy), interleaved calls over streamable
   HTTP with the SDK 2.x client; the goal: at most 10 ms added at the median in every run. Then
   FLEET_BURST concurrent calls through the front: completed jobs per second of wall time.
10. Once: `list_scans` through the front and store.page() directly with `stored_jobs` finished
   jobs in the JetStream store, and the front's RSS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.breakdown import run_values, signed, spread
from bench.lab import Lab
from bench.netns import run_in_netns
from bench.report import Goal, goal_met, not_measured, timed_runs
from bench.stats import mb

FIGURE = "fleet"
STORE_FIGURE = "fleet_store"
GOAL_NAME = "fleet: added ms per call through front and segment (median)"
# Issue 13's throughput burst: 20 calls at once through one front to one segment appliance.
FLEET_BURST = 20


# A call's stages from its job's record (bench/fleet_run.py's stages()), in the report's words.
STAGE_LABELS = (
    ("to_created", "to the job's record"),
    ("created_to_running", "record to running"),
    ("running_to_end", "running to the end"),
    ("end_to_answer", "end to the answer"),
)


def stages_text(figures: dict[str, Any]) -> str:
    """Each stage's median, the fleet's against the standalone appliance's (ms)."""

    def v(side: str, key: str) -> str:
        return spread(run_values(figures, FIGURE, "stages_ms", side, key, "median"))

    return ", ".join(f"{label} {v('fleet', key)} vs {v('standalone', key)}" for key, label in STAGE_LABELS) + " ms"


def _made_of(figures: dict[str, Any]) -> str:
    def v(*path: str) -> str:
        return spread(run_values(figures, FIGURE, *path))

    return (
        f"through the fleet {v('fleet_ms', 'median')} ms median / {v('fleet_ms', 'p99')} ms p99, "
        f"standalone {v('standalone_ms', 'median')} / {v('standalone_ms', 'p99')} ms; fleet vs standalone: "
        f"{stages_text(figures)}"
    )


GOAL = Goal(GOAL_NAME, FIGURE, ("added_ms_median",), 10.0, "ms", ("calls_per_side",), "calls", made_of=_made_of)


@dataclass(frozen=True)
class FleetParams:
    calls: int  # rounds of one call per endpoint
    warmup: int
    burst: int = FLEET_BURST


@dataclass(frozen=True)
class StoreParams:
    stored_jobs: int
    reads: int


async def measure(lab: Lab, params: FleetParams, run: int) -> dict[str, Any]:
    """One run of figure 9 (its own nats-server, appliances and namespace)."""
    folder = lab.workdir / f"fleet-{run}"
    return await run_in_netns(
        "fleet", {"folder": str(folder), "calls": params.calls, "warmup": params.warmup, "burst": params.burst}
    )


async def measure_store(lab: Lab, params: StoreParams) -> dict[str, Any]:
    """Figure 10, once."""
    folder = lab.workdir / "fleet-store"
    return await run_in_netns("fleet_store", {"folder": str(folder), "jobs": params.stored_jobs, "reads": params.reads})


def row(results: dict[str, Any]) -> str:
    """The figures table's row 9."""
    f = results["figures"]
    p = results["parameters"]
    figure = (
        f"fleet: one-port nmap -sT through front + segment vs standalone (HTTP, SDK 2.x client, empty network "
        f"namespace, own nats-server), {timed_runs(p)} of {p['overhead_calls']} interleaved calls each; "
        f"{FLEET_BURST} concurrent calls through the front"
    )
    why = not_measured(f.get(FIGURE))
    if why is not None:
        text = f"not measured: {why}"
    else:

        def v(*path: str) -> str:
            return spread(run_values(f, FIGURE, *path))

        limits: dict[str, Any] = next((run["burst"]["segment_limits"] for run in f[FIGURE]["runs"]), {})
        text = (
            f"fleet {v('fleet_ms', 'median')} ms median / {v('fleet_ms', 'p99')} ms p99, standalone "
            f"{v('standalone_ms', 'median')} / {v('standalone_ms', 'p99')} ms: "
            f"**{signed(run_values(f, FIGURE, 'added_ms_median'))} ms** at the median, "
            f"{signed(run_values(f, FIGURE, 'added_ms_p99'))} ms at p99; burst: "
            f"{spread(run_values(f, FIGURE, 'burst', 'completed'), 0)} of {FLEET_BURST} completed, "
            f"**{v('burst', 'jobs_per_s')} jobs/s** "
            f"(wall {spread(run_values(f, FIGURE, 'burst', 'wall_s'), 2)} s; the segment runs "
            f"{limits.get('nmap_scan_running', '?')} nmap scans at once, {limits.get('global_running', '?')} "
            f"scans in all); stages, fleet vs standalone: {stages_text(f)}"
        )
    return f"| 9 | {figure} | {text} | <= 10 ms added (median) | {goal_met(results['goals'], GOAL_NAME)} |"


def store_row(results: dict[str, Any]) -> str:
    """The figures table's row 10 (no goal: issue 13 asks for the figure)."""
    d = results["figures"].get(STORE_FIGURE)
    why = not_measured(d)
    jobs = results["parameters"]["stored_jobs"]
    figure = f"fleet: `list_scans` (first page, limit 20) with {jobs:,} finished jobs in the JetStream store"
    if why is not None:
        text = f"not measured: {why}"
    else:
        mcp, page, scan = d["list_scans_mcp_ms"], d["store_page_ms"], d["scan_mcp_ms"]
        text = (
            f"through the front (MCP) **{mcp['median']:.0f} ms** median / {mcp['p99']:.0f} ms p99, "
            f"store.page() {page['median']:.0f} / {page['p99']:.0f} ms (n={d['reads']}); a one-port scan "
            f"through the front meanwhile {scan['median']:.1f} ms median (n={scan['n']}); front RSS "
            f"**{mb(d['front_rss_bytes'])}** ({mb(d['front_idle_rss_bytes'])} before the fill); "
            f"filling: {d['fill']['put_ms_per_job']:.1f} ms per put"
        )
    return f"| 10 | {figure} | {text} | none (reported) | n/a |"
