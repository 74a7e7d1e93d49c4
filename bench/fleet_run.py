"""The fleet figures themselves, run inside an empty network namespace (bench/netns.py): a
nats-server of the run's own (its own store directory), `appliance serve` processes for a
standalone appliance, one segment appliance and one front, and the loopback listener of the
host comparison (127.0.0.1:8080), the only thing any scan can reach.

- "fleet" mode (one timing run): `calls` rounds of one `nmap_scan` through the standalone
  appliance and one through the front (the order alternates round by round), both over
  streamable HTTP with the SDK 2.x client of bench/clients.py, each timed with
  time.perf_counter here; then a burst of `burst` concurrent calls through the front.
- "fleet_store" mode: `jobs` finished jobs put straight into the fleet's JetStream store with
  JetStreamJobStore.put, then `reads` rounds of one `list_scans` through the front over MCP and
  one store.page() with the same filter (what `appliance jobs list` reads), the front's RSS, and
  one-port scans through the front with the store that full.

nats-server and `appliance serve` are started by the test suite's own helpers
(tests/support/nats.py, servers.py), the ones tests/fleet/test_roles.py uses.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import yaml
from mcp import Client

from appliance.fleet.bus import BusSettings, BusThread
from appliance.jobs.jetstream import JetStreamJobStore
from appliance.jobs.model import Job, new_scan_id
from appliance.jobs.sqlite import SqliteJobStore
from appliance.jobs.store import JobFilter, JobStore
from bench.clients import HOST_HEADER, error_type, http_session, port_open
from bench.docker import BenchError, log, memory_bytes
from bench.host_compare import listener
from bench.host_servers import PORT, TARGET, write_loopback_policy
from bench.lab import REPO
from bench.stats import summary_ms

# The suite's helpers live beside the tests (pytest puts tests/ on sys.path the same way).
sys.path.insert(0, str(REPO / "tests"))
from support.fleet import record_seals, seal_files
from support.nats import nats_server
from support.servers import TOKEN, Served, served
from support.waiting import wait_until

SEGMENT = "bench"
# The bearer token's principal: every call and every stored job belongs to it.
PRINCIPAL = "default"
LIST_LIMIT = 20  # list_scans' default page (appliance/jobs/queries.py)
SCANS_WITH_STORE_MIN = 5  # one-port scans through the front with the store filled (reads / 4, at least this)
# A segment heartbeats every ack_wait / 3 s; the front routes only to a segment it has heard.
SEGMENT_SEEN_TIMEOUT_SECONDS = 30
# 20 one-port scans through a segment that runs a few at a time: seconds; a stuck job must not hang us.
BURST_TIMEOUT_SECONDS = 300
# One page over 10,000 stored jobs takes a fraction of a second; the first read warms the caches.
READ_WARMUP = 2
# Scans one principal may have queued or running through the front (its policy's per-principal
# running + queued): above bench/fleet.py's burst of 20.
FRONT_SHARE = 64


def write_policy(folder: Path, stored_jobs: int) -> Path:
    """The host comparison's loopback policy (127.0.0.1/32 only) for every role, with retention
    and the per-principal job count above what the store figure fills (the front's sweep would
    otherwise remove them while they are measured)."""
    path = write_loopback_policy(folder)
    policy = yaml.safe_load(path.read_text())
    keep = max(stored_jobs * 2, int(policy["retention"]["max_count"]))
    policy["retention"]["max_count"] = keep
    policy["limits"]["concurrency"]["per_principal"]["stored_jobs"] = keep
    path.write_text(yaml.safe_dump(policy))
    return path


def write_front_policy(policy_path: Path) -> Path:
    """The front's policy: `policy_path`'s with a per-principal share of the fleet (running +
    queued, which a front applies to the whole fleet) that holds any burst this figure sends
    from its one principal: the burst measures the fleet's throughput, not the share's refusals
    (tests/fleet/test_front.py tests those). The segment keeps the shipped limits."""
    policy = yaml.safe_load(policy_path.read_text())
    share = policy["limits"]["concurrency"]["per_principal"]
    share["queued"] = max(int(share["queued"]), FRONT_SHARE - int(share["running"]))
    path = policy_path.with_name("front.yaml")
    path.write_text(yaml.safe_dump(policy))
    return path


@dataclass
class Fleet:
    folder: Path
    nats_url: str
    front: Served
    segment: Served
    standalone: Served | None
    policy: dict[str, Any]


@contextlib.contextmanager
def fleet(folder: Path, *, stored_jobs: int = 0, standalone: bool = True) -> Iterator[Fleet]:
    """nats-server, a segment appliance, a front (and a standalone appliance), all on loopback,
    each with its own data directory; the front has heard the segment when this yields."""
    folder.mkdir(parents=True, exist_ok=True)
    policy = write_policy(folder, stored_jobs)
    # bench/clients.py sends compose's Host header; the loopback defaults stay allowed too.
    hosts = f'["{HOST_HEADER}", "127.0.0.1:*"]'
    common = {"APPLIANCE_ALLOWED_HOSTS": hosts, "APPLIANCE_LOG_LEVEL": "WARNING"}
    with contextlib.ExitStack() as stack:
        nats = stack.enter_context(nats_server(folder / "nats"))
        fleet_env = {**common, "APPLIANCE_NATS_URL": nats.url, **seal_files(folder)}
        seg = stack.enter_context(
            served(
                policy,
                APPLIANCE_ROLE="segment",
                APPLIANCE_SEGMENT=SEGMENT,
                APPLIANCE_APPLIANCE_ID=f"{SEGMENT}-1",
                APPLIANCE_DATA_DIR=str(folder / "segment"),
                **fleet_env,
            )
        )
        front_policy = write_front_policy(policy)
        front = stack.enter_context(
            served(front_policy, APPLIANCE_ROLE="front", APPLIANCE_DATA_DIR=str(folder / "front"), **fleet_env)
        )
        alone = None
        if standalone:
            alone = stack.enter_context(served(policy, APPLIANCE_DATA_DIR=str(folder / "standalone"), **common))
        wait_until(
            lambda: front.get("/healthz")[1].get("checks", {}).get("fleet", {}).get("segments"),
            timeout=SEGMENT_SEEN_TIMEOUT_SECONDS,
        )
        yield Fleet(folder, nats.url, front, seg, alone, yaml.safe_load(policy.read_text()))


def _call_ok(result: Any) -> bool:
    return error_type(result) is None and port_open(result, PORT)


class _Side:
    """One endpoint's session and samples in the interleaved loop; per timed call its scan_id
    and the wall clock (time.time, the clock the appliances stamp job events with) around it."""

    def __init__(self, name: str, client: Client) -> None:
        self.name = name
        self.client = client
        self.seconds: list[float] = []
        self.calls: list[tuple[str, float, float]] = []
        self.failures = 0

    async def call(self, timed: bool = True) -> None:
        wall = time.time()
        started = time.perf_counter()
        result = await self.client.call_tool("nmap_scan", {"target": TARGET, "ports": str(PORT)})
        if timed:
            self.seconds.append(time.perf_counter() - started)
            self.calls.append((str((result.structured_content or {}).get("scan_id")), wall, time.time()))
        self.failures += 0 if _call_ok(result) else 1


def _event_at(job: Job, state: str) -> float | None:
    return next((float(e["at"]) for e in job.events if e.get("state") == state), None)


def stages(calls: list[tuple[str, float, float]], store: JobStore) -> dict[str, Any]:
    """Where a call's time went, from its job's record (event times in ms, same host clock):
    client to the job's creation, creation to `running` (in the fleet: the queue, the segment's
    fetch, claim and re-check), `running` to `completed` (the scanner and its bookkeeping), and
    the end to the client's answer (the result's record, the front's watch, the reply)."""
    parts: dict[str, list[float]] = {
        "to_created": [],
        "created_to_running": [],
        "running_to_end": [],
        "end_to_answer": [],
    }
    for scan_id, start, end in calls:
        job = store.get(scan_id)
        running = None if job is None else _event_at(job, "running")
        if job is None or running is None or job.finished_at is None:
            continue
        parts["to_created"].append(job.created_at - start)
        parts["created_to_running"].append(running - job.created_at)
        parts["running_to_end"].append(job.finished_at - running)
        parts["end_to_answer"].append(end - job.finished_at)
    return {name: summary_ms(values) for name, values in parts.items() if values}


