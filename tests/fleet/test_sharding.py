"""A sharded block on a real nats-server with real nmap on loopback: split at the front, run as
separate jobs by the segment's appliances in parallel, merged into one result.

The listeners are the tests' own, on a few 127.0.0.x addresses of the scanned block (Linux
routes all of 127/8 to lo; the test network namespace has nothing else). A refusal and a cancel
are tested with the spy runner: a scanner start fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.fleet import FleetLab, FleetMember, jetstream_store_factory, record_reads, running, sealed, until
from support.listeners import tcp_listener
from support.nats import NatsServer
from support.runners import SpyRunner

from appliance.audit import AuditSink
from appliance.errors import ApplianceError
from appliance.fleet.queue import job_body
from appliance.fleet.shards import merge_parent, shard_job
from appliance.jobs import operator
from appliance.jobs.model import Job, new_scan_id
from appliance.jobs.store import JobFilter
from appliance.tools import TOOLS
from appliance.tools.nmap import NmapRequest

pytestmark = pytest.mark.anyio

NMAP = TOOLS["nmap_scan"]
# The front splits a block of more than 8 addresses into blocks of 8.
SHARDING: dict[str, Any] = {"fleet": {"shard_above_hosts": 8, "shard_hosts": 8}}
# One scan at a time per appliance: with two appliances, both must take shards.
ONE_AT_A_TIME: dict[str, Any] = {"limits": {"concurrency": {"global": {"running": 1}}}}
BLOCK = "127.0.0.64/27"
SHARD_BLOCKS = ["127.0.0.64/29", "127.0.0.72/29", "127.0.0.80/29", "127.0.0.88/29"]
LISTENING = ("127.0.0.70", "127.0.0.81", "127.0.0.93")  # in the first, third and fourth shard


@contextlib.contextmanager
def listeners() -> Iterator[list[int]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(tcp_listener(host=host)) for host in LISTENING]


def shards_of(member: FleetMember, parent: Job) -> list[Job]:
    assert parent.shards is not None
    found = [member.parts.store.get(scan_id) for scan_id in parent.shards]
    assert all(shard is not None for shard in found)
    return [shard for shard in found if shard is not None]


def ran_between(job: Job) -> tuple[float, float]:
    started = next(event["at"] for event in job.events if event["state"] == "running")
    assert job.finished_at is not None
    return started, job.finished_at


def address_order(host: dict[str, Any]) -> int:
    return int(ipaddress.ip_address(host["address"]))


async def test_a_sharded_block_runs_as_parallel_shards_and_its_result_is_their_union(fleet: FleetLab) -> None:
    sharding, plain = fleet.front(SHARDING), fleet.front()  # the second front's policy has no threshold
    seg_1 = fleet.segment("seg-a", "seg-a-1", ONE_AT_A_TIME)
    seg_2 = fleet.segment("seg-a", "seg-a-2", ONE_AT_A_TIME)
    with listeners() as ports:
        request = NmapRequest(target=BLOCK, ports=",".join(map(str, ports)), wait_seconds=120)
        async with running(seg_1, seg_2):
            sharded = await sharding.service.call(NMAP, request, "rid-sharded")
            whole = await plain.service.call(NMAP, request, "rid-whole")
    assert (sharded.status, whole.status) == ("completed", "completed")
    parent = sharding.parts.store.get(sharded.scan_id)
    assert parent is not None
    shards = shards_of(sharding, parent)
    assert [shard.target for shard in shards] == SHARD_BLOCKS
    assert all((shard.state, shard.parent, shard.segment) == ("completed", parent.scan_id, "seg-a") for shard in shards)

    # The merged result is the union of the shards' results, and what one unsharded scan finds.
    union = sorted((host for shard in shards for host in (shard.result or {})["hosts"]), key=address_order)
    assert sharded.model_dump(mode="json")["hosts"] == union
    assert [host.model_dump() for host in sharded.hosts] == [host.model_dump() for host in whole.hosts]
    assert len(sharded.hosts) == 32
    found = {(host.address, port.port) for host in sharded.hosts for port in host.ports}  # type: ignore[attr-defined]
    assert found == set(zip(LISTENING, ports, strict=True))
    assert (sharded.target, sharded.scanned_address, sharded.argv[-1]) == (BLOCK, BLOCK, BLOCK)

    # Separate jobs: each shard claimed and started once, by both appliances, two of them at once.
    starts = [line for member in (seg_1, seg_2) for line in member.lab.audit_lines() if line.get("event") == "start"]
    shard_starts = [line["scan_id"] for line in starts if line["scan_id"] != whole.scan_id]
    assert sorted(shard_starts) == sorted(shard.scan_id for shard in shards)
    assert {shard.runner for shard in shards} == {"seg-a-1", "seg-a-2"}
    assert any(
        a.runner != b.runner and ran_between(a)[0] < ran_between(b)[1] and ran_between(b)[0] < ran_between(a)[1]
        for a in shards
        for b in shards
    )
    dispatched = [line for line in sharding.lab.audit_lines() if line.get("event") == "dispatched"]
    assert [(line["scan_id"], line["parent"]) for line in dispatched] == [(s.scan_id, parent.scan_id) for s in shards]
    assert sharding.lab.runner.calls == [] and plain.lab.runner.calls == []  # the fronts ran nothing
    assert fleet.queue_messages() == 0

    # Threshold off: the plain front's scan of the same block is one job with no shards.
    unsharded = plain.parts.store.get(whole.scan_id)
    assert unsharded is not None
    assert (unsharded.shards, unsharded.parent, unsharded.target) == (None, None, BLOCK)
    assert [line["scan_id"] for line in starts].count(whole.scan_id) == 1
    plain_dispatched = [line for line in plain.lab.audit_lines() if line.get("event") == "dispatched"]
    assert [(line["scan_id"], line.get("parent")) for line in plain_dispatched] == [(whole.scan_id, None)]

    # Listings show the sharded scan, not its shards.
    listed = {job.scan_id for job in sharding.service.jobs.page(JobFilter(principal="stdio"), 100, None).jobs}
    assert listed == {sharded.scan_id, whole.scan_id}

    # Merged once (one `job` line for its end), and merging again changes nothing.
    ends = [
        line
        for member in (seg_1, seg_2)
        for line in member.lab.audit_lines()
        if line.get("event") == "job" and line["scan_id"] == parent.scan_id
    ]
    assert [line["state"] for line in ends] == ["completed"]
    assert seg_1.worker is not None
    assert seg_1.worker.merge(parent.scan_id) is None
    assert seg_1.worker.merge_parents() == []
    again = sharding.parts.store.get(parent.scan_id)
    assert again is not None
    assert again.to_record() == parent.to_record()


def forged_parent(block: str) -> Job:
    now = time.time()
    parent = Job(
        scan_id=new_scan_id(now),
        tool="nmap_scan",
        target=block,
        scanned_address=block,
        principal="mallory",
        request={"target": block, "ports": "80"},
        argv=["nmap", "-p", "80", block],
        state="queued",
        created_at=now,
        updated_at=now,
        request_id="forged-1",
        segment="seg-a",
        shards=[new_scan_id(now)],
    )
    parent.move("queued", now)
    return parent


async def test_a_forged_shard_outside_the_segments_scope_is_refused_and_ends_its_parent(fleet: FleetLab) -> None:
    seg_a = fleet.segment("seg-a", "seg-a-1", runner=SpyRunner())
    with listeners():
        parent = forged_parent("127.0.1.0/29")  # seg-b's block; seg-a's policy denies it
        assert parent.shards is not None
        shard = sealed(shard_job(parent, "127.0.1.0/29", parent.shards[0], 0, time.time()))
        seg_a.parts.store.put(parent)
        seg_a.parts.store.put(shard)  # straight into the store and onto seg-a's subject, no front

        async def send() -> None:
            await seg_a.parts.bus.js.publish(fleet.queue.subject_of("seg-a"), job_body(shard.scan_id))

        await seg_a.parts.bus.run(send, "publish a forged shard")
        async with running(seg_a):
            refused = await until(seg_a, shard.scan_id, "failed")
            merged = await until(seg_a, parent.scan_id, "failed")
    assert seg_a.lab.runner.calls == []
    assert refused.error is not None
    assert refused.error["rule"] == "target_denied_policy"
    assert merged.error is not None
    assert (merged.error["rule"], merged.error["scan_id"]) == ("target_denied_policy", parent.scan_id)
    [line] = [line for line in seg_a.lab.audit_lines() if line.get("verdict") == "refused"]
    assert (line["scan_id"], line["rule"], line["principal"]) == (shard.scan_id, "target_denied_policy", "mallory")
    assert fleet.queue_messages() == 0


async def test_a_cancel_of_a_sharded_scan_ends_every_shard_before_any_starts(fleet: FleetLab) -> None:
    front = fleet.front(SHARDING)
    seg_a = fleet.segment("seg-a", "seg-a-1", runner=SpyRunner())
    started = await front.service.call(NMAP, NmapRequest(target=BLOCK, ports="80", wait_seconds=0), "rid-c")
    assert started.status == "queued"
    job = front.service.jobs.visible(started.scan_id, "stdio")
    assert front.service.jobs.cancel(job)
    async with running(seg_a):  # the segment's loop starts after the cancel: every shard is still queued
        parent = await until(seg_a, started.scan_id, "cancelled")
    shards = shards_of(front, parent)
    assert [shard.state for shard in shards] == ["cancelled"] * 4
    assert seg_a.lab.runner.calls == []
    assert seg_a.worker is not None
    assert seg_a.worker.counts.cancelled == 4
    assert front.parts.store.cancel_requests().keys().isdisjoint({shard.scan_id for shard in shards})
    assert fleet.queue_messages() == 0


async def test_the_operator_clis_cancel_of_a_sharded_scan_reaches_every_shard(fleet: FleetLab) -> None:
    front = fleet.front(SHARDING)
    seg_a = fleet.segment("seg-a", "seg-a-1", runner=SpyRunner())
    started = await front.service.call(NMAP, NmapRequest(target=BLOCK, ports="80", wait_seconds=0), "rid-o")
    parent = front.parts.store.get(started.scan_id)
    assert parent is not None
    assert parent.shards is not None
    asked = asyncio.create_task(
        asyncio.to_thread(operator.cancel, front.parts.store, AuditSink(stream=io.StringIO()), parent.scan_id)
    )
    deadline = time.monotonic() + 10
    while not set(parent.shards) <= front.parts.store.cancel_requests().keys():
        assert time.monotonic() < deadline, "the CLI's cancel requests did not reach the shards"
        await asyncio.sleep(0.05)
    async with running(seg_a):  # the shards are claimed only now, each with its request waiting
        said = await asyncio.wait_for(asked, 30)
    assert (said["action"], said["status"]) == ("cancel_requested", "cancelled")
    assert [shard.state for shard in shards_of(front, parent)] == ["cancelled"] * 4
    assert seg_a.lab.runner.calls == []


async def test_a_sharded_scan_the_queue_cannot_take_whole_ends_failed_and_none_of_its_shards_runs(
    nats: NatsServer, tmp_path: Path
) -> None:
    with FleetLab(nats.url, tmp_path, max_jobs=2) as lab:  # room for two of the four shards
        front = lab.front(SHARDING)
        seg_a = lab.segment("seg-a", "seg-a-1", runner=SpyRunner())
        with pytest.raises(ApplianceError) as refused:
            await front.service.call(NMAP, NmapRequest(target=BLOCK, ports="80", wait_seconds=0), "rid-q")
        scan_id = refused.value.details["scan_id"]
        parent = front.parts.store.get(scan_id)
        assert parent is not None
        assert parent.state == "failed"
        assert parent.error is not None
        assert parent.error["rule"] == refused.value.rule
        async with running(seg_a):
            shards = [await until(seg_a, shard, "failed", "cancelled") for shard in parent.shards or ()]
            while lab.queue_messages():  # noqa: ASYNC110 - the queue has no event to wait on
                await asyncio.sleep(0.05)
        assert [shard.state for shard in shards] == ["cancelled", "cancelled", "failed", "failed"]
        assert seg_a.lab.runner.calls == []
        after = front.parts.store.get(scan_id)
        assert after is not None
        assert after.to_record() == parent.to_record()  # its shards' ends do not merge into an ended scan
        [line] = [line for line in front.lab.audit_lines() if line.get("verdict") == "refused"]
        assert (line["scan_id"], line["rule"]) == (scan_id, refused.value.rule)


def ended_shards(parent: Job, state: str = "completed") -> list[Job]:
    """The parent's shards as their segment ends them, each with one host found."""
    assert parent.shards is not None
    blocks = [str(block) for block in ipaddress.ip_network(parent.target).subnets(new_prefix=30)]
    shards = []
    for index, (block, scan_id) in enumerate(zip(blocks, parent.shards, strict=True)):
        shard = shard_job(parent, block, scan_id, index, time.time())
        shard.runner = "seg-a-1"
        shard.result = {"hosts": [{"address": block.split("/")[0], "status": "up", "ports": []}], "exit_code": 0}
        shard.move(state, time.time())  # type: ignore[arg-type]
        shards.append(shard)
    return shards


