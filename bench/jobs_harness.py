"""Runs inside the appliance image (`python -c` of this file's text, see bench/jobs.py): the job
store's part of a synchronous scan call, with the appliance's own classes on the data volume.

It imports only the appliance package and the standard library (the image has no `bench`).
One JSON request on stdin, one JSON answer on stdout:

- `{"mode": "calls", ...}`: `calls` (+ `warmup`) synchronous calls' job bookkeeping, each step
  timed with time.perf_counter; per call the seconds of every step (`create`), of every store
  method (`store.put`, summed over the call) and the thread's CPU time (`cpu.total`).
- `{"mode": "populate", ...}`: `jobs` calls' bookkeeping with a clock that walks forward one
  minute per job (so ids, times and retention look like weeks of use), over several targets and
  principals; the scan ids of each principal and the store's size on disk.

The sequence is the one `ScanService.call` and `_finish_run` make for a scan that completes
within its wait (appliance/service.py), minus the scanner and its parsing (which ran before the
job store existed): `admissible` (free space check), `create` (audit line, put), `running`
(put), the job fields on the report and its one JSON dump, `changes_since` (previous_completed_id
and a diff), and `finish` (put of the final record with the raw output, one commit).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from appliance.audit import AuditSink
from appliance.jobs.manager import JobManager
from appliance.jobs.queries import changes_since
from appliance.jobs.sqlite import SqliteJobStore
from appliance.jobs.views import job_fields
from appliance.parsers.nmap_xml import NmapStream
from appliance.policy.targets import CheckedTarget
from appliance.results import ScanReport
from appliance.runner import RunResult
from appliance.tools import nmap
from appliance.tools.base import ScanPlan

# The image's audit default is stderr; the benchmark writes to a file on the container's /tmp
# tmpfs instead, so the figure includes a real write(2) but not docker's log pipe.
AUDIT_PATH = Path("/tmp/bench-audit.jsonl")  # noqa: S108 - the container's private tmpfs
STORE_METHODS = ("space_problem", "put", "previous_completed_id")
STEPS = ("admissible", "create", "running", "result_fields", "changes_since", "finish")


class TimedStore:
    """The real SqliteJobStore, with the time of each call to the methods a call path uses."""

    def __init__(self, store: SqliteJobStore) -> None:
        self._store = store
        self.seconds: dict[str, float] = {}

    def reset(self) -> None:
        self.seconds = dict.fromkeys(STORE_METHODS, 0.0)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if name not in STORE_METHODS:
            return attribute

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

        return timed


class Clock:
    """time.time, or a clock that a populate run moves forward job by job."""

    def __init__(self, start: float | None) -> None:
        self.now = start

    def __call__(self) -> float:
        return time.time() if self.now is None else self.now


def plan_for(target: str, xml_ports: str) -> ScanPlan:
    argv: tuple[str, ...] = ("/usr/bin/nmap", "-n", "-oX", "-", "--stats-every", "2s", "--unprivileged")
    argv += ("-sT", "-sV", "-p", xml_ports, "-T3", "--max-rate", "1000", target)
    checked = CheckedTarget(requested=target, kind="cidr", scan_arg=target, hostname=None, addresses=(), host_count=16)
    arguments = {"target": target, "ports": xml_ports, "scan_type": "version"}
    return ScanPlan(
        tool=nmap.TOOL, target=checked, argv=argv, timeout_seconds=120, arguments=arguments, findings=NmapStream
    )


def report_for(plan: ScanPlan, xml: bytes, request_id: str) -> ScanReport:
    """What the scanner's run gave: nmap_scan's own result assembly from the XML (not timed)."""
    run = RunResult(plan.argv, 0, xml, b"", stdout_truncated=False, timed_out=False, duration_seconds=4.2, pid=1)
    return nmap.finish(plan, request_id, run)


@contextmanager
def step(seconds: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - started


def synchronous_call(
    manager: JobManager, plan: ScanPlan, report: ScanReport, raw: bytes, owner: str, number: int
) -> dict[str, float]:
    """One completed synchronous call's job bookkeeping, as the service does it; seconds per step."""
    seconds: dict[str, float] = {}
    request_id = f"bench-{number:08d}"
    # CPU time of this thread beside the wall clock: on a busy machine the wall clock also counts
    # the time spent waiting for a CPU, the CPU time does not.
    cpu_started = time.thread_time()
    with step(seconds, "admissible"):
        manager.admissible()
    with step(seconds, "create"):
        live = manager.create(
            tool=plan.tool,
            target=plan.target.requested,
            scanned_address=plan.target.scan_arg,
            owner=owner,
            request=dict(plan.arguments),
            argv=list(plan.argv),
            request_id=request_id,
        )
    with step(seconds, "running"):
        manager.running(live)
    job = live.job
    with step(seconds, "result_fields"):
        ended = {"status": "completed", "progress": 100.0, "retry_after_seconds": None, "request_id": request_id}
        final = report.model_copy(update={**job_fields(job, time.time()), **ended})
        dumped = final.model_dump(mode="json")
    with step(seconds, "changes_since"):
        dumped["changes_since_previous"] = changes_since(manager, job, dumped)
        final = final.model_copy(update={"changes_since_previous": dumped["changes_since_previous"]})
    with step(seconds, "finish"):
        manager.finish(live, "completed", result=dumped, raw=raw)
    seconds["cpu.total"] = time.thread_time() - cpu_started
    return seconds


