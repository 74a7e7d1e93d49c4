"""The embedded job store: one SQLite file under the data directory.

WAL with `synchronous=NORMAL`: a commit is in the WAL file before the call returns, so a job
survives the process crashing or being killed at any point; a power loss can lose the last
commits before the next checkpoint (SQLite: "durability is traded for speed"). Readme: "Store".
One writer: the appliance process. The operator CLI opens the same file for reads, `cancel`
(a row in `cancel_requests` the running appliance picks up) and `purge`; SQLite's locking and
a busy timeout make that safe.

Schema versions live in `PRAGMA user_version`; each migration moves one version up inside one
transaction, so a store is always at a version this code knows, or refused.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path

from appliance.errors import ExecutionError
from appliance.jobs.model import UNFINISHED, Job, target_key
from appliance.jobs.store import JobFilter, JobPage, take_oldest

log = logging.getLogger(__name__)

DB_NAME = "jobs.sqlite3"
# Below this much free space the store refuses new scans instead of failing half-way through one.
MIN_FREE_BYTES = 8 * 1024 * 1024
# A CLI transaction holding the lock makes a write wait this long before it fails.
BUSY_TIMEOUT_MS = 2000

_V1 = """
CREATE TABLE jobs (
    scan_id TEXT PRIMARY KEY,
    principal TEXT NOT NULL,
    tool TEXT NOT NULL,
    target_key TEXT NOT NULL,
    state TEXT NOT NULL,
    record TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX jobs_by_principal ON jobs (principal, scan_id);
CREATE INDEX jobs_by_subject ON jobs (principal, tool, target_key, state, scan_id);
CREATE INDEX jobs_by_state ON jobs (state);
CREATE TABLE raw (scan_id TEXT PRIMARY KEY, output BLOB NOT NULL) WITHOUT ROWID;
"""
# v2: retention by age read every record's JSON; a column with its own index makes it one range.
_V2 = """
ALTER TABLE jobs ADD COLUMN finished_at REAL;
UPDATE jobs SET finished_at = json_extract(record, '$.finished_at');
CREATE INDEX jobs_by_finish ON jobs (finished_at) WHERE finished_at IS NOT NULL;
"""
# v3: `appliance jobs cancel` runs in another process than the scan; it leaves a request here
# that the running appliance polls for (its primary key is the index of that poll).
_V3 = """
CREATE TABLE cancel_requests (
    scan_id TEXT PRIMARY KEY,
    requested_at REAL NOT NULL,
    requested_by TEXT NOT NULL
) WITHOUT ROWID;
"""
# v4: engagements (policy version 3): a scan is readable by its engagement's principals, so
# list_scans selects by engagement too; jobs stored before have none.
_V4 = """
ALTER TABLE jobs ADD COLUMN engagement TEXT;
UPDATE jobs SET engagement = json_extract(record, '$.engagement');
CREATE INDEX jobs_by_engagement ON jobs (engagement, scan_id) WHERE engagement IS NOT NULL;
"""
MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4)  # MIGRATIONS[n] takes a store from version n to n + 1
SCHEMA_VERSION = len(MIGRATIONS)


def _store_error(action: str, exc: sqlite3.Error) -> ExecutionError:
    full = isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)
    return ExecutionError(
        f"the job store could not {action}: {exc}",
        rule="store_full" if full else "store_unwritable",
        recovery_suggestion="Retry later; the operator must free space on or fix the appliance's data volume "
        "(APPLIANCE_DATA_DIR). Running scans and stored results are kept.",
    )


class SqliteJobStore:
    def __init__(
        self, directory: Path | None, *, ephemeral: bool = False, min_free_bytes: int = MIN_FREE_BYTES
    ) -> None:
        """`directory` None: an in-memory store (tests, the `check` CLI), gone with the process."""
        self.directory = directory
        self.path = None if directory is None else directory / DB_NAME
        self.ephemeral = ephemeral or directory is None
        self.min_free_bytes = min_free_bytes
        self._fault: tuple[str, str] | None = None
        self._broken: tuple[str, str] | None = None  # see `unavailable`
        if directory is not None:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Autocommit: each statement is its own transaction unless `_write` opens one.
        self._db = sqlite3.connect(
            ":memory:" if self.path is None else self.path, isolation_level=None, check_same_thread=False
        )
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self.migrate()

    @classmethod
    def unavailable(cls, directory: Path, reason: str) -> SqliteJobStore:
        """A store that takes no writes and says why (every write-side check reports `reason`).
        The scans already in `directory` stay readable: its file is opened read-only and
        immutable (a read-only file system cannot hold WAL's shared-memory file)."""
        store = cls(None)
        store.ephemeral = False
        store._broken = (
            "store_unwritable",
            f"the data directory {directory} cannot hold the job store ({reason}); fix the volume and restart",
        )
        store._fault = store._broken
        store.path = directory / DB_NAME
        if store.path.is_file():
            old = _read_only(store.path)
            if old is not None and int(old.execute("PRAGMA user_version").fetchone()[0]) == SCHEMA_VERSION:
                store._db.close()
                store._db = old
            elif old is not None:  # an older schema needs its migration, which needs writes
                old.close()
        return store

    # --- schema ----------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        version = self.version
        if version > SCHEMA_VERSION:
            raise ExecutionError(
                f"the job store {self.path} is at schema version {version}; this appliance knows up to "
                f"{SCHEMA_VERSION}",
                rule="store_schema_newer",
                recovery_suggestion="Run the appliance version that wrote this store, or point APPLIANCE_DATA_DIR "
                "at a new directory.",
            )
        for step in range(version, SCHEMA_VERSION):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(str.strip, MIGRATIONS[step].split(";")):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {step + 1}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            log.info("job store migrated", extra={"from_version": step, "to_version": step + 1})

    # --- writes ----------------------------------------------------------------------------
    def _write(self, action: str, statements: Callable[[sqlite3.Connection], object]) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                statements(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            error = _store_error(action, exc)
            self._fault = (error.rule, error.message)
            raise error from exc
        self._fault = self._broken

    def put(self, job: Job, raw: bytes | None = None, *, new: bool = False) -> None:
        # `new` changes nothing here: INSERT OR REPLACE reads nothing back either way.
        record = json.dumps(job.to_record(), separators=(",", ":"))

        def statements(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO jobs"
                " (scan_id, principal, tool, target_key, state, finished_at, engagement, record)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.scan_id,
                    job.principal,
                    job.tool,
                    target_key(job.target),
                    job.state,
                    job.finished_at,
                    job.engagement,
                    record,
                ),
            )
            if raw is not None:
                db.execute("INSERT OR REPLACE INTO raw (scan_id, output) VALUES (?, ?)", (job.scan_id, raw))

        self._write(f"record scan {job.scan_id}", statements)

    def put_state(self, job: Job) -> None:
        # The request, argv and findings so far are not encoded and written again for a state
        # change (SQLite patches the record in place).
        updated = 0

        def statements(db: sqlite3.Connection) -> None:
            nonlocal updated
            # Values go in as JSON text: a bound REAL would come out of json_set with 15 digits.
            values = [json.dumps(v, separators=(",", ":")) for v in (job.updated_at, job.finished_at, job.progress)]
            updated = db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, record = json_set(record, '$.state', ?,"
                " '$.updated_at', json(?), '$.finished_at', json(?), '$.progress', json(?), '$.events', json(?))"
                " WHERE scan_id = ?",
                (
                    job.state,
                    job.finished_at,
                    job.state,
                    *values,
                    json.dumps(job.events, separators=(",", ":")),
                    job.scan_id,
                ),
            ).rowcount

        self._write(f"record the state of scan {job.scan_id}", statements)
        if not updated:
            self.put(job)

    def put_raw(self, scan_id: str, output: bytes) -> None:
        self._write(
            f"record the raw output of {scan_id}",
            lambda db: db.execute("INSERT OR REPLACE INTO raw (scan_id, output) VALUES (?, ?)", (scan_id, output)),
        )

    def delete(self, scan_ids: Iterable[str]) -> int:
        ids = [(scan_id,) for scan_id in scan_ids]
        removed = 0

        def statements(db: sqlite3.Connection) -> None:
            nonlocal removed
            removed = db.executemany("DELETE FROM jobs WHERE scan_id = ?", ids).rowcount
            db.executemany("DELETE FROM raw WHERE scan_id = ?", ids)

        if ids:
            self._write("delete scans", statements)
        return removed

    # --- cancel requests (operator CLI -> running appliance) --------------------------------
    def request_cancel(self, scan_id: str, requested_by: str, now: float) -> None:
        self._write(
            f"record a cancel request for {scan_id}",
            lambda db: db.execute(
                "INSERT OR REPLACE INTO cancel_requests (scan_id, requested_at, requested_by) VALUES (?, ?, ?)",
                (scan_id, now, requested_by),
            ),
        )

    def cancel_requests(self) -> dict[str, str]:
        try:
            rows = self._db.execute("SELECT scan_id, requested_by FROM cancel_requests").fetchall()
        except sqlite3.Error as exc:
            raise _store_error("read cancel requests", exc) from exc
        return {scan_id: by for scan_id, by in rows}

    def drop_cancel_requests(self, scan_ids: Iterable[str]) -> None:
        ids = [(scan_id,) for scan_id in scan_ids]
        if ids:
            self._write(
                "drop cancel requests", lambda db: db.executemany("DELETE FROM cancel_requests WHERE scan_id = ?", ids)
            )

    # --- reads -----------------------------------------------------------------------------
    @staticmethod
    def _jobs(rows: Iterable[tuple[str]]) -> list[Job]:
        return [Job.from_record(json.loads(row[0])) for row in rows]

    def get(self, scan_id: str) -> Job | None:
        rows = self._db.execute("SELECT record FROM jobs WHERE scan_id = ?", (scan_id,)).fetchall()
        jobs = self._jobs(rows)
        return jobs[0] if jobs else None

    def raw(self, scan_id: str) -> bytes | None:
        row = self._db.execute("SELECT output FROM raw WHERE scan_id = ?", (scan_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def page(self, where: JobFilter, limit: int, cursor: str | None = None) -> JobPage:
        clauses: list[str] = []
        values: list[object] = []
        if where.principal is not None and where.engagements:
            marks = ", ".join("?" * len(where.engagements))
            clauses.append(f"(principal = ? OR engagement IN ({marks}))")
            values.extend([where.principal, *sorted(where.engagements)])
        elif where.principal is not None:
            clauses.append("principal = ?")
            values.append(where.principal)
        if where.tool is not None:
            clauses.append("tool = ?")
            values.append(where.tool)
        if where.target is not None:
            clauses.append("target_key = ?")
            values.append(target_key(where.target))
        if where.states is not None:
            clauses.append(f"state IN ({', '.join('?' * len(where.states))})")
            values.extend(sorted(where.states))
        if cursor is not None:
            clauses.append("scan_id < ?")
            values.append(cursor)
        # Only fixed column names and `?` placeholders are joined in; every value is bound (S608).
        where_sql = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT record FROM jobs{where_sql} ORDER BY scan_id DESC LIMIT ?"  # noqa: S608
        rows = self._db.execute(sql, (*values, limit + 1)).fetchall()
        jobs = self._jobs(rows[:limit])
        return JobPage(jobs, jobs[-1].scan_id if len(rows) > limit else None)

    def previous_completed_id(self, tool: str, target: str, principal: str, before: str) -> str | None:
        # The index alone answers (jobs_by_subject holds scan_id): no record is read or decoded.
        row = self._db.execute(
            "SELECT scan_id FROM jobs WHERE principal = ? AND tool = ? AND target_key = ? AND state = 'completed'"
            " AND scan_id < ? ORDER BY scan_id DESC LIMIT 1",
            (principal, tool, target_key(target), before),
        ).fetchone()
        return None if row is None else str(row[0])

    def previous_completed(self, tool: str, target: str, principal: str, before: str) -> Job | None:
        scan_id = self.previous_completed_id(tool, target, principal, before)
        return None if scan_id is None else self.get(scan_id)

    def count(self, principal: str | None = None) -> int:
        if principal is None:
            return int(self._db.execute("SELECT count(*) FROM jobs").fetchone()[0])
        return int(self._db.execute("SELECT count(*) FROM jobs WHERE principal = ?", (principal,)).fetchone()[0])

    def counts(self) -> dict[str, int]:
        return {state: int(n) for state, n in self._db.execute("SELECT state, count(*) FROM jobs GROUP BY state")}

    def unfinished(self) -> list[Job]:
        marks = ", ".join("?" * len(UNFINISHED))
        rows = self._db.execute(
            f"SELECT record FROM jobs WHERE state IN ({marks}) ORDER BY scan_id",  # noqa: S608 - placeholders only
            sorted(UNFINISHED),
        ).fetchall()
        return self._jobs(rows)

    # --- retention -------------------------------------------------------------------------
    def sweep(self, now: float, max_age_seconds: float, max_count: int, principal_max: int) -> list[str]:
        db = self._db
        doomed = [r[0] for r in db.execute("SELECT scan_id FROM jobs WHERE finished_at < ?", (now - max_age_seconds,))]
        gone = set(doomed)
        oldest_finished = "SELECT scan_id FROM jobs WHERE finished_at IS NOT NULL{} ORDER BY scan_id"
        over = self.count() - len(doomed) - max_count
        if over > 0:
            take_oldest((r[0] for r in db.execute(oldest_finished.format(""))), over, doomed, gone)
        for principal, total in db.execute(
            "SELECT principal, count(*) FROM jobs GROUP BY principal HAVING count(*) > ?", (principal_max,)
        ).fetchall():
            finished = db.execute(oldest_finished.format(" AND principal = ?"), (principal,)).fetchall()
            over = total - principal_max - sum(1 for (scan_id,) in finished if scan_id in gone)
            take_oldest((r[0] for r in finished), over, doomed, gone)
        self.delete(doomed)
        return doomed

    # --- health ----------------------------------------------------------------------------
    def writable(self) -> tuple[str, str] | None:
        # The last write's failure until a write succeeds; new scans still try to write (see
        # `space_problem`), so a freed disk heals without a restart.
        return self._fault or self.space_problem()

    def space_problem(self) -> tuple[str, str] | None:
        if self._broken is not None:
            return self._broken
        if self.directory is None:
            return None
        try:
            stat = os.statvfs(self.directory)
        except OSError as exc:
            return "store_unwritable", f"the data directory {self.directory} cannot be read: {exc.strerror}"
        free = stat.f_bavail * stat.f_frsize
        if free < self.min_free_bytes:
            return "store_full", (
                f"the data directory {self.directory} has {free // 1024} KiB free, below the "
                f"{self.min_free_bytes // 1024} KiB the store keeps in reserve"
            )
        return None

    def describe(self) -> dict[str, object]:
        """For /healthz: where the store is, whether it outlives the container, and its state."""
        problem = self.writable()
        return {
            "kind": "unavailable" if self._broken else "ephemeral" if self.ephemeral else "durable",
            "path": None if self.path is None else str(self.path),
            "schema_version": self.version,
            "jobs": self.count(),
            "problem": None if problem is None else problem[1],
            "rule": None if problem is None else problem[0],
        }

    def close(self) -> None:
        # Fold the WAL into the database file at a clean stop: the file alone then holds every
        # job (what a read-only reopen, a backup or a copy of the volume sees).
        if self._broken is None and self.path is not None:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("job store checkpoint at close failed", extra={"reason": str(exc)})
        self._db.close()


def _read_only(path: Path) -> sqlite3.Connection | None:
    """The store file for reading only, WAL included when its -shm and -wal files are there (a
    volume a crashed appliance left, now mounted read-only); else the file alone (immutable:
    what a clean stop left, whose close folded the WAL in)."""
    for query in ("mode=ro", "mode=ro&immutable=1"):
        db = None
        try:
            db = sqlite3.connect(f"file:{path}?{query}", uri=True, isolation_level=None, check_same_thread=False)
            db.execute("SELECT count(*) FROM jobs").fetchone()
        except sqlite3.Error as exc:
            if db is not None:
                db.close()
            log.warning(
                "stored scans not readable this way", extra={"path": str(path), "how": query, "reason": str(exc)}
            )
            continue
        return db
    return None


def open_store(wanted: Path | None, fallback: Path) -> SqliteJobStore:
    """The store in `wanted` when it can be written there; else, when nothing was mounted there
    (the image's own folder on its read-only root: a plain `docker run --rm`), an ephemeral one
    in `fallback`. A data dir the operator mounted that cannot be used is not replaced by a
    temporary store that would lose every scan: the store is `unavailable` (new scans refused
    with `store_unwritable`, readiness 503) until the mount is fixed and the appliance restarted.
    A store written by a newer version is refused at start (`store_schema_newer`)."""
    if wanted is not None:
        mounted = os.path.ismount(wanted)
        try:
            wanted.mkdir(mode=0o700, parents=True, exist_ok=True)
            if os.access(wanted, os.W_OK | os.X_OK):
                return SqliteJobStore(wanted)
            reason = "not writable by this user"
        except (OSError, sqlite3.Error) as exc:
            reason = str(exc)
        if mounted:
            log.error(
                "the mounted data directory cannot hold the job store; new scans are refused",
                extra={"data_dir": str(wanted), "reason": reason},
            )
            return SqliteJobStore.unavailable(wanted, reason)
        log.warning(
            "data directory unusable; scans are kept in an ephemeral store lost with the container",
            extra={"data_dir": str(wanted), "reason": reason, "ephemeral_dir": str(fallback)},
        )
    return SqliteJobStore(fallback, ephemeral=True)