async def interleaved(the_fleet: Fleet, calls: int, warmup: int) -> dict[str, Any]:
    """`calls` rounds of one call per endpoint, the order alternating; added = fleet - standalone."""
    assert the_fleet.standalone is not None
    standalone_url, front_url = the_fleet.standalone.url, the_fleet.front.url
    async with http_session(standalone_url, TOKEN, 4) as alone, http_session(front_url, TOKEN, 4) as front:
        sides = [_Side("standalone", alone), _Side("fleet", front)]
        for side in sides:
            for _ in range(warmup):
                await side.call(timed=False)
            side.failures = 0
        for index in range(calls):
            for side in sides if index % 2 == 0 else reversed(sides):
                await side.call()
            if (index + 1) % 100 == 0:
                log(f"fleet calls: {index + 1}/{calls} rounds")
    standalone, through = (summary_ms(side.seconds) for side in sides)
    sqlite = SqliteJobStore(the_fleet.folder / "standalone")
    bus = BusThread(BusSettings(servers=(the_fleet.nats_url,)))
    bus.start()
    try:
        breakdown = {
            "standalone": stages(sides[0].calls, sqlite),
            "fleet": stages(sides[1].calls, JetStreamJobStore(bus)),
        }
    finally:
        bus.close()
        sqlite.close()
    return {
        "calls_per_side": calls,
        "standalone_ms": standalone,
        "fleet_ms": through,
        "added_ms_median": round(through["median"] - standalone["median"], 3),
        "added_ms_p99": round(through["p99"] - standalone["p99"], 3),
        "failures": {side.name: side.failures for side in sides},
        "stages_ms": breakdown,
    }


