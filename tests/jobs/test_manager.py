"""JobManager's in-memory parts: the diff views kept for rescans, the writes the store refused."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Coroutine
from typing import Any

import pytest

from appliance.audit import AuditSink
from appliance.errors import ExecutionError
from appliance.jobs.diff import result_view
from appliance.jobs.manager import JobManager, LiveJob, ResultViews
from appliance.jobs.model import Job
from appliance.jobs.sqlite import SqliteJobStore


def _nmap(hosts: int) -> dict[str, object]:
    return {
        "tool": "nmap_scan",
        "hosts": [
            {
                "address": f"10.20.{i // 256}.{i % 256}",
                "status": "up",
                "ports": [{"port": 80, "protocol": "tcp", "state": "open"}],
            }
            for i in range(hosts)
        ],
    }


def test_result_views_keep_the_newest_up_to_their_count() -> None:
    views = ResultViews(size=2)
    for scan in ("a", "b", "c"):
        views.keep(scan, result_view("nmap_scan", _nmap(1)))
    assert views.get("a") is None
    assert views.get("b") is not None and views.get("c") is not None


def test_result_views_of_large_results_are_bounded_by_their_entries() -> None:
    # Each view of 100 hosts weighs 1 + 100 hosts up + 100 ports: two of them pass 300 entries.
    views = ResultViews(size=64, entries=300)
    views.keep("big-1", result_view("nmap_scan", _nmap(100)))
    views.keep("big-2", result_view("nmap_scan", _nmap(100)))
    assert views.get("big-1") is None
    kept = views.get("big-2")
    assert kept is not None and len(kept.up) == 100


def test_a_view_kept_again_under_its_scan_id_replaces_the_first() -> None:
    views = ResultViews(size=64, entries=300)
    views.keep("scan", result_view("nmap_scan", _nmap(100)))
    views.keep("scan", result_view("nmap_scan", _nmap(100)))  # counted once, not twice
    views.keep("other", result_view("nmap_scan", _nmap(10)))
    assert views.get("scan") is not None and views.get("other") is not None


class Refusing(SqliteJobStore):
    """An in-memory store that refuses writes while `down` (NATS electing a leader, a full disk)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.down = False

    def put(self, job: Job, raw: bytes | None = None, *, new: bool = False) -> None:
        if self.down:
            raise ExecutionError("the store is down", rule="store_unwritable")
        super().put(job, raw, new=new)

    def put_state(self, job: Job) -> None:
        if self.down:
            raise ExecutionError("the store is down", rule="store_unwritable")
        super().put_state(job)


def created(jobs: JobManager) -> LiveJob:
    """One queued nmap job of alice's."""
    return jobs.create(
        tool="nmap_scan",
        target="127.0.0.1",
        scanned_address="127.0.0.1",
        owner="alice",
        request={"target": "127.0.0.1"},
        argv=["nmap", "127.0.0.1"],
        request_id="rid-1",
    )


def test_an_end_the_store_refused_is_written_again_with_its_raw_output_once_the_store_takes_it() -> None:
    store = Refusing()
    jobs = JobManager(store, AuditSink(stream=io.StringIO()))
    live = created(jobs)
    jobs.running(live)
    store.down = True
    jobs.finish(live, "completed", result={"tool": "nmap_scan", "hosts": []}, raw=b"<nmaprun/>")
    stored = store.get(live.job.scan_id)
    assert stored is not None and stored.state == "running"  # the end is in memory only
    assert jobs.flush_unsaved() == [live.job.scan_id]  # still down: kept
    store.down = False
    assert jobs.flush_unsaved() == []
    stored = store.get(live.job.scan_id)
    assert stored is not None and stored.state == "completed"
    assert store.raw(live.job.scan_id) == b"<nmaprun/>"
    assert jobs.unsaved == {}


class Sending(Refusing):
    """A store that sends its state writes ahead (as the fleet's JetStream store does)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def put_state_soon(self, job: Job) -> Coroutine[Any, Any, None]:
        down = self.down  # as it was when the write was sent
        self.sent.append(job.state)

        async def landed() -> None:
            await asyncio.sleep(0)  # on its way
            if down:
                raise ExecutionError("the store is down", rule="store_unwritable")
            SqliteJobStore.put_state(self, job)

        return landed()


@pytest.mark.anyio
async def test_a_running_write_sent_ahead_that_fails_is_kept_and_written_again_whole() -> None:
    store = Sending()
    jobs = JobManager(store, AuditSink(stream=io.StringIO()))
    live = created(jobs)
    store.down = True
    jobs.running(live)
    assert store.sent == ["running"]  # sent, not waited for: the caller goes on at once
    assert len(jobs.landing) == 1
    await asyncio.gather(*jobs.landing)
    assert jobs.unsaved == {live.job.scan_id: (live.job, None)}
    stored = store.get(live.job.scan_id)
    assert stored is not None and stored.state == "queued"
    store.down = False
    assert jobs.flush_unsaved() == []
    stored = store.get(live.job.scan_id)
    assert stored is not None and stored.state == "running"


@pytest.mark.anyio
async def test_a_running_write_sent_ahead_that_lands_leaves_nothing_unsaved() -> None:
    store = Sending()
    jobs = JobManager(store, AuditSink(stream=io.StringIO()))
    live = created(jobs)
    jobs.running(live)
    assert live.job.state == "running"
    assert len(jobs.landing) == 1
    await asyncio.gather(*jobs.landing)
    await asyncio.sleep(0)  # its done callback
    assert jobs.unsaved == {} and jobs.landing == set()
    stored = store.get(live.job.scan_id)
    assert stored is not None and stored.state == "running"
