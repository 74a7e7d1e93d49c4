"""The JetStream job store beyond the contract both stores keep: crash-safe index order, a lost
or restarted NATS server, what /healthz shows. Real nats-server processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

import pytest
from nats.js.errors import NotFoundError
from support.fleet import jetstream_store_factory, record_reads, started_bus, stored_keys
from support.jobs import stored_job
from support.nats import NatsServer, nats_server, small_payload_nats_server
from support.waiting import wait_until

from appliance.errors import ExecutionError, ValidationError
from appliance.fleet.bus import BusSettings, BusThread, BusUnavailable
from appliance.fleet.kv import remove_key
from appliance.jobs.jetstream import (
    RAW_INLINE_BYTES,
    RESULT_APART,
    JetStreamJobStore,
    apart_key,
    hex_part,
    index_keys,
    latest_key,
)
from appliance.jobs.model import Job
from appliance.jobs.store import JobFilter


def test_stale_index_keys_left_by_a_crash_between_writes_are_never_shown(nats: NatsServer) -> None:
    with jetstream_store_factory(nats.url) as open_store:
        store = open_store()
        done = stored_job("completed", target="10.20.0.5")
        store.put(done)
        # A crash after the new state's keys were written but before the old ones were deleted,
        # and a crash half-way through deleting another job: index keys with no record behind them.
        stale_running = next(k for k in index_keys(done) if k.startswith("s.")).replace(".completed.", ".running.")
        ghost = stored_job("completed", target="10.20.0.5", at=1_000_100.0)

        async def leave_stale_keys() -> None:
            await store._kv_of(stale_running).put(stale_running, b"running")
            for key in index_keys(ghost):
                await store._kv_of(key).put(key, b"completed")

        store._bus.call(leave_stale_keys, "write stale keys")

        assert [j.scan_id for j in store.page(JobFilter(principal="alice"), 10).jobs] == [done.scan_id]
        assert store.page(JobFilter(states=frozenset({"running"})), 10).jobs == []
        assert store.counts() == {"completed": 1}  # the ghost has no record; the stale state loses to it
        assert store.unfinished() == []


def test_a_ghost_index_key_never_answers_previous_completed(nats: NatsServer) -> None:
    with jetstream_store_factory(nats.url) as open_store:
        store = open_store()
        done = stored_job("completed", target="10.20.0.5")
        store.put(done)
        ghost = stored_job("completed", target="10.20.0.5", at=1_000_100.0)

        async def leave_ghost() -> None:
            for key in index_keys(ghost):
                await store._kv_of(key).put(key, b"completed")

        store._bus.call(leave_ghost, "write a ghost")
        later = stored_job("running", target="10.20.0.5", at=1_000_200.0)
        # The target's latest-scan key names `done` (the ghost never completed through the store):
        # the real previous scan, its record and its `s.` key both there.
        found = store.previous_completed("nmap_scan", "10.20.0.5", "alice", later.scan_id)
        assert found is not None and found.scan_id == done.scan_id
        # Without that key (a store from before it), the listing: the newest completed key names
        # a scan with no record, and the record decides, not the key.
        store._bus.call(
            lambda: remove_key(store._bus.js, store.bucket, latest_key("alice", "nmap_scan", "10.20.0.5")), "drop"
        )
        assert store.previous_completed("nmap_scan", "10.20.0.5", "alice", later.scan_id) is None


def test_a_rescans_previous_scan_is_two_reads_not_a_listing(nats: NatsServer) -> None:
    with jetstream_store_factory(nats.url) as open_store:
        store = open_store()
        scans = [stored_job("completed", target="10.20.0.5", at=1_000_000.0 + n) for n in range(3)]
        for scan in scans:
            store.put(scan)
        later = stored_job("running", target="10.20.0.5", at=1_000_100.0)
        listed: list[str] = []
        real_keys = store._keys

        async def counted(pattern: str, *, values: bool = False) -> list[tuple[str, bytes]]:
            listed.append(pattern)
            return await real_keys(pattern, values=values)

        store._keys = counted  # type: ignore[method-assign]
        assert store.previous_completed_id("nmap_scan", "10.20.0.5", "alice", later.scan_id) == scans[2].scan_id
        assert listed == []  # the `l.` key and the scan's `s.` key: no listing
        # Asked about the latest itself (diff_scans of it): the key names no older scan, the listing does.
        assert store.previous_completed_id("nmap_scan", "10.20.0.5", "alice", scans[2].scan_id) == scans[1].scan_id
        assert len(listed) == 1
        # The latest deleted: its key goes with it, and the listing answers.
        store.delete([scans[2].scan_id])
        assert store.previous_completed_id("nmap_scan", "10.20.0.5", "alice", later.scan_id) == scans[1].scan_id
        assert len(listed) == 2
        # A scan of another principal is not this one's previous scan.
        other = stored_job("completed", target="10.20.0.5", principal="bob", at=1_000_050.0)
        store.put(other)
        assert store.previous_completed_id("nmap_scan", "10.20.0.5", "alice", later.scan_id) == scans[1].scan_id


def test_a_store_whose_nats_went_away_refuses_writes_by_rule_and_heals_when_it_returns(tmp_path: Path) -> None:
    with nats_server(tmp_path / "first") as first:
        port = int(first.url.rpartition(":")[2])
        bus = started_bus(first.url, operation_timeout_seconds=1.0, transient_retry_seconds=1.0)
        try:
            store = JetStreamJobStore(bus, bucket="jobs_restart", raw_bucket="raw_restart")
            kept = stored_job("completed", target="10.20.0.5")
            store.put(kept)
            first.stop()

            with pytest.raises(ExecutionError) as refused:
                store.put(stored_job("queued", target="10.20.0.6"))
            assert refused.value.rule == "store_unwritable"
            assert "NATS" in refused.value.message
            assert "NATS servers" in refused.value.recovery_suggestion
            problem = store.writable()
            assert problem is not None and problem[0] == "store_unwritable"
            with pytest.raises(ExecutionError) as unreadable:
                store.get(kept.scan_id)
            assert unreadable.value.rule == "store_unreachable"

            # The same server comes back on its port with its JetStream directory: nothing was lost.
            with nats_server(tmp_path / "first", port=port):
                wait_until(lambda: bus.connected, timeout=15, what="the bus reconnects")
                assert store.get(kept.scan_id) == kept
                again = stored_job("queued", target="10.20.0.6", at=1_000_500.0)
                store.put(again)
                assert store.writable() is None
                assert {j.scan_id for j in store.page(JobFilter(), 10).jobs} == {kept.scan_id, again.scan_id}
        finally:
            bus.close()


def test_connecting_to_a_port_nobody_listens_on_is_bus_unavailable_within_the_connect_timeout(
    tmp_path: Path,
) -> None:
    with nats_server(tmp_path / "gone") as gone:
        url = gone.url
    bus = BusThread(BusSettings(servers=(url,), connect_timeout_seconds=0.5))
    started = time.monotonic()
    with pytest.raises(BusUnavailable) as refused:
        bus.start()
    assert refused.value.rule == "bus_unavailable"
    assert url.rpartition("//")[2] in refused.value.message
    assert time.monotonic() - started < 5


def test_describe_names_the_buckets_and_never_shows_credentials(nats: NatsServer) -> None:
    with_password = nats.url.replace("nats://", "nats://alice:s3cret@")
    settings = BusSettings(servers=(with_password,))
    assert settings.redacted_servers() == [nats.url]
    with jetstream_store_factory(nats.url) as open_store:
        store = open_store()
        store.put(stored_job("completed"))
        described = store.describe()
    assert described["kind"] == "jetstream"
    assert described["jobs"] == 1
    assert described["problem"] is None
    assert str(described["bucket"]).startswith("jobs_")


def test_the_sweep_removes_index_keys_a_crash_left_without_a_record(nats: NatsServer) -> None:
    with jetstream_store_factory(nats.url) as open_store:
        store = open_store()
        kept = stored_job("completed", target="10.20.0.5", engagement="red")
        store.put(kept)
        ghost = stored_job("running", target="10.20.0.5", at=1_000_100.0, engagement="red")

        async def leave_ghost() -> None:
            for key in index_keys(ghost):
                await store._kv_of(key).put(key, b"running")
            await store.kv.put(f"r.{ghost.scan_id}", b"<nmaprun/>")  # its raw output, written with the keys
            await store.kv.put(apart_key(ghost.scan_id, 0), b'{"hosts":')  # a part of a result kept apart
            # A latest-scan key whose scan was written and then lost its record.
            await store.kv.put(latest_key("alice", "nmap_scan", "10.20.0.6"), ghost.scan_id.encode())

        store._bus.call(leave_ghost, "write a ghost")
        assert store.count("alice") == 2  # the principal's index alone counts the ghost until the sweep

        assert store.sweep(now=1_000_200.0, max_age_seconds=1e9, max_count=100, principal_max=100) == []

        # (and the target's latest-scan key, which names `kept`)
        assert stored_keys(store) == {
            f"job.{kept.scan_id}",
            *index_keys(kept),
            latest_key("alice", "nmap_scan", "10.20.0.5"),
        }
        assert store.count("alice") == 1


def test_of_two_appliances_claiming_one_queued_job_at_once_exactly_one_wins(nats: NatsServer) -> None:
    with jetstream_store_factory(nats.url) as open_store:
        first, second, front = open_store(), open_store(), open_store()
        for _ in range(20):  # the race, many times over
            queued = stored_job("queued", target="10.20.0.5")
            front.put(queued)
            start = threading.Barrier(2)
            won: dict[str, Job | None] = {}

            def claim(
                store: JetStreamJobStore,
                name: str,
                scan_id: str = queued.scan_id,
                start: threading.Barrier = start,
                won: dict[str, Job | None] = won,
            ) -> None:
                start.wait()
                won[name] = store.claim(scan_id, name, 1_000_010.0)

            threads = [
                threading.Thread(target=claim, args=(s, n)) for s, n in ((first, "seg-a-1"), (second, "seg-a-2"))
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
            winners = [name for name, job in won.items() if job is not None]
            assert len(won) == 2 and len(winners) == 1
            stored = front.get(queued.scan_id)
            assert stored is not None and stored.runner == winners[0]


def test_a_finished_or_missing_job_is_never_claimed(nats: NatsServer) -> None:
    with jetstream_store_factory(nats.url) as open_store:
        store = open_store()
        done = stored_job("completed", target="10.20.0.5")
        store.put(done)
        assert store.claim(done.scan_id, "seg-a-1", 1_000_010.0) is None
        assert store.claim("scan_000000000000deadbeef", "seg-a-1", 1_000_010.0) is None
        assert store.get(done.scan_id) == done  # a refused claim writes nothing


def test_a_claim_to_run_says_whether_a_cancel_request_waits_for_the_job(nats: NatsServer) -> None:
    with jetstream_store_factory(nats.url) as open_store:
        store = open_store()
        plain = stored_job("queued", target="10.20.0.5")
        asked = stored_job("queued", target="10.20.0.6", at=1_000_001.0)
        store.put(plain)
        store.put(asked)
        store.request_cancel(asked.scan_id, "alice", 1_000_005.0)
        job, waits = store.claim_to_run(plain.scan_id, "seg-a-1", 1_000_010.0)
        assert job is not None and (job.runner, waits) == ("seg-a-1", False)
        job, waits = store.claim_to_run(asked.scan_id, "seg-a-1", 1_000_010.0)
        assert job is not None and (job.runner, waits) == ("seg-a-1", True)
        stored = store.get(asked.scan_id)
        assert stored is not None and stored.runner == "seg-a-1"  # claimed: the worker ends it cancelled
        # Not claimable (finished, or another appliance's): no job, whatever waits for it.
        assert store.claim_to_run(asked.scan_id, "seg-a-2", 1_000_011.0) == (None, True)


@pytest.mark.anyio
async def test_a_state_write_sent_ahead_lands_before_the_jobs_next_write_never_after_it(nats: NatsServer) -> None:
    with jetstream_store_factory(nats.url) as open_store:
        store = open_store()
        jobs = [stored_job("queued", target="10.20.0.5", at=1_000_000.0 + i) for i in range(12)]
        for job in jobs:
            store.put(job)
        landings = []
        for job in jobs:
            job.move("running", job.updated_at + 1, None)
            landings.append(store.put_state_soon(job))
            # The end at once, while `running` may still be on its way: it must not be overtaken.
            job.move("completed", job.updated_at + 2, None)
            store.put(job, b"<nmaprun/>")
        for landing in landings:
            await landing
        for job in jobs:
            stored = store.get(job.scan_id)
            assert stored is not None
            assert [e["state"] for e in stored.events] == ["queued", "running", "completed"]
            assert stored.state == "completed"
        assert store.counts() == {"completed": len(jobs)}  # no index key of `running` left behind
        assert store.unfinished() == []


@pytest.mark.anyio
async def test_a_state_write_sent_ahead_writes_the_job_as_it_was_when_sent(nats: NatsServer) -> None:
    with jetstream_store_factory(nats.url) as open_store:
        store = open_store()
        job = stored_job("queued", target="10.20.0.5")
        store.put(job)
        job.move("running", job.updated_at + 1, None)
        landing = store.put_state_soon(job)
        job.result = {"tool": "nmap_scan", "hosts": ["changed after the send"]}  # the caller goes on
        await landing
        stored = store.get(job.scan_id)
        assert stored is not None and stored.state == "running"
        assert stored.result != job.result


@pytest.mark.anyio
async def test_a_state_write_sent_ahead_to_a_lost_nats_raises_store_unwritable(tmp_path: Path) -> None:
    with nats_server(tmp_path / "lost") as server:
        bus = started_bus(server.url, operation_timeout_seconds=1.0, transient_retry_seconds=1.0)
        try:
            store = JetStreamJobStore(bus, bucket="jobs_lost", raw_bucket="raw_lost")
            job = stored_job("queued", target="10.20.0.5")
            store.put(job)
            server.stop()
            job.move("running", job.updated_at + 1, None)
            with pytest.raises(ExecutionError) as refused:
                await store.put_state_soon(job)
            assert refused.value.rule == "store_unwritable"
            problem = store.writable()
            assert problem is not None and problem[0] == "store_unwritable"
        finally:
            bus.close()


@pytest.mark.anyio
async def test_a_principals_unfinished_scans_are_counted_from_the_live_bucket(nats: NatsServer) -> None:
    with jetstream_store_factory(nats.url) as open_store:
        store = open_store()
        states = ["queued", "running", "awaiting_approval", "completed", "failed", "cancelled", "queued"]
        for i, state in enumerate(states):
            store.put(stored_job(state, target=f"10.20.0.{i}", at=1_000_000.0 + i))  # type: ignore[arg-type]
        store.put(stored_job("running", target="10.20.0.9", principal="bob"))
        shard = stored_job("queued", target="10.20.0.10", at=1_000_100.0)
        shard.parent = "scan_000000000000deadbeef"  # listed and counted as its parent, not itself
        store.put(shard)
        assert await store.unfinished_of("alice") == 4
        assert await store.unfinished_of("bob") == 1
        assert await store.unfinished_of("carol") == 0
        # The live bucket holds the unfinished work alone: finished jobs add nothing to its listings.
        live = {key for key in stored_keys(store) if key.startswith("u.")}
        assert len(live) == 6 and f"u.shard._.{shard.scan_id}" in live  # `_`: no segment


def test_a_segments_sweeps_read_the_unfinished_jobs_of_that_segment_alone(nats: NatsServer) -> None:
    with jetstream_store_factory(nats.url) as open_store:
        store = open_store()
        jobs = [stored_job("queued", target=f"10.20.1.{i}", at=1_000_000.0 + i) for i in range(130)]
        for i, job in enumerate(jobs):  # more than READS_AT_ONCE for one segment
            job.segment = "seg-a" if i % 13 else "seg-b"
            store.put(job, new=True)
        done = stored_job("completed", target="10.20.1.200", at=1_000_200.0)
        done.segment = "seg-a"
        store.put(done, new=True)
        reads = record_reads(store)
        seg_a = [job.scan_id for job in jobs if job.segment == "seg-a"]
        assert [job.scan_id for job in store.unfinished("seg-a")] == seg_a
        assert sorted(reads) == seg_a  # seg-b's records and the finished one are not read
        assert [job.scan_id for job in store.unfinished("seg-b")] == [job.scan_id for job in jobs[::13]]
        assert len(store.unfinished()) == 130


def test_a_front_moves_the_unfinished_and_cancel_keys_older_stores_kept_in_the_job_bucket(nats: NatsServer) -> None:
    with jetstream_store_factory(nats.url) as open_store:
        store = open_store()
        waiting, done = stored_job("queued", target="10.20.0.12"), stored_job("completed", target="10.20.0.13")
        store.put(waiting)
        store.put(done)
        old_keys = [f"u.{waiting.scan_id}", f"u.{done.scan_id}", "u.scan_00000000000000000000"]  # the last: no record

        async def write_as_before() -> None:
            await store._delete_keys([f"u.{hex_part('alice')}._.{waiting.scan_id}"])
            for key in old_keys:
                await store.kv.put(key, b"queued")
            await store.kv.put(f"c.{waiting.scan_id}", b'{"requested_by": "operator", "requested_at": 1}')

        store._bus.call(write_as_before, "write keys where older stores did")
        assert store.unfinished() == [] and store.cancel_requests() == {}

        again = open_store()  # a front's start
        assert [job.scan_id for job in again.unfinished()] == [waiting.scan_id]
        assert again.cancel_requests() == {waiting.scan_id: "operator"}
        assert stored_keys(again) == {
            *index_keys(waiting),
            *index_keys(done),
            f"job.{waiting.scan_id}",
            f"job.{done.scan_id}",
            f"c.{waiting.scan_id}",
            latest_key("alice", "nmap_scan", "10.20.0.13"),
        }


def test_a_state_change_after_its_own_write_reads_nothing_back_and_leaves_exactly_the_new_keys(
    nats: NatsServer,
) -> None:
    with jetstream_store_factory(nats.url) as open_store:
        store, other = open_store(), open_store()
        job = stored_job("queued", target="10.20.0.7")
        store.put(job)  # not known yet: read back (there is nothing), then written
        reads = record_reads(store)
        job.move("running", job.updated_at + 1)
        store.put_state(job)
        job.move("completed", job.updated_at + 1)
        store.put(job, b"<nmaprun/>")
        assert reads == []  # each write after this store's own knew the keys it had left
        # What another appliance's store sees: the record with exactly its state's keys.
        seen = other.get(job.scan_id)
        assert seen is not None and seen.state == "completed"

        stored = stored_keys(other)
        # r.: its raw output; l.: its target's latest completed scan is this one
        assert stored == index_keys(job) | {
            f"job.{job.scan_id}",
            f"r.{job.scan_id}",
            latest_key("alice", "nmap_scan", "10.20.0.7"),
        }


def test_a_new_jobs_first_write_reads_nothing_back(nats: NatsServer) -> None:
    with jetstream_store_factory(nats.url) as open_store:
        store, other = open_store(), open_store()
        job = stored_job("queued", target="10.20.0.9")
        reads = record_reads(store)
        store.put(job, new=True)
        store.put(job, new=True)  # what a retry of the write does: the same keys again, nothing stale
        assert reads == []
        seen = other.get(job.scan_id)
        assert seen is not None and seen.to_record() == job.to_record()

        assert stored_keys(other) == index_keys(job) | {f"job.{job.scan_id}"}
        store.put(stored_job("queued", target="10.20.0.10", at=1_000_050.0))  # not said new: read back first
        assert len(reads) == 1


def test_small_raw_output_is_a_key_of_the_job_bucket_and_large_output_an_object(nats: NatsServer) -> None:
    with jetstream_store_factory(nats.url) as open_store:
        store, other = open_store(), open_store()
        small, large, older = (stored_job("completed", target="10.20.0.11", at=1_000_000.0 + n) for n in range(3))
        small_raw = b"<nmaprun>\x00\xff</nmaprun>"
        large_raw = b"x" * (RAW_INLINE_BYTES + 1)
        store.put(small, small_raw)
        store.put(large, large_raw)
        store.put(older)

        async def before_inline() -> None:  # raw output as stores before RAW_INLINE_BYTES wrote it
            await store.objects.put(older.scan_id, small_raw)

        store._bus.call(before_inline, "write raw output the old way")

        async def layout() -> tuple[set[str], set[str]]:
            keys = {key for key, _ in await other._keys("r.*")}
            objects = {info.name for info in await other.objects.list()}
            return keys, objects

        assert other._bus.call(layout, "list raw output") == (
            {f"r.{small.scan_id}"},
            {large.scan_id, older.scan_id},
        )
        assert [other.raw(job.scan_id) for job in (small, large, older)] == [small_raw, large_raw, small_raw]
        assert other.delete([small.scan_id, large.scan_id, older.scan_id]) == 3
        assert [other.raw(job.scan_id) for job in (small, large, older)] == [None, None, None]

        async def objects_left() -> list[str]:
            with contextlib.suppress(NotFoundError):  # nats-py's answer for an empty object store
                return [info.name for info in await other.objects.list() if not info.deleted]
            return []

        assert (stored_keys(other), other._bus.call(objects_left, "list objects")) == (set(), [])


# 256 kB messages: object store chunks (128 kB) and raw output inline (64 kB) still fit.
SMALL_PAYLOAD = 256 * 1024


def many_hosts(count: int) -> dict[str, object]:
    """A compact nmap result with `count` hosts, one open port each (about 60 bytes a host)."""
    return {
        "hosts": [
            {"address": f"10.20.{n // 256}.{n % 256}", "ports": [{"port": 80, "state": "open"}]} for n in range(count)
        ]
    }


def test_a_record_over_the_servers_max_payload_keeps_its_result_apart_and_reads_back_whole(tmp_path: Path) -> None:
    with (
        small_payload_nats_server(tmp_path, SMALL_PAYLOAD) as server,
        jetstream_store_factory(server.url) as open_store,
    ):
        store, other = open_store(), open_store()
        job = stored_job("running", target="10.20.0.0/16", result=many_hosts(6000))
        job.runner = "seg-a-1"
        small = stored_job("completed", target="10.20.0.1", result=many_hosts(1), at=1_000_010.0)
        store.put(job, b"<nmaprun/>")
        store.put(small)
        record = json.loads(other.read_value(f"job.{job.scan_id}") or b"")
        assert len(json.dumps(record)) < 4096 and set(record["result"]) == {RESULT_APART, "parts"}
        assert record["result"][RESULT_APART] > SMALL_PAYLOAD
        assert json.loads(other.read_value(f"job.{small.scan_id}") or b"")["result"] == many_hosts(1)
        # Every read puts it back: a get, the sweep's listing, a compare-and-set's change.
        got = other.get(job.scan_id)
        assert got is not None and got.result == many_hosts(6000)
        assert [j.result for j in other.unfinished()] == [many_hosts(6000)]
        abandoned = other.abandon(job.scan_id, "seg-a-1", time.time(), "its appliance stopped answering")
        assert abandoned is not None and abandoned.result == many_hosts(6000)
        ended = store.get(job.scan_id)
        assert ended is not None and (ended.state, ended.result) == ("interrupted", many_hosts(6000))
        assert other.raw(job.scan_id) == b"<nmaprun/>"
        # In parts of one message each, keys of the job bucket (every role reading records may read them).
        parts = record["result"]["parts"]
        assert parts == 2
        assert {key for key in stored_keys(other) if key.startswith("x.")} == {
            apart_key(job.scan_id, part) for part in range(parts)
        }
        assert other.delete([job.scan_id, small.scan_id]) == 2
        assert stored_keys(other) == set()


def test_a_record_too_large_even_without_its_result_is_refused_by_name(tmp_path: Path) -> None:
    with (
        small_payload_nats_server(tmp_path, SMALL_PAYLOAD) as server,
        jetstream_store_factory(server.url) as open_store,
    ):
        store = open_store()
        job = stored_job("running", target="10.20.0.0/16", result=many_hosts(10))
        job.events.extend({"state": "running", "at": 1.0, "note": "x" * 200} for _ in range(2000))
        with pytest.raises(ValidationError) as refused:
            store.put(job)
        assert refused.value.rule == "job_record_too_large"
        assert "max_payload" in (refused.value.recovery_suggestion or "")
        assert store.get(job.scan_id) is None


def test_a_write_on_stale_remembered_keys_after_another_appliances_write_shows_the_record_as_it_is(
    nats: NatsServer,
) -> None:
    with jetstream_store_factory(nats.url) as open_store:
        mine, theirs = open_store(), open_store()
        job = stored_job("queued", target="10.20.0.8")
        mine.put(job)
        job.move("running", job.updated_at + 1)
        mine.put_state(job)  # remembered: the running state's keys
        taken = theirs.claim(job.scan_id, "seg-a-2", job.updated_at + 40, takeover=True)
        assert taken is not None and taken.state == "queued"  # moved back to queued by the other one
        job.move("completed", job.updated_at + 2)
        mine.put(job)  # on the keys it remembers, not the other one's
        assert theirs.counts() == {"completed": 1}
        assert [j.scan_id for j in theirs.page(JobFilter(states=frozenset({"completed"})), 10).jobs] == [job.scan_id]
        assert theirs.page(JobFilter(states=frozenset({"queued"})), 10).jobs == []  # a stale key, skipped
        assert theirs.unfinished() == []