async def burst(front_url: str, calls: int) -> dict[str, Any]:
    """`calls` concurrent `nmap_scan` calls through the front, released together; completed jobs
    (port found open) over the wall time from release to the last answer."""
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    go = anyio.Event()
    async with http_session(front_url, TOKEN, calls + 8) as client:

        async def one() -> None:
            await go.wait()
            started = time.perf_counter()
            try:
                result = await client.call_tool(
                    "nmap_scan", {"target": TARGET, "ports": str(PORT), "wait_seconds": 120}
                )
            except Exception as exc:  # noqa: BLE001 - a failed call is the finding, counted by type
                outcomes[f"exception:{type(exc).__name__}"] += 1
            else:
                kind = error_type(result)
                outcomes[kind or ("completed" if port_open(result, PORT) else "completed_without_open_port")] += 1
            latencies.append(time.perf_counter() - started)

        with anyio.fail_after(BURST_TIMEOUT_SECONDS):
            async with anyio.create_task_group() as group:
                for _ in range(calls):
                    group.start_soon(one)
                started = time.perf_counter()
                go.set()
        wall = time.perf_counter() - started
    log(f"fleet burst: {dict(outcomes)} in {wall:.2f} s")
    return {
        "calls": calls,
        "outcomes": dict(outcomes),
        "completed": outcomes["completed"],
        "wall_s": round(wall, 3),
        "jobs_per_s": round(outcomes["completed"] / wall, 2),
        "latency_ms": summary_ms(latencies),
    }


def segment_limits(policy: dict[str, Any]) -> dict[str, Any]:
    """The concurrency limits the segment appliance runs its scans under (its policy's table)."""
    table = policy["limits"]["concurrency"]
    return {
        "global_running": table["global"]["running"],
        "per_principal_running": table["per_principal"]["running"],
        "per_principal_queued": table["per_principal"]["queued"],
        "nmap_scan_running": table["per_tool"]["nmap_scan"]["running"],
        "nmap_scan_queued": table["per_tool"]["nmap_scan"]["queued"],
    }


async def run(params: dict[str, Any]) -> dict[str, Any]:
    """One run of the latency and throughput figures (params: folder, calls, warmup, burst)."""
    with listener(), fleet(Path(params["folder"])) as the_fleet:
        latency = await interleaved(the_fleet, params["calls"], params["warmup"])
        jobs = await burst(the_fleet.front.url, params["burst"])
        limits = segment_limits(the_fleet.policy)
    unexpected = sum(latency["failures"].values()) + params["burst"] - jobs["completed"]
    return {**latency, "burst": {**jobs, "segment_limits": limits}, "unexpected_errors": unexpected}