def two_shard_parent(segment: str = "seg-a") -> Job:
    parent = forged_parent("127.0.0.64/29")
    parent.shards = [new_scan_id(), new_scan_id()]
    parent.segment = segment
    return parent


async def test_the_sweep_merges_a_sharded_scan_whose_merge_was_lost_and_only_its_own_segments(
    fleet: FleetLab,
) -> None:
    seg_a = fleet.segment("seg-a", "seg-a-1", runner=SpyRunner())
    # Written as a front (a segment's login writes its own segment's jobs only: appliance.fleet.records).
    front = fleet.front()
    ours, theirs = two_shard_parent("seg-a"), two_shard_parent("seg-b")
    for parent in (ours, theirs):
        front.parts.store.put(parent)
        for shard in ended_shards(parent):
            front.parts.store.put(shard)  # ended, and no merge followed (the appliance died there)
    assert seg_a.worker is not None
    assert seg_a.worker.merge_parents() == [ours.scan_id]
    merged = seg_a.parts.store.get(ours.scan_id)
    assert merged is not None
    assert merged.state == "completed"
    assert merged.result is not None
    assert [host["address"] for host in merged.result["hosts"]] == ["127.0.0.64", "127.0.0.68"]
    untouched = seg_a.parts.store.get(theirs.scan_id)
    assert untouched is not None
    assert untouched.state == "queued"  # seg-b's sweep merges seg-b's
    assert seg_a.worker.merge_parents() == []


