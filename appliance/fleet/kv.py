"""JetStream key-value plumbing the fleet's buckets share (the job store, the segment registry)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from appliance.fleet.bus import BusThread

# The header a key-value delete or purge marker carries (ADR-8), and its two values.
KV_OPERATION_HEADER = "KV-Operation"
_REMOVALS = frozenset({"DEL", "PURGE"})
# How long a listing waits for its next message before it calls the server stalled (an ordered
# consumer's missed heartbeats restart it well within this).
_LISTING_STALL_SECONDS = 30.0


async def key_value_bucket(js: JetStreamContext, name: str, *, replicas: int, direct: bool = False) -> KeyValue:
    """The bucket `name`, created (file storage, history 1) when it does not exist yet."""
    try:
        return await js.key_value(name)
    except nats.js.errors.BucketNotFoundError:
        config = KeyValueConfig(bucket=name, history=1, storage=StorageType.FILE, replicas=replicas, direct=direct)
        return await js.create_key_value(config)


async def live_entries(js: JetStreamContext, bucket: str, pattern: str, *, values: bool) -> list[tuple[str, bytes]]:
    """The live keys of `bucket` matching `pattern` (a subject filter the server applies), with
    their values when asked (else headers only, and empty values).

    Our own reading rather than nats-py's `KeyValue.watch`: its end-of-listing marker races
    (it compares the server's pending count with what the client has dispatched so far, so a
    message still in the client's queue makes it report an empty or short listing; a loaded
    CI machine showed it). Here the end is the message the server says has nothing after it,
    and an empty listing is one where the server has neither delivered nor holds anything.
    """
    prefix = f"$KV.{bucket}."
    arrived: asyncio.Queue[Msg] = asyncio.Queue()

    async def receive(msg: Msg) -> None:
        await arrived.put(msg)

    subscription = await js.subscribe(
        prefix + pattern,
        stream=f"KV_{bucket}",
        cb=receive,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        headers_only=not values,
        inactive_threshold=60.0,
    )
    live: dict[str, bytes] = {}
    try:
        info = await subscription.consumer_info()
        if info.num_pending == 0 and (info.delivered is None or not info.delivered.consumer_seq):
            return []
        while True:
            msg = await asyncio.wait_for(arrived.get(), timeout=_LISTING_STALL_SECONDS)
            key = msg.subject[len(prefix) :]
            if msg.headers is not None and msg.headers.get(KV_OPERATION_HEADER) in _REMOVALS:
                live.pop(key, None)  # a delete marker: the key is gone
            else:
                live[key] = msg.data or b""
            if msg.metadata.num_pending == 0:  # the last message stored when it was sent
                break
    finally:
        await subscription.unsubscribe()
    return sorted(live.items())


async def watch_key(bus: BusThread, bucket: str, key: str) -> AsyncIterator[bytes | None]:
    """The value of `key` now and after each change, on the caller's loop (the subscription
    lives on the bus loop); None when the key is deleted. A lost connection resumes where it
    stopped (an ordered consumer). Stop by leaving the iteration."""
    caller = asyncio.get_running_loop()
    changes: asyncio.Queue[Msg] = asyncio.Queue()
    prefix = f"$KV.{bucket}."

    async def subscribe() -> JetStreamContext.PushSubscription:
        async def receive(msg: Msg) -> None:
            caller.call_soon_threadsafe(changes.put_nowait, msg)

        return await bus.js.subscribe(
            prefix + key,
            stream=f"KV_{bucket}",
            cb=receive,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            inactive_threshold=60.0,
        )

    subscription = await bus.run(subscribe, f"watch {key}")
    try:
        while True:
            msg = await changes.get()
            removed = msg.headers is not None and msg.headers.get(KV_OPERATION_HEADER) in _REMOVALS
            yield None if removed else msg.data
    finally:
        with contextlib.suppress(Exception):  # the connection may be gone at stop; the server drops it
            await bus.run(subscription.unsubscribe, f"stop watching {key}")
