"""What every job store does, run against both: embedded SQLite and JetStream key-value on a
real nats-server (appliance/jobs/store.py writes the queries down).

`open_store()` opens the store under test; called again it opens a second connection to the
same store, as the operator CLI (SQLite) or another front (JetStream) does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.fleet import jetstream_store_factory
from support.jobs import stored_job
from support.nats import NatsServer

from appliance.jobs.model import Job, JobState
from appliance.jobs.sqlite import SqliteJobStore
from appliance.jobs.store import JobFilter, JobStore

OpenStore = Callable[[], JobStore]


def job(state: JobState = "completed", *, target: str = "10.20.0.5", **fields: Any) -> Job:
    return stored_job(state, target=target, **fields)


@pytest.fixture(params=["sqlite", "jetstream"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    if request.param == "sqlite":
        yield lambda: SqliteJobStore(tmp_path / "data")
        return
    nats: NatsServer = request.getfixturevalue("nats")
    with jetstream_store_factory(nats.url) as factory:
        yield factory


@pytest.fixture
def store(open_store: OpenStore) -> JobStore:
    return open_store()


def test_put_then_get_returns_the_whole_job(store: JobStore) -> None:
    stored = job()
    stored.result = {"hosts": [{"address": "10.20.0.5", "ports": [{"port": 80}]}]}
    store.put(stored)

    assert store.get(stored.scan_id) == stored
    assert store.get("scan_000000000000deadbeef") is None


def test_page_is_newest_first_and_the_cursor_continues_without_overlap(store: JobStore) -> None:
    made = [job(at=1_000_000.0 + i) for i in range(7)]
    for each in made:
        store.put(each)
    expected = [j.scan_id for j in reversed(made)]

    first = store.page(JobFilter(principal="alice"), 3)
    second = store.page(JobFilter(principal="alice"), 3, first.next_cursor)
    third = store.page(JobFilter(principal="alice"), 3, second.next_cursor)

    assert [j.scan_id for j in first.jobs + second.jobs + third.jobs] == expected
    assert third.next_cursor is None


def test_page_filters_by_principal_tool_target_and_state(store: JobStore) -> None:
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


def test_previous_completed_is_the_newest_completed_scan_of_tool_target_and_principal(store: JobStore) -> None:
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


def test_a_state_written_alone_reads_back_as_the_whole_job(store: JobStore) -> None:
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


def test_a_state_written_alone_for_a_job_the_store_lacks_writes_it_whole(store: JobStore) -> None:
    stored = job("running")
    store.put_state(stored)
    assert store.get(stored.scan_id) == stored


def test_raw_output_is_stored_apart_and_deleted_with_its_job(store: JobStore) -> None:
    stored = job()
    store.put(stored)
    store.put_raw(stored.scan_id, b"<nmaprun>\x00\xff</nmaprun>")

    assert store.raw(stored.scan_id) == b"<nmaprun>\x00\xff</nmaprun>"
    assert store.delete([stored.scan_id]) == 1
    assert store.raw(stored.scan_id) is None
    assert store.get(stored.scan_id) is None


def test_sweep_drops_finished_jobs_past_the_age_limit_but_keeps_running_ones(store: JobStore) -> None:
    old_done = job(at=1_000.0)
    old_running = job("running", at=1_000.0)
    fresh = job(at=100_000.0)
    for each in (old_done, old_running, fresh):
        store.put(each)

    removed = store.sweep(now=100_010.0, max_age_seconds=3600, max_count=100, principal_max=100)

    assert removed == [old_done.scan_id]
    assert {j.scan_id for j in store.page(JobFilter(), 10).jobs} == {old_running.scan_id, fresh.scan_id}


def test_sweep_at_the_count_limit_removes_the_oldest_finished_jobs_first(store: JobStore) -> None:
    running = job("running", at=1.0)
    finished = [job(at=10.0 + i) for i in range(5)]
    for each in [running, *finished]:
        store.put(each)

    removed = store.sweep(now=20.0, max_age_seconds=1e9, max_count=3, principal_max=100)

    assert removed == [finished[0].scan_id, finished[1].scan_id, finished[2].scan_id]
    assert store.count() == 3
    assert store.get(running.scan_id) is not None


def test_sweep_keeps_each_principal_to_its_share(store: JobStore) -> None:
    alice = [job(at=10.0 + i) for i in range(4)]
    bob = [job(at=20.0 + i, principal="bob") for i in range(2)]
    for each in alice + bob:
        store.put(each)

    removed = store.sweep(now=30.0, max_age_seconds=1e9, max_count=100, principal_max=2)

    assert removed == [alice[0].scan_id, alice[1].scan_id]
    assert store.count("alice") == 2
    assert store.count("bob") == 2


def test_unfinished_lists_queued_and_running_jobs(store: JobStore) -> None:
    queued, running = job("queued"), job("running")
    for each in (queued, running, job("completed"), job("interrupted")):
        store.put(each)

    assert {j.scan_id for j in store.unfinished()} == {queued.scan_id, running.scan_id}
    assert store.counts() == {"queued": 1, "running": 1, "completed": 1, "interrupted": 1}


def test_previous_completed_never_answers_with_a_scan_another_connection_purged(open_store: OpenStore) -> None:
    store = open_store()
    kept, purged = job(at=1_000_000.0), job(at=1_000_010.0)
    store.put(kept)
    store.put(purged)
    current = job("running", at=1_000_050.0)
    before = store.previous_completed("nmap_scan", "10.20.0.5", "alice", current.scan_id)
    assert before is not None and before.scan_id == purged.scan_id
    # `appliance jobs purge` (SQLite) or another front (JetStream): its own connection to the same store.
    operator = open_store()
    assert operator.delete([purged.scan_id]) == 1
    after = store.previous_completed("nmap_scan", "10.20.0.5", "alice", current.scan_id)
    assert after is not None and after.scan_id == kept.scan_id


def test_cancel_requests_are_kept_until_dropped_and_a_second_connection_sees_them(open_store: OpenStore) -> None:
    appliance = open_store()
    cli = open_store()
    running = job("running")
    appliance.put(running)

    cli.request_cancel(running.scan_id, "operator-cli uid=1000", 5.0)
    cli.request_cancel(running.scan_id, "operator-cli uid=1001", 6.0)  # asking twice is one request

    assert appliance.cancel_requests() == {running.scan_id: "operator-cli uid=1001"}
    appliance.drop_cancel_requests([running.scan_id])
    assert cli.cancel_requests() == {}
    assert appliance.get(running.scan_id) == running  # a request never changes the job itself


def test_a_job_stored_by_one_connection_is_read_whole_by_another(open_store: OpenStore) -> None:
    writer, reader = open_store(), open_store()
    stored = job("running", result={"hosts": [{"address": "10.20.0.5", "status": "up"}]}, engagement="red")
    writer.put(stored)
    assert reader.get(stored.scan_id) == stored
    assert [j.scan_id for j in reader.page(JobFilter(principal="bob", engagements=frozenset({"red"})), 5).jobs] == [
        stored.scan_id
    ]
    assert reader.page(JobFilter(principal="bob"), 5).jobs == []


def test_counts_and_unfinished_are_empty_on_an_empty_store(store: JobStore) -> None:
    assert store.counts() == {}
    assert store.unfinished() == []
    assert store.count() == 0
    assert store.page(JobFilter(), 10).jobs == []
    assert store.cancel_requests() == {}