async def test_of_two_appliances_merging_the_same_scan_at_once_exactly_one_ends_it(nats: NatsServer) -> None:
    with jetstream_store_factory(nats.url) as open_store:
        first, second = open_store(), open_store()
        for _ in range(10):
            parent = two_shard_parent()
            first.put(parent)
            for shard in ended_shards(parent):
                first.put(shard)
            now = time.time()
            results = await asyncio.gather(
                asyncio.to_thread(merge_parent, first, parent.scan_id, now, 60.0),
                asyncio.to_thread(merge_parent, second, parent.scan_id, now + 0.5, 60.0),
            )
            written = [job for job in results if job is not None]
            assert len(written) == 1  # one compare-and-set wins; the other finds it ended
            stored = first.get(parent.scan_id)
            assert stored is not None
            assert stored.to_record() == written[0].to_record()
            assert [event["state"] for event in stored.events] == ["queued", "completed"]


def stored_eight_shard_parent(member: FleetMember) -> tuple[Job, list[Job]]:
    """A sharded scan of eight /30 shards in `member`'s store, and its shards as they end."""
    parent = forged_parent("127.0.0.0/27")
    parent.shards = [new_scan_id() for _ in range(8)]
    member.parts.store.put(parent)
    return parent, ended_shards(parent)