def _open(request: dict[str, Any], clock: Clock) -> tuple[SqliteJobStore, TimedStore, JobManager]:
    store = SqliteJobStore(Path(request["data_dir"]))
    timed = TimedStore(store)
    audit = AuditSink(Path(request.get("audit_path", AUDIT_PATH)))
    # TimedStore passes every JobStore method through to the real store.
    manager = JobManager(timed, audit, clock=clock)
    return store, timed, manager


def _reports(request: dict[str, Any], targets: list[str]) -> dict[tuple[str, int], tuple[ScanPlan, ScanReport, bytes]]:
    """Each target's plan and parsed report per XML variant (parsed once, outside the timing)."""
    out: dict[tuple[str, int], tuple[ScanPlan, ScanReport, bytes]] = {}
    for target in targets:
        plan = plan_for(target, request["ports"])
        for index, xml in enumerate(request["xml"]):
            raw = xml.encode()
            out[target, index] = plan, report_for(plan, raw, "parse"), raw
    return out


def calls(request: dict[str, Any]) -> dict[str, Any]:
    clock = Clock(None)
    store, timed, manager = _open(request, clock)
    reports = _reports(request, [request["target"]])
    variants = len(request["xml"])
    per_call: list[dict[str, float]] = []
    for number in range(request["warmup"] + request["calls"]):
        # The variants alternate: each rescan differs from the previous one, so the diff has entries.
        plan, report, raw = reports[request["target"], number % variants]
        timed.reset()
        seconds = synchronous_call(manager, plan, report, raw, request["owner"], number)
        if number >= request["warmup"]:
            per_call.append({**seconds, **{f"store.{k}": v for k, v in timed.seconds.items()}})
    jobs = store.count()
    store.close()
    audit_bytes = Path(request.get("audit_path", AUDIT_PATH)).stat().st_size
    return {"per_call": per_call, "jobs_in_store": jobs, "audit_bytes": audit_bytes}


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def populate(request: dict[str, Any]) -> dict[str, Any]:
    count = int(request["jobs"])
    clock = Clock(time.time() - count * request["seconds_between_jobs"])
    store, _, manager = _open(request, clock)
    targets: list[str] = request["targets"]
    principals: list[str] = request["principals"]
    reports = _reports(request, targets)
    variants = len(request["xml"])
    started = time.perf_counter()
    for number in range(count):
        clock.now = (clock.now or 0.0) + request["seconds_between_jobs"]
        target = targets[number % len(targets)]
        owner = principals[(number // len(targets)) % len(principals)]
        plan, report, raw = reports[target, (number // (len(targets) * len(principals))) % variants]
        synchronous_call(manager, plan, report, raw, owner, number)
    seconds = time.perf_counter() - started
    db = store.path
    assert db is not None
    # Sizes while the appliance's connection is still open: closing the last one checkpoints
    # and removes the WAL, which a running appliance never does.
    answer: dict[str, Any] = {
        "jobs": store.count(),
        "seconds": seconds,
        "db_bytes": _size(db),
        "wal_bytes": _size(db.with_name(db.name + "-wal")),
        "shm_bytes": _size(db.with_name(db.name + "-shm")),
    }
    with closing(sqlite3.connect(db)) as reader:
        answer["record_bytes"] = int(reader.execute("SELECT coalesce(sum(length(record)), 0) FROM jobs").fetchone()[0])
        answer["raw_bytes"] = int(reader.execute("SELECT coalesce(sum(length(output)), 0) FROM raw").fetchone()[0])
        answer["page_size"] = int(reader.execute("PRAGMA page_size").fetchone()[0])
        answer["ids"] = {
            principal: [row[0] for row in reader.execute("SELECT scan_id FROM jobs WHERE principal = ?", (principal,))]
            for principal in principals
        }
    store.close()
    return answer


MODES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"calls": calls, "populate": populate}


def main() -> None:
    request = json.loads(sys.stdin.read())
    answer = MODES[request["mode"]](request)
    answer["pid"] = os.getpid()
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
