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


def test_put_then_get_returns_the_whole_job(store: SqliteJobStore) -> None:
    stored = job()
    stored.result = {"hosts": [{"address": "10.20.0.5", "ports": [{"port": 80}]}]}
    store.put(stored)

    assert store.get(stored.scan_id) == stored
    assert store.get("scan_000000000000deadbeef") is None


def test_store_uses_wal_and_normal_sync_and_is_at_the_current_schema(store: SqliteJobStore) -> None:
    db = sqlite3.connect(store.path)  # type: ignore[arg-type]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert store.version == SCHEMA_VERSION == len(MIGRATIONS)


def test_page_is_newest_first_and_the_cursor_continues_without_overlap(store: SqliteJobStore) -> None:
    made = [job(at=1_000_000.0 + i) for i in range(7)]
    for each in made:
        store.put(each)
    expected = [j.scan_id for j in reversed(made)]

    first = store.page(JobFilter(principal="alice"), 3)
    second = store.page(JobFilter(principal="alice"), 3, first.next_cursor)
    third = store.page(JobFilter(principal="alice"), 3, second.next_cursor)

    assert [j.scan_id for j in first.jobs + second.jobs + third.jobs] == expected
    assert third.next_cursor is None


def test_page_filters_by_principal_tool_target_and_state(store: SqliteJobStore) -> None:
    mine = job(target="Web.Lab.Internal.")
    store.put(mine)
    store.put(job(principal="bob"))
    store.put(job(tool="masscan_scan"))
    store.put(job("running", target="web.lab.internal"))

    found = store.page(
        JobFilter(principal="alice", tool="nmap_scan", target="web.lab.internal", states=frozenset({"completed"})), 10
    )

    assert [j.scan_id for j in found.jobs] == [mine.scan_id]
    assert len(store.page(JobFilter(), 10).jobs) == 4  # the operator's view: every principal


def test_previous_completed_is_the_newest_completed_scan_of_tool_target_and_principal(store: SqliteJobStore) -> None:
    old = job(at=1_000_000.0)
    newer = job(at=1_000_010.0, target="10.20.0.5.")
    store.put(old)
    store.put(newer)
    store.put(job("partial", at=1_000_020.0))  # not completed
    store.put(job(at=1_000_030.0, principal="bob"))  # someone else's
    store.put(job(at=1_000_040.0, tool="masscan_scan"))  # another tool
    current = job("running", at=1_000_050.0)
    store.put(current)

    previous = store.previous_completed("nmap_scan", "10.20.0.5", "alice", current.scan_id)
    assert previous is not None
    assert previous.scan_id == newer.scan_id
    assert store.previous_completed("nmap_scan", "10.20.0.5", "alice", old.scan_id) is None


def test_previous_completed_after_a_restart_reads_the_record_the_last_process_stored(tmp_path: Path) -> None:
    first = SqliteJobStore(tmp_path / "data")
    old = job(at=1_000_000.0, result={"hosts": [{"address": "10.20.0.5", "status": "up"}]})
    first.put(old)
    first.close()
    # A new process: nothing in memory, the store file alone answers.
    again = SqliteJobStore(tmp_path / "data")
    previous = again.previous_completed("nmap_scan", "10.20.0.5", "alice", job("running", at=1_000_050.0).scan_id)
    assert previous == old


def test_previous_completed_never_answers_with_a_scan_another_process_purged(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "data")
    kept, purged = job(at=1_000_000.0), job(at=1_000_010.0)
    store.put(kept)
    store.put(purged)  # this process stored it last: the one it keeps in memory
    current = job("running", at=1_000_050.0)
    before = store.previous_completed("nmap_scan", "10.20.0.5", "alice", current.scan_id)
    assert before is not None and before.scan_id == purged.scan_id
    # `appliance jobs purge` is another process with its own connection to the same file.
    operator = SqliteJobStore(tmp_path / "data")
    assert operator.delete([purged.scan_id]) == 1
    after = store.previous_completed("nmap_scan", "10.20.0.5", "alice", current.scan_id)
    assert after is not None and after.scan_id == kept.scan_id


