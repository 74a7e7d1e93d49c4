"""The job store, run INSIDE the appliance image: what its seccomp profile must allow for it.

Not imported on the host: scripts/seccomp_workloads.py (the `connect-store` trace phase) and
tests/integration/test_seccomp.py pass this file's text to the image's own Python,

    docker run ... --entrypoint /opt/venv/bin/python IMAGE -c "$(cat THIS)" DATA_DIR STEP

It opens the store as the server does (`open_store`: DATA_DIR when it is writable, else the
ephemeral fallback on /tmp, which it creates) and drives it through its own API (`SqliteJobStore`:
WAL, synchronous=NORMAL, one writer), plus what SQLite and the operator CLI do beside it on the
same file: a reader on a second connection, a `wal_checkpoint(TRUNCATE)` (an automatic
checkpoint's calls and more), a VACUUM (a temporary file on /tmp). Every answer is checked; any
refused syscall surfaces as an exception (the store's `store_unwritable`, sqlite3's "disk I/O
error", PermissionError) and a non-zero exit. It prints one JSON object, for the caller to check.

STEP "first": 40 jobs each through queued, running, completed with a 64 KiB raw output; pages
newest first with a cursor; the previous completed scan; a retention sweep down to 20; close and
reopen; then one job left running and an exit without closing (`os._exit`): a crash with that
commit only in the WAL. STEP "second" (a new container on the same volume): the store recovers
the WAL, finds every job and the running one, marks it interrupted as the server does at start,
and closes cleanly.

Not covered: a power loss (WAL with synchronous=NORMAL may lose the last commits then), a full
disk (the store's own tests), several writers (the store has one).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from pathlib import Path

from appliance.config import EPHEMERAL_DATA_DIR
from appliance.jobs.model import Job, new_scan_id
from appliance.jobs.sqlite import DB_NAME, SqliteJobStore, open_store
from appliance.jobs.store import JobFilter

JOBS = 40  # enough pages that checkpoints, the sweep and the vacuum move real data
KEPT = JOBS // 2  # the retention sweep keeps the newest half
RAW_BYTES = 64 * 1024  # a stored raw scanner output (the policy's default cap is 256 KiB)
PAGE = 10
PRINCIPAL, TOOL, TARGET = "default", "nmap_scan", "10.77.0.2"
DAY_SECONDS = 86400.0


class WorkloadError(Exception):
    """An answer from the store, SQLite or the file system was not what the server relies on."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise WorkloadError(what)


def side_files(path: Path) -> dict[str, int | None]:
    """Sizes of the WAL and shared-memory files beside the database (None: absent)."""
    sizes: dict[str, int | None] = {}
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        sizes[suffix] = side.stat().st_size if side.exists() else None
    return sizes


def new_job(now: float) -> Job:
    argv = ["/usr/bin/nmap", "-n", "-oX", "-", "-sT", "-p", "8080", TARGET]
    return Job(
        scan_id=new_scan_id(now),
        tool=TOOL,
        target=TARGET,
        scanned_address=TARGET,
        principal=PRINCIPAL,
        request={"target": TARGET, "ports": "8080"},
        argv=argv,
        state="queued",
        created_at=now,
        updated_at=now,
        request_id=os.urandom(8).hex(),
    )


def run_job(store: SqliteJobStore) -> Job:
    """One scan's life in the store: each state change one write, then the raw output."""
    job = new_job(time.time())
    store.put(job)
    job.move("running", time.time())
    store.put(job)
    job.result = {"hosts": [{"address": TARGET, "ports": [{"port": 8080, "state": "open", "service": "http"}]}]}
    job.move("completed", time.time())
    store.put(job)
    store.put_raw(job.scan_id, os.urandom(RAW_BYTES))
    return job