def finished_job(number: int, now: float) -> Job:
    """A completed one-port scan of the listener, one second apart going back from `now`."""
    at = now - number
    job = Job(
        scan_id=new_scan_id(at),
        tool="nmap_scan",
        target=TARGET,
        scanned_address=TARGET,
        principal=PRINCIPAL,
        request={"target": TARGET, "ports": str(PORT)},
        argv=["/usr/bin/nmap", "-sT", "-p", str(PORT), TARGET],
        state="running",
        created_at=at - 0.2,
        updated_at=at - 0.2,
        request_id=f"bench-{number:08d}",
        segment=SEGMENT,
        runner=f"{SEGMENT}-1",
    )
    job.move("running", at - 0.2)
    job.move("completed", at)
    job.progress = 100.0
    job.result = {"hosts": [{"address": TARGET, "ports": [{"port": PORT, "state": "open", "service": "http-proxy"}]}]}
    return job


def fill(nats_url: str, count: int) -> dict[str, Any]:
    """`count` finished jobs put into the fleet's default buckets (those the front reads)."""
    bus = BusThread(BusSettings(servers=(nats_url,)))
    bus.start()
    try:
        # Signed as a front signs (the fronts' key of seal_files): the front believes them.
        store = JetStreamJobStore(bus, records=record_seals(None))
        now = time.time()
        started = time.perf_counter()
        for number in range(count):
            store.put(finished_job(number, now))
            if (number + 1) % 2000 == 0:
                log(f"fleet store: {number + 1}/{count} jobs put")
        seconds = time.perf_counter() - started
        stored = store.count()
    finally:
        bus.close()
    return {"jobs": stored, "put_seconds": round(seconds, 2), "put_ms_per_job": round(seconds / count * 1000, 3)}


async def store_run(params: dict[str, Any]) -> dict[str, Any]:
    """`jobs` stored, then `reads` rounds of list_scans through the front and store.page(), then
    one-port scans through the front (a call's cost must not grow with the jobs stored: the
    principal's share is read on every call)."""
    count, reads = int(params["jobs"]), int(params["reads"])
    scans = max(SCANS_WITH_STORE_MIN, reads // 4)
    with listener(), fleet(Path(params["folder"]), stored_jobs=count, standalone=False) as the_fleet:
        idle_rss = memory_bytes(the_fleet.front.pid)["VmRSS"]
        filled = await anyio.to_thread.run_sync(fill, the_fleet.nats_url, count)
        if filled["jobs"] != count:
            raise BenchError(f"the store holds {filled['jobs']} jobs after {count} puts")
        bus = BusThread(BusSettings(servers=(the_fleet.nats_url,)))
        bus.start()
        try:
            store = JetStreamJobStore(bus, records=record_seals(None))  # checks what it reads, as a front does
            where = JobFilter(principal=PRINCIPAL)
            mcp_s: list[float] = []
            page_s: list[float] = []
            shown: set[int] = set()
            async with http_session(the_fleet.front.url, TOKEN, 4) as client:
                for index in range(READ_WARMUP + reads):
                    started = time.perf_counter()
                    result = await client.call_tool("list_scans", {})
                    mcp = time.perf_counter() - started
                    started = time.perf_counter()
                    page = await anyio.to_thread.run_sync(store.page, where, LIST_LIMIT)
                    direct = time.perf_counter() - started
                    if result.is_error or len(page.jobs) != LIST_LIMIT:
                        raise BenchError(f"list_scans failed: {result.content} (page: {len(page.jobs)} jobs)")
                    shown.add(len((result.structured_content or {}).get("scans", [])))
                    if index >= READ_WARMUP:
                        mcp_s.append(mcp)
                        page_s.append(direct)
                scanning = _Side("fleet", client)
                for index in range(READ_WARMUP + scans):
                    await scanning.call(timed=index >= READ_WARMUP)
        finally:
            bus.close()
        rss = memory_bytes(the_fleet.front.pid)
    return {
        "stored_jobs": count,
        "fill": filled,
        "reads": reads,
        "list_limit": LIST_LIMIT,
        "scans_per_page": sorted(shown),
        "list_scans_mcp_ms": summary_ms(mcp_s),
        "store_page_ms": summary_ms(page_s),
        "scan_mcp_ms": summary_ms(scanning.seconds),
        "front_idle_rss_bytes": idle_rss,
        "front_rss_bytes": rss["VmRSS"],
        "front_peak_rss_bytes": rss["VmHWM"],
        "unexpected_errors": (0 if shown == {LIST_LIMIT} else 1) + scanning.failures,
    }
