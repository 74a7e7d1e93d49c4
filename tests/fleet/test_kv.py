"""The fleet's key-value plumbing on a real nats-server: listings, removal, the watch."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from support.fleet import started_bus
from support.nats import NatsServer

from appliance.fleet.bus import BusThread
from appliance.fleet.kv import key_value_bucket, live_entries, remove_key, watch_key

pytestmark = pytest.mark.anyio


@pytest.fixture
def bus(nats: NatsServer) -> Iterator[BusThread]:
    opened = started_bus(nats.url)
    yield opened
    opened.close()


@pytest.fixture
def bucket() -> str:
    return f"kv_{uuid.uuid4().hex[:12]}"


async def test_a_listing_holds_the_live_keys_of_its_pattern_with_their_values_and_no_removed_one(
    bus: BusThread, bucket: str
) -> None:
    async def fill() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        kv = await key_value_bucket(bus.js, bucket, replicas=1)
        for key, value in (("a.1", b"one"), ("a.2", b"two"), ("a.3", b"three"), ("b.1", b"other")):
            await kv.put(key, value)
        await remove_key(bus.js, bucket, "a.2")
        await kv.delete("a.3")  # a marker left by a plain delete counts as removed too
        with_values = await live_entries(bus.js, bucket, "a.*", values=True)
        keys_only = await live_entries(bus.js, bucket, "b.*", values=False)
        empty = await live_entries(bus.js, bucket, "c.*", values=True)
        return with_values, keys_only, empty

    with_values, keys_only, empty = await bus.run(fill, "fill a bucket")
    assert with_values == [("a.1", b"one")]
    assert keys_only == [("b.1", b"")]
    assert empty == []


async def test_a_watch_sees_each_change_once_and_a_removal_without_a_marker_by_reading_when_quiet(
    bus: BusThread, bucket: str
) -> None:
    async def put(value: bytes) -> None:
        kv = await key_value_bucket(bus.js, bucket, replicas=1)
        await kv.put("job.x", value)

    async def remove() -> None:
        await remove_key(bus.js, bucket, "job.x")

    await bus.run(lambda: put(b"queued"), "put")
    seen: list[bytes | None] = []
    watch = watch_key(bus, bucket, "job.x", quiet_seconds=0.3)
    seen.append(await asyncio.wait_for(anext(watch), 5))
    await bus.run(lambda: put(b"running"), "put")
    seen.append(await asyncio.wait_for(anext(watch), 5))
    await bus.run(remove, "remove")
    seen.append(await asyncio.wait_for(anext(watch), 5))  # no marker: the quiet read finds it gone
    await watch.aclose()
    assert seen == [b"queued", b"running", None]


async def test_a_watch_hears_a_change_at_once_and_makes_no_consumer_on_the_bucket(
    bus: BusThread, bucket: str, nats: NatsServer
) -> None:
    # No JetStream consumer: after a cluster node's loss nats-server 2.9 stalled consumer
    # creation for minutes; the watch's subscription is a plain one on the key's subject. The
    # writer is another connection, as a segment is to a front (the bus hears no echo of its own).
    writer = started_bus(nats.url)

    async def put(value: bytes) -> None:
        kv = await key_value_bucket(writer.js, bucket, replicas=1)
        await kv.put("job.y", value)

    async def consumers() -> int:
        return (await bus.js.stream_info(f"KV_{bucket}")).state.consumer_count

    await writer.run(lambda: put(b"queued"), "put")
    watch = watch_key(bus, bucket, "job.y", quiet_seconds=60)  # never read for being quiet here
    assert await asyncio.wait_for(anext(watch), 5) == b"queued"
    assert await bus.run(consumers, "count consumers") == 0
    started = asyncio.get_running_loop().time()
    try:
        await writer.run(lambda: put(b"running"), "put")
        assert await asyncio.wait_for(anext(watch), 5) == b"running"
        assert asyncio.get_running_loop().time() - started < 2  # the subscription, not a quiet read
    finally:
        await watch.aclose()
        writer.close()
