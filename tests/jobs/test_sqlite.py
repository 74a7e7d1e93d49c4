"""The SQLite job store: the written-down queries, retention, durability, schema versions."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.jobs import stored_job

from appliance.audit import AuditSink
from appliance.errors import ExecutionError
from appliance.jobs.manager import JobManager
from appliance.jobs.model import Job, JobState
from appliance.jobs.sqlite import DB_NAME, MIGRATIONS, SCHEMA_VERSION, SqliteJobStore, open_store
from appliance.jobs.store import JobFilter

REPO = Path(__file__).resolve().parents[2]


def job(state: JobState = "completed", *, target: str = "10.20.0.5", **fields: Any) -> Job:
    return stored_job(state, target=target, **fields)


@pytest.fixture
def store(tmp_path: Path) -> SqliteJobStore:
    return SqliteJobStore(tmp_path / "data")


def test_store_uses_wal_and_normal_sync_and_is_at_the_current_schema(store: SqliteJobStore) -> None:
    db = sqlite3.connect(store.path)  # type: ignore[arg-type]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert store.version == SCHEMA_VERSION == len(MIGRATIONS)


def test_previous_completed_after_a_restart_reads_the_record_the_last_process_stored(tmp_path: Path) -> None:
    first = SqliteJobStore(tmp_path / "data")
    old = job(at=1_000_000.0, result={"hosts": [{"address": "10.20.0.5", "status": "up"}]})
    first.put(old)
    first.close()
    # A new process: nothing in memory, the store file alone answers.
    again = SqliteJobStore(tmp_path / "data")
    previous = again.previous_completed("nmap_scan", "10.20.0.5", "alice", job("running", at=1_000_050.0).scan_id)
    assert previous == old


def test_a_running_job_is_stored_by_its_state_alone(tmp_path: Path) -> None:
    written: list[str] = []

    class Recording(SqliteJobStore):
        def put(self, job: Job, raw: bytes | None = None, *, new: bool = False) -> None:
            written.append(f"put {job.state}")
            super().put(job, raw, new=new)

        def put_state(self, job: Job) -> None:
            written.append(f"put_state {job.state}")
            super().put_state(job)

    store = Recording(tmp_path / "data")
    jobs = JobManager(store, AuditSink(tmp_path / "audit.jsonl"))
    live = jobs.create(
        tool="nmap_scan",
        target="10.20.0.5",
        scanned_address="10.20.0.5",
        owner="alice",
        request={"target": "10.20.0.5"},
        argv=["/usr/bin/nmap", "10.20.0.5"],
        request_id="rid",
    )
    jobs.running(live)
    assert store.get(live.job.scan_id) == live.job
    jobs.finish(live, "completed", result={"hosts": []})
    assert written == ["put queued", "put_state running", "put completed"]
    assert store.get(live.job.scan_id) == live.job


def test_a_write_the_database_refuses_is_store_unwritable_and_reported_by_writable(store: SqliteJobStore) -> None:
    store._db.execute("PRAGMA query_only = ON")  # every write now fails as on a read-only file

    with pytest.raises(ExecutionError) as refused:
        store.put(job())

    assert refused.value.rule == "store_unwritable"
    problem = store.writable()
    assert problem is not None
    assert problem[0] == "store_unwritable"


def test_free_space_below_the_reserve_is_store_full(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "data", min_free_bytes=2**62)

    problem = store.writable()

    assert problem is not None
    assert problem[0] == "store_full"
    assert "free" in problem[1]


def test_a_store_newer_than_this_code_is_refused_not_downgraded(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = sqlite3.connect(data / DB_NAME)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()

    with pytest.raises(ExecutionError) as refused:
        SqliteJobStore(data)

    assert refused.value.rule == "store_schema_newer"


def test_migration_from_schema_1_keeps_every_job_and_fills_the_new_column(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = sqlite3.connect(data / DB_NAME, isolation_level=None)
    db.executescript(MIGRATIONS[0])
    db.execute("PRAGMA user_version = 1")
    jobs = [job(at=1_000.0 + i) for i in range(3)] + [job("running", at=2_000.0)]
    for each in jobs:
        db.execute(
            "INSERT INTO jobs (scan_id, principal, tool, target_key, state, record) VALUES (?, ?, ?, ?, ?, ?)",
            (each.scan_id, each.principal, each.tool, each.target, each.state, json.dumps(each.to_record())),
        )
    db.close()

    store = SqliteJobStore(data)

    assert store.version == SCHEMA_VERSION
    assert [store.get(j.scan_id) for j in jobs] == jobs
    # The new column works: an age sweep finds the finished ones by it, never the running one.
    assert sorted(store.sweep(now=1e9, max_age_seconds=1, max_count=100, principal_max=100)) == sorted(
        j.scan_id for j in jobs[:3]
    )


def test_migration_from_schema_2_keeps_every_job_and_adds_cancel_requests(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = sqlite3.connect(data / DB_NAME, isolation_level=None)
    db.executescript(MIGRATIONS[0] + MIGRATIONS[1])
    db.execute("PRAGMA user_version = 2")
    jobs = [job(at=1_000.0 + i) for i in range(3)] + [job("running", at=2_000.0)]
    for each in jobs:
        db.execute(
            "INSERT INTO jobs (scan_id, principal, tool, target_key, state, finished_at, record)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                each.scan_id,
                each.principal,
                each.tool,
                each.target,
                each.state,
                each.finished_at,
                json.dumps(each.to_record()),
            ),
        )
    db.close()
    with pytest.raises(sqlite3.OperationalError):  # a v2 store has no cancel table yet
        sqlite3.connect(data / DB_NAME).execute("SELECT * FROM cancel_requests")

    store = SqliteJobStore(data)

    assert store.version == SCHEMA_VERSION == 4
    assert [store.get(j.scan_id) for j in jobs] == jobs
    assert store.cancel_requests() == {}
    store.request_cancel(jobs[3].scan_id, "operator-cli uid=0", 3_000.0)
    assert store.cancel_requests() == {jobs[3].scan_id: "operator-cli uid=0"}


def test_a_job_committed_before_the_process_is_killed_survives(tmp_path: Path) -> None:
    data = tmp_path / "data"
    script = (
        "import os, sys, signal\n"
        "from appliance.jobs.sqlite import SqliteJobStore\n"
        "from appliance.jobs.model import Job\n"
        "store = SqliteJobStore(__import__('pathlib').Path(sys.argv[1]))\n"
        "job = Job(scan_id='scan_0000000000010000000a', tool='nmap_scan', target='10.20.0.5',"
        " scanned_address='10.20.0.5', principal='alice', request={}, argv=[], state='running',"
        " created_at=1.0, updated_at=1.0, request_id='r')\n"
        "store.put(job)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(data)], cwd=REPO, check=False, timeout=60)

    assert done.returncode == -signal.SIGKILL
    reopened = SqliteJobStore(data)
    survivor = reopened.get("scan_0000000000010000000a")
    assert survivor is not None
    assert survivor.state == "running"


def test_open_store_falls_back_to_an_ephemeral_store_when_the_data_dir_is_not_writable(tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("x")

    store = open_store(blocked / "data", tmp_path / "ephemeral")

    assert store.ephemeral
    assert store.describe()["kind"] == "ephemeral"
    assert store.path == tmp_path / "ephemeral" / DB_NAME


def test_open_store_uses_a_writable_data_dir_durably(tmp_path: Path) -> None:
    store = open_store(tmp_path / "data", tmp_path / "ephemeral")

    assert not store.ephemeral
    assert store.describe()["kind"] == "durable"
    assert os.path.exists(tmp_path / "data" / DB_NAME)


def test_a_mounted_data_dir_that_cannot_hold_the_store_refuses_scans_instead_of_going_ephemeral(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A volume the operator mounted (a mount point) but the store cannot use: here a file where
    # the folder should be. Scans must not silently go to a temporary store and be lost.
    blocked = tmp_path / "volume"
    blocked.write_text("x")
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == blocked)

    store = open_store(blocked, tmp_path / "ephemeral")

    assert store.describe()["kind"] == "unavailable"
    for problem in (store.space_problem(), store.writable()):
        assert problem is not None
        assert problem[0] == "store_unwritable"
    assert not (tmp_path / "ephemeral").exists()


def test_an_unavailable_store_still_serves_the_scans_already_on_the_volume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = tmp_path / "volume"
    kept = job()
    written = SqliteJobStore(volume)
    written.put(kept)
    written.close()  # a clean stop folds the WAL into the file: immutable readers see it all
    # Mounted read-only now (or owned by someone else): the appliance cannot write there.
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == volume)
    monkeypatch.setattr(os, "access", lambda path, mode: False)

    store = open_store(volume, tmp_path / "ephemeral")

    assert store.describe()["kind"] == "unavailable"
    assert store.get(kept.scan_id) == kept
    assert [j.scan_id for j in store.page(JobFilter(principal="alice"), 10).jobs] == [kept.scan_id]
    with pytest.raises(ExecutionError) as refused:
        store.put(job())
    assert refused.value.rule == "store_unwritable"


def test_close_folds_the_wal_into_the_database_file(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "data")
    kept = job()
    store.put(kept)
    wal = tmp_path / "data" / f"{DB_NAME}-wal"
    assert wal.stat().st_size > 0  # the commit is in the WAL

    store.close()

    assert not wal.exists() or wal.stat().st_size == 0
    reader = sqlite3.connect(f"file:{tmp_path / 'data' / DB_NAME}?mode=ro&immutable=1", uri=True)
    assert reader.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1
