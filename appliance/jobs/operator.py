"""`appliance jobs ...`: the operator's view of the job store, from a second process.

The CLI opens the same SQLite file as the running appliance. Reads are safe beside it (WAL);
it writes only for `cancel` (a request the appliance acts on, see `Appliance.take_cancel_requests`)
and `purge` (finished jobs only). A job of a running appliance lives in that process, so the CLI
never changes a job the appliance runs; only `cancel --force` changes a job directly, and only
after no appliance picked the request up.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.audit import AuditSink
from appliance.config import EPHEMERAL_DATA_DIR
from appliance.errors import ExecutionError, NotFoundError, ValidationError
from appliance.jobs.manager import JobManager
from appliance.jobs.model import FINISHED, Job
from appliance.jobs.sqlite import DB_NAME, SqliteJobStore
from appliance.jobs.store import JobFilter, JobStore

SCAN_ID = re.compile(r"scan_[0-9a-f]{20}")
# `cancel` waits this long for a running appliance to take its request: it polls every second.
CANCEL_PICKUP_SECONDS = 5.0
# ...and then this long for the stopped scan to end (SIGTERM grace 0.5 s plus parsing).
CANCEL_END_SECONDS = 10.0
# How often `cancel` looks at the store while it waits.
CANCEL_CHECK_SECONDS = 0.1
# `purge` reads the matching jobs in pages of this many.
PURGE_PAGE = 500


def requested_by() -> str:
    """Who a cancel request or a purge came from, as the audit trail shows it."""
    return f"operator-cli uid={os.getuid()}"


def store_dir(explicit: Path | None, configured: Path | None) -> Path:
    """The data directory whose store the running appliance uses: `--data-dir`, else
    APPLIANCE_DATA_DIR, else the ephemeral fallback (the appliance's own order). Never creates one."""
    candidates = [explicit] if explicit is not None else [d for d in (configured, EPHEMERAL_DATA_DIR) if d]
    for directory in candidates:
        if (directory / DB_NAME).is_file():
            return directory
    raise NotFoundError(
        f"no job store ({DB_NAME}) in {' or '.join(str(d) for d in candidates)}",
        rule="store_not_found",
        recovery_suggestion="Pass the appliance's data directory with --data-dir, or set APPLIANCE_DATA_DIR as the "
        "appliance has it; for a container, run it inside: docker exec <container> appliance jobs list",
    )


def open_store(explicit: Path | None, configured: Path | None) -> SqliteJobStore:
    directory = store_dir(explicit, configured)
    try:
        return SqliteJobStore(directory)
    except (OSError, sqlite3.Error) as exc:
        raise ExecutionError(
            f"the job store in {directory} cannot be opened: {exc}",
            rule="store_unreadable",
            recovery_suggestion="Run the command as the appliance's user (UID 65532 in the image), e.g. with "
            "docker exec, so that it can use the store's WAL files.",
        ) from exc


def checked_scan_id(scan_id: str) -> str:
    if not SCAN_ID.fullmatch(scan_id):
        raise ValidationError(
            f"{scan_id[:64]!r} is not a scan id",
            rule="scan_id_invalid",
            recovery_suggestion="Copy a scan_id (scan_ + 20 hex digits) from `appliance jobs list`.",
        )
    return scan_id


def find(store: JobStore, scan_id: str) -> Job:
    job = store.get(checked_scan_id(scan_id))
    if job is None:
        raise NotFoundError(
            f"no scan {scan_id} in this store",
            rule="scan_not_found",
            recovery_suggestion="List the stored scans with `appliance jobs list`; retention or a purge may have "
            "removed it.",
        )
    return job


def utc(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def shown(job: Job) -> dict[str, Any]:
    """The job record with readable UTC times beside the epoch ones."""
    record = job.to_record()
    record["created_at_utc"] = utc(job.created_at)
    record["finished_at_utc"] = utc(job.finished_at)
    record["events"] = [{**event, "at_utc": utc(event.get("at"))} for event in job.events]
    return record


def table(jobs: Iterable[Job]) -> str:
    """`jobs list` for people: one scan a line, newest first."""
    rows = [("SCAN_ID", "TOOL", "STATUS", "PRINCIPAL", "TARGET", "CREATED (UTC)", "PROGRESS")]
    for job in jobs:
        progress = "" if job.progress is None else f"{job.progress:.0f}%"
        created = utc(job.created_at) or ""
        rows.append((job.scan_id, job.tool, job.state, job.principal[:24], job.target[:40], created, progress))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def cancel(
    store: JobStore,
    audit: AuditSink,
    scan_id: str,
    *,
    pickup_seconds: float = CANCEL_PICKUP_SECONDS,
    force: bool = False,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Ask the appliance that runs the job to cancel it and wait for the job to end.

    No appliance takes the request within `pickup_seconds` (none runs on this store, or the job
    was left unfinished by a crash): the request is withdrawn and the job is refused with
    `scan_not_live`, or with `force` marked `cancelled` here (audited, as the appliance would).
    """
    job = find(store, scan_id)
    if job.finished:
        return {"scan_id": job.scan_id, "action": "none", "status": job.state, "message": "already finished"}
    store.request_cancel(job.scan_id, requested_by(), clock())
    # A sharded fleet scan runs as its shards: they get the request; its merge then ends it.
    for shard in job.shards or ():
        store.request_cancel(shard, requested_by(), clock())

    def taken() -> bool:
        return job.scan_id not in store.cancel_requests() or _finished(store, job)

    if _until(taken, pickup_seconds, clock, sleep):
        ended = _until(lambda: _finished(store, job), CANCEL_END_SECONDS, clock, sleep)
        now = find(store, job.scan_id)
        if not ended:
            raise ExecutionError(
                f"the appliance took the cancel request for {job.scan_id}, but it is still {now.state} after "
                f"{CANCEL_END_SECONDS:.0f} s",
                rule="cancel_not_finished",
                recovery_suggestion=f"Check again with `appliance jobs show {job.scan_id}`; the appliance's log says "
                "why the scanner did not stop.",
            )
        message = "cancelled by the running appliance" if now.state == "cancelled" else f"it ended {now.state} first"
        return {"scan_id": job.scan_id, "action": "cancel_requested", "status": now.state, "message": message}
    store.drop_cancel_requests([job.scan_id])
    now = find(store, job.scan_id)
    if now.finished:  # taken in the instant between the last look and the withdrawal
        return {"scan_id": job.scan_id, "action": "cancel_requested", "status": now.state, "message": "ended"}
    if not force:
        raise ExecutionError(
            f"no running appliance took the cancel request for {job.scan_id} ({now.state}) within "
            f"{pickup_seconds:g} s: no appliance on this data directory runs it (a stop or crash left it unfinished)",
            rule="scan_not_live",
            recovery_suggestion="Start the appliance on this data directory (it marks such jobs interrupted at start), "
            f"or mark it cancelled now with `appliance jobs cancel {job.scan_id} --force`.",
        )
    note = f"cancelled by {requested_by()} (--force): no running appliance held this job"
    # The trail first (fails closed), as the appliance does for every state change.
    JobManager(store, audit).audit_state(now, "cancelled", note, strict=True)
    now.move("cancelled", clock(), note)
    store.put(now)
    return {"scan_id": job.scan_id, "action": "marked_cancelled", "status": now.state, "message": note}


def _finished(store: JobStore, job: Job) -> bool:
    current = store.get(job.scan_id)
    return current is None or current.finished


def _until(
    condition: Callable[[], bool], seconds: float, clock: Callable[[], float], sleep: Callable[[float], None]
) -> bool:
    deadline = clock() + seconds
    while not condition():
        if clock() >= deadline:
            return False
        sleep(CANCEL_CHECK_SECONDS)
    return True


def purge_candidates(
    store: JobStore, *, now: float, older_than_days: float | None, principal: str | None, states: list[str] | None
) -> list[Job]:
    """Finished jobs matching the filters (finished longer ago than `older_than_days`)."""
    unfinished = sorted(set(states or ()) - FINISHED)
    if unfinished:
        raise ValidationError(
            f"purge deletes finished scans only; {', '.join(unfinished)} is not a finished state",
            rule="purge_unfinished",
            recovery_suggestion=f"Cancel a running scan first (`appliance jobs cancel`); finished states: "
            f"{', '.join(sorted(FINISHED))}.",
        )
    where = JobFilter(principal=principal, states=frozenset(states) if states else FINISHED)
    cutoff = None if older_than_days is None else now - older_than_days * 86400
    found: list[Job] = []
    cursor: str | None = None
    while True:
        page = store.page(where, PURGE_PAGE, cursor)
        found.extend(
            job
            for job in page.jobs
            if job.finished and (cutoff is None or (job.finished_at is not None and job.finished_at < cutoff))
        )
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor
