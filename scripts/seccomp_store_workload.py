"""The job store's use of SQLite, run INSIDE the appliance image: what its seccomp profile must allow.

Not imported on the host: scripts/seccomp_workloads.py (the `connect-store` trace phase) and
tests/integration/test_seccomp.py pass this file's text to the image's own Python,

    docker run ... --entrypoint /opt/venv/bin/python IMAGE -c "$(cat THIS)" DATA_DIR STEP

so it needs nothing but the standard library. It drives SQLite as the job store does (WAL,
synchronous=NORMAL, one writer, readers on their own connections) and checks every answer; any
refused syscall surfaces as an exception (sqlite3's "disk I/O error", PermissionError) and a
non-zero exit. It prints one JSON object: what it found, for the caller to check.

STEP "first" creates DATA_DIR (mkdir -p, as the store's fallback to /tmp does) and the database,
writes, reads from a second connection, checkpoints, deletes, vacuums, closes and reopens, then
commits one last job and leaves without closing (`os._exit`): a process crash with that commit
only in the WAL. STEP "second" (a new container on the same volume) recovers the WAL, finds every
job of the first step, checks the database's integrity, writes once more and closes cleanly.

Not covered: several processes writing at once (the store has one writer), a power loss (WAL with
synchronous=NORMAL may lose the last commits then; the issue documents that), a full disk.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from pathlib import Path

DB_NAME = "jobs.sqlite3"
SCHEMA_VERSION = 1
JOBS = 40  # enough pages that checkpoints, deletes and vacuums move real data
KEPT = JOBS // 2  # the retention sweep deletes the oldest half
RAW_BYTES = 64 * 1024  # a stored raw scanner output (the store keeps up to 256 KiB by default)
CRASH_MARKER = "job-crash-marker"
BUSY_TIMEOUT_SECONDS = 5.0

SCHEMA = """
CREATE TABLE jobs (
    scan_id TEXT PRIMARY KEY,
    tool TEXT NOT NULL,
    target TEXT NOT NULL,
    principal TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    result TEXT,
    raw BLOB
);
CREATE INDEX jobs_by_principal ON jobs (principal, created DESC, scan_id);
CREATE INDEX jobs_previous ON jobs (tool, target, principal, state, created DESC);
CREATE TABLE events (scan_id TEXT NOT NULL REFERENCES jobs ON DELETE CASCADE, at REAL NOT NULL, state TEXT NOT NULL);
CREATE INDEX events_by_job ON events (scan_id, at);
"""


class WorkloadError(Exception):
    """An answer from SQLite or the file system was not what the store relies on."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise WorkloadError(what)


def connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE), as in the store.
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
    # First: auto_vacuum takes effect only before the database's first page is written, which
    # switching to WAL already does. On an existing database it changes nothing.
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    check(mode == "wal", f"journal_mode is {mode!r}, not 'wal'")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def side_files(path: Path) -> dict[str, int | None]:
    """Sizes of the WAL and shared-memory files beside the database (None: absent)."""
    sizes: dict[str, int | None] = {}
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        sizes[suffix] = side.stat().st_size if side.exists() else None
    return sizes


def count(conn: sqlite3.Connection, state: str | None = None) -> int:
    if state is None:
        return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])
    return int(conn.execute("SELECT count(*) FROM jobs WHERE state = ?", (state,)).fetchone()[0])


def transition(conn: sqlite3.Connection, scan_id: str, state: str, **columns: object) -> None:
    """One state change in one write transaction: the job row and its event."""
    now = time.time()
    assignments = "".join(f", {name} = :{name}" for name in columns)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        f"UPDATE jobs SET state = :state, updated = :now{assignments} WHERE scan_id = :scan_id",  # noqa: S608 - fixed column names
        {"state": state, "now": now, "scan_id": scan_id, **columns},
    )
    conn.execute("INSERT INTO events VALUES (?, ?, ?)", (scan_id, now, state))
    conn.execute("COMMIT")


def insert(conn: sqlite3.Connection, scan_id: str, created: float) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO jobs (scan_id, tool, target, principal, state, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (scan_id, "nmap_scan", "10.77.0.2", "default", "queued", created, created),
    )
    conn.execute("INSERT INTO events VALUES (?, ?, ?)", (scan_id, created, "queued"))
    conn.execute("COMMIT")