async def test_each_shards_end_reads_itself_and_folds_into_its_parent_never_reading_its_siblings(
    fleet: FleetLab,
) -> None:
    seg_a = fleet.segment("seg-a", "seg-a-1", runner=SpyRunner())
    assert seg_a.worker is not None
    store = seg_a.parts.store
    parent, shards = stored_eight_shard_parent(seg_a)
    for shard in shards:
        store.put(shard)
    reads = record_reads(store)
    for shard in reversed(shards):  # folded in any order
        seg_a.worker.fold(shard.scan_id, parent.scan_id)
    # One read of each shard's own end (the parent's is its compare-and-set): 8, not 8 x 8.
    assert reads == [shard.scan_id for shard in reversed(shards)]
    merged = store.get(parent.scan_id)
    assert merged is not None and merged.state == "completed"
    assert merged.result is not None
    assert [host["address"] for host in merged.result["hosts"]] == [f"127.0.0.{4 * n}" for n in range(8)]
    assert set(merged.merged or {}) == set(parent.shards or ())
    assert seg_a.worker.counts.merged == 1
    assert seg_a.worker.fold(shards[0].scan_id, parent.scan_id) is None  # folded already: nothing changes


async def test_the_sweep_reads_only_the_shard_whose_fold_was_lost(fleet: FleetLab) -> None:
    seg_a = fleet.segment("seg-a", "seg-a-1", runner=SpyRunner())
    assert seg_a.worker is not None
    store = seg_a.parts.store
    parent, shards = stored_eight_shard_parent(seg_a)
    for shard in shards[:7]:
        store.put(shard)
        seg_a.worker.fold(shard.scan_id, parent.scan_id)
    store.put(shards[7])  # ended, and its appliance died before the fold
    listed = store.unfinished("seg-a")
    assert [job.scan_id for job in listed] == [parent.scan_id]
    reads = record_reads(store)
    assert seg_a.worker.merge_parents(listed) == [parent.scan_id]
    assert reads == [parent.scan_id, shards[7].scan_id]  # the parent, then the one shard no fold brought
    merged = store.get(parent.scan_id)
    assert merged is not None and merged.state == "completed"
    assert merged.result is not None and len(merged.result["hosts"]) == 8