def first(data_dir: Path) -> tuple[dict[str, object], Path]:
    """Returns what it found and the database it used (DATA_DIR's or the fallback's)."""
    store = open_store(data_dir, EPHEMERAL_DATA_DIR)
    check(store.path is not None, "open_store gave an in-memory store")
    path = Path(str(store.path))
    jobs = [run_job(store) for _ in range(JOBS)]
    newest = [job.scan_id for job in reversed(jobs)]

    page = store.page(JobFilter(principal=PRINCIPAL), PAGE)
    check([job.scan_id for job in page.jobs] == newest[:PAGE], "the first page is not the newest jobs, newest first")
    following = store.page(JobFilter(principal=PRINCIPAL, tool=TOOL, target=TARGET), PAGE, page.next_cursor)
    check([job.scan_id for job in following.jobs] == newest[PAGE : 2 * PAGE], "the cursor did not continue the list")
    previous = store.previous_completed(TOOL, TARGET, PRINCIPAL, before=newest[0])
    check(previous is not None and previous.scan_id == newest[1], "previous_completed missed the scan before")

    # The operator CLI's reader on its own connection, and a checkpoint that empties the WAL.
    reader = sqlite3.connect(path, isolation_level=None)
    check(reader.execute("SELECT count(*) FROM jobs").fetchone()[0] == JOBS, "a second connection misses jobs")
    busy, wal_frames, moved = reader.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    check(busy == 0 and wal_frames == moved, f"checkpoint incomplete: {(busy, wal_frames, moved)}")
    check(side_files(path)["-wal"] == 0, "wal_checkpoint(TRUNCATE) left a non-empty WAL")

    swept = store.sweep(time.time(), max_age_seconds=DAY_SECONDS, max_count=KEPT, principal_max=JOBS)
    check(sorted(swept) == sorted(newest[KEPT:]), "the sweep did not delete the oldest jobs")
    reader.execute("VACUUM")  # rebuilds the file through a temporary database on /tmp
    reader.close()
    store.close()
    check(side_files(path) == {"-wal": None, "-shm": None}, f"the last close left {side_files(path)}")

    store = open_store(data_dir, EPHEMERAL_DATA_DIR)
    check(store.count() == KEPT and not store.unfinished(), "the reopened store lost or changed jobs")
    raw = store.raw(newest[0])
    check(raw is not None and len(raw) == RAW_BYTES, "the raw output did not survive the reopen")
    crashed = new_job(time.time())
    crashed.move("running", time.time())
    store.put(crashed)
    # No close: the process ends with that commit in the WAL only, as a crash would leave it.
    return {"store": store.describe(), "running": crashed.scan_id, "wal_bytes_left": side_files(path)["-wal"]}, path


def second(data_dir: Path) -> tuple[dict[str, object], Path]:
    path = data_dir / DB_NAME
    check(path.exists(), "the database is not there: the data did not survive the container")
    wal_found = side_files(path)["-wal"]
    store = open_store(data_dir, EPHEMERAL_DATA_DIR)  # the first connection recovers the WAL
    unfinished = store.unfinished()
    check(len(unfinished) == 1 and unfinished[0].state == "running", f"unfinished after the crash: {unfinished}")
    (crashed,) = unfinished
    crashed.move("interrupted", time.time(), "the appliance stopped while it ran")  # what the server does at start
    store.put(crashed)
    counts = store.counts()
    check(counts == {"completed": KEPT, "interrupted": 1}, f"jobs after recovery: {counts}")
    described = store.describe()
    store.close()
    check(side_files(path) == {"-wal": None, "-shm": None}, f"the last close left {side_files(path)}")
    return {"store": described, "interrupted": crashed.scan_id, "counts": counts, "wal_bytes_found": wal_found}, path


def main() -> None:
    data_dir, step = Path(sys.argv[1]), sys.argv[2]
    summary, database = first(data_dir) if step == "first" else second(data_dir)
    stat = database.parent.stat()
    summary |= {
        "step": step,
        "sqlite_version": sqlite3.sqlite_version,
        "data_dir_uid": stat.st_uid,
        "data_dir_mode": oct(stat.st_mode & 0o7777),
    }
    print(json.dumps(summary), flush=True)
    if step == "first":
        os._exit(0)  # the crash: no close, no atexit, no garbage collection of the connection


if __name__ == "__main__":
    main()