def first(path: Path) -> dict[str, object]:
    conn = connect(path)
    conn.executescript(SCHEMA)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    check(conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2, "auto_vacuum is not INCREMENTAL")
    started = time.time()
    for n in range(JOBS):
        scan_id = f"job-{n:03}"
        insert(conn, scan_id, started + n)
        transition(conn, scan_id, "running")
        result = json.dumps({"hosts": [{"address": "10.77.0.2", "ports": [{"port": 8080, "state": "open"}]}]})
        transition(conn, scan_id, "completed", result=result, raw=os.urandom(RAW_BYTES))

    # A reader on its own connection sees the last commit, not a write still in progress.
    reader = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE jobs SET state = 'cancelled' WHERE scan_id = 'job-000'")
    check(count(reader, "completed") == JOBS, "a reader saw an uncommitted write")
    conn.execute("ROLLBACK")
    page = reader.execute(
        "SELECT scan_id FROM jobs WHERE principal = ? ORDER BY created DESC, scan_id LIMIT 10", ("default",)
    ).fetchall()
    check([row[0] for row in page][:2] == [f"job-{JOBS - 1:03}", f"job-{JOBS - 2:03}"], f"newest first: {page}")

    busy, wal_frames, moved = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    check(busy == 0 and wal_frames == moved, f"checkpoint incomplete: {(busy, wal_frames, moved)}")
    check(side_files(path)["-wal"] == 0, "wal_checkpoint(TRUNCATE) left a non-empty WAL")

    # The retention sweep: the oldest half goes (their events with them), then the space is freed.
    conn.execute("BEGIN IMMEDIATE")
    oldest = "SELECT scan_id FROM jobs ORDER BY created LIMIT ?"
    conn.execute(f"DELETE FROM jobs WHERE scan_id IN ({oldest})", (JOBS - KEPT,))  # noqa: S608 - a fixed query
    conn.execute("COMMIT")
    conn.execute("PRAGMA incremental_vacuum")
    check(count(conn) == KEPT, "the sweep kept the wrong number of jobs")
    check(int(conn.execute("SELECT count(*) FROM events").fetchone()[0]) == 3 * KEPT, "events not deleted with jobs")
    reader.close()
    conn.execute("VACUUM")  # rebuilds the file through a temporary database
    conn.close()
    check(side_files(path) == {"-wal": None, "-shm": None}, f"the last close left {side_files(path)}")

    conn = connect(path)
    check(count(conn, "completed") == KEPT, "the reopened database lost jobs")
    check(conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", "integrity_check failed after reopen")
    insert(conn, CRASH_MARKER, time.time())
    # No close: the process ends with that commit in the WAL only, as a crash would leave it.
    return {"jobs": count(conn), "wal_bytes_left": side_files(path)["-wal"]}


def second(path: Path) -> dict[str, object]:
    check(path.exists(), f"{path} is not there: the data did not survive the container")
    wal_found = side_files(path)["-wal"]
    conn = connect(path)  # the first connection recovers the WAL the crash left
    check(conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION, "schema version lost")
    check(conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", "integrity_check failed after recovery")
    marker = conn.execute("SELECT state FROM jobs WHERE scan_id = ?", (CRASH_MARKER,)).fetchone()
    check(marker is not None, "the commit before the crash was lost")
    completed = count(conn, "completed")
    check(completed == KEPT, f"{completed} completed jobs, expected {KEPT}")
    transition(conn, CRASH_MARKER, "interrupted")  # what the store does at start to unfinished jobs
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    jobs = count(conn)
    conn.close()
    check(side_files(path) == {"-wal": None, "-shm": None}, f"the last close left {side_files(path)}")
    return {"jobs": jobs, "completed": completed, "crash_marker": marker[0], "wal_bytes_found": wal_found}


def main() -> None:
    data_dir, step = Path(sys.argv[1]), sys.argv[2]
    data_dir.mkdir(parents=True, exist_ok=True)
    stat = data_dir.stat()
    summary = first(data_dir / DB_NAME) if step == "first" else second(data_dir / DB_NAME)
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