def test_a_state_written_alone_reads_back_as_the_whole_job(store: SqliteJobStore) -> None:
    stored = job("queued")
    stored.request = {"target": "10.20.0.5", "ports": "22,80"}
    store.put(stored)
    stored.move("running", 1_000_003.0)
    stored.progress = 12.5
    store.put_state(stored)
    assert store.get(stored.scan_id) == stored
    assert [j.scan_id for j in store.page(JobFilter(states=frozenset({"running"})), 10).jobs] == [stored.scan_id]
    # The state column (the indexes) and the record agree: a finished state sets finished_at too.
    stored.move("interrupted", 1_000_004.0, "the appliance stopped")
    store.put_state(stored)
    assert store.get(stored.scan_id) == stored
    assert store.unfinished() == []


def test_a_state_written_alone_for_a_job_the_store_lacks_writes_it_whole(store: SqliteJobStore) -> None:
    stored = job("running")
    store.put_state(stored)
    assert store.get(stored.scan_id) == stored


def test_a_running_job_is_stored_by_its_state_alone(tmp_path: Path) -> None:
    written: list[str] = []

    class Recording(SqliteJobStore):
        def put(self, job: Job, raw: bytes | None = None) -> None:
            written.append(f"put {job.state}")
            super().put(job, raw)

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


def test_raw_output_is_stored_apart_and_deleted_with_its_job(store: SqliteJobStore) -> None:
    stored = job()
    store.put(stored)
    store.put_raw(stored.scan_id, b"<nmaprun>\x00\xff</nmaprun>")

    assert store.raw(stored.scan_id) == b"<nmaprun>\x00\xff</nmaprun>"
    assert store.delete([stored.scan_id]) == 1
    assert store.raw(stored.scan_id) is None
    assert store.get(stored.scan_id) is None


def test_sweep_drops_finished_jobs_past_the_age_limit_but_keeps_running_ones(store: SqliteJobStore) -> None:
    old_done = job(at=1_000.0)
    old_running = job("running", at=1_000.0)
    fresh = job(at=100_000.0)
    for each in (old_done, old_running, fresh):
        store.put(each)

    removed = store.sweep(now=100_010.0, max_age_seconds=3600, max_count=100, principal_max=100)

    assert removed == [old_done.scan_id]
    assert {j.scan_id for j in store.page(JobFilter(), 10).jobs} == {old_running.scan_id, fresh.scan_id}


def test_sweep_at_the_count_limit_removes_the_oldest_finished_jobs_first(store: SqliteJobStore) -> None:
    running = job("running", at=1.0)
    finished = [job(at=10.0 + i) for i in range(5)]
    for each in [running, *finished]:
        store.put(each)

    removed = store.sweep(now=20.0, max_age_seconds=1e9, max_count=3, principal_max=100)

    assert removed == [finished[0].scan_id, finished[1].scan_id, finished[2].scan_id]
    assert store.count() == 3
    assert store.get(running.scan_id) is not None


def test_sweep_keeps_each_principal_to_its_share(store: SqliteJobStore) -> None:
    alice = [job(at=10.0 + i) for i in range(4)]
    bob = [job(at=20.0 + i, principal="bob") for i in range(2)]
    for each in alice + bob:
        store.put(each)

    removed = store.sweep(now=30.0, max_age_seconds=1e9, max_count=100, principal_max=2)

    assert removed == [alice[0].scan_id, alice[1].scan_id]
    assert store.count("alice") == 2
    assert store.count("bob") == 2


def test_unfinished_lists_queued_and_running_jobs(store: SqliteJobStore) -> None:
    queued, running = job("queued"), job("running")
    for each in (queued, running, job("completed"), job("interrupted")):
        store.put(each)

    assert {j.scan_id for j in store.unfinished()} == {queued.scan_id, running.scan_id}
    assert store.counts() == {"queued": 1, "running": 1, "completed": 1, "interrupted": 1}


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


def test_cancel_requests_are_kept_until_dropped_and_a_second_process_sees_them(tmp_path: Path) -> None:
    appliance = SqliteJobStore(tmp_path / "data")
    cli = SqliteJobStore(tmp_path / "data")  # the operator CLI: another connection to the same file
    running = job("running")
    appliance.put(running)

    cli.request_cancel(running.scan_id, "operator-cli uid=1000", 5.0)
    cli.request_cancel(running.scan_id, "operator-cli uid=1001", 6.0)  # asking twice is one request

    assert appliance.cancel_requests() == {running.scan_id: "operator-cli uid=1001"}
    appliance.drop_cancel_requests([running.scan_id])
    assert cli.cancel_requests() == {}
    assert appliance.get(running.scan_id) == running  # a request never changes the job itself


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
