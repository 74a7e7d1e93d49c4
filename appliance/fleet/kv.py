"""JetStream key-value plumbing the fleet's buckets share (the job store, the segment registry)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from appliance.errors import ApplianceError, ExecutionError
from appliance.fleet.bus import BusThread

# The header a key-value delete or purge marker carries (ADR-8), and its two values.
KV_OPERATION_HEADER = "KV-Operation"
_REMOVALS = frozenset({"DEL", "PURGE"})
# A watch without news for this long reads its key directly (watch_key).
WATCH_QUIET_SECONDS = 2.0


def _removed(headers: dict[str, str] | None) -> bool:
    """A delete or purge marker (a key nats-py's own delete or purge removed)."""
    return headers is not None and headers.get(KV_OPERATION_HEADER) in _REMOVALS


def not_provisioned(what: str) -> ExecutionError:
    """A segment found its stream or bucket missing: fronts create them (a segment's NATS user may not)."""
    return ExecutionError(
        f"{what} does not exist on NATS yet, and this appliance's role does not create it",
        rule="bus_not_provisioned",
        recovery_suggestion="Start a front first (fronts create the fleet's stream and buckets at start), then "
        "this segment appliance.",
    )


async def key_value_bucket(
    js: JetStreamContext, name: str, *, replicas: int, direct: bool = False, create: bool = True
) -> KeyValue:
    """The bucket `name`, created (file storage, history 1) when it does not exist yet and
    `create` is set (else ExecutionError `bus_not_provisioned`)."""
    try:
        return await js.key_value(name)
    except nats.js.errors.BucketNotFoundError:
        if not create:
            raise not_provisioned(f"the bucket {name}") from None
        config = KeyValueConfig(bucket=name, history=1, storage=StorageType.FILE, replicas=replicas, direct=direct)
        return await js.create_key_value(config)


async def stream_drift(js: JetStreamContext, stream: str, wanted: dict[str, int]) -> dict[str, dict[str, int]]:
    """The fields of `stream`'s configuration that differ from what this appliance's settings
    would create (`wanted`: StreamConfig field -> value), each as {"stream": ..., "settings": ...}.
    JetStream keeps a stream's settings from its creation; a later start with other settings
    changes nothing, and roles may not edit streams (README "Fleet", bus security)."""
    config = (await js.stream_info(stream)).config
    differ: dict[str, dict[str, int]] = {}
    for field, value in wanted.items():
        have = getattr(config, field)
        if have is not None and have != value:
            differ[field] = {"stream": int(have), "settings": value}
    return differ


async def live_entries(js: JetStreamContext, bucket: str, pattern: str, *, values: bool) -> list[tuple[str, bytes]]:
    """The live keys of `bucket` matching `pattern` (a subject filter the server applies), with
    their values when asked (else empty values), in key order.

    The keys are the stream's subjects as its state reports them (one request, answered by the
    stream's leader; `remove_key` takes a key's subject out of the stream, so a subject present
    is a live key), and each value a direct read of the key's last message. No consumer is made:
    nats-py's `KeyValue.watch` ends its listing on a marker that races (CI saw an empty listing),
    and the ordered consumers a listing would need were seen to stall for minutes on nats-server
    2.9 after a cluster node's loss (placed on the lost node), holding every listing up.
    """
    stream = f"KV_{bucket}"
    prefix = f"$KV.{bucket}."
    state = (await js.stream_info(stream, subjects_filter=prefix + pattern)).state
    found: list[tuple[str, bytes]] = []
    for subject in sorted(state.subjects or {}):
        key = subject[len(prefix) :]
        if not values:
            found.append((key, b""))
            continue
        try:
            msg = await js.get_last_msg(stream, subject)
        except nats.js.errors.NotFoundError:
            continue  # removed since the state was read
        if _removed(msg.headers):
            continue
        found.append((key, msg.data or b""))
    return found


async def read_entry(js: JetStreamContext, bucket: str, key: str) -> tuple[bytes | None, int | None]:
    """The key's value (None: removed or never written) and its revision (None: no message at
    all), read from the stream's leader. Not nats-py's `KeyValue.get`: on a bucket that allows
    direct gets, any replica answers that one, and a replica that fell behind (after a cluster
    node's loss) answers with an older value, which a compare-and-set then cannot write on."""
    try:
        msg = await js.get_last_msg(f"KV_{bucket}", f"$KV.{bucket}.{key}")
    except nats.js.errors.NotFoundError:
        return None, None
    return (None if _removed(msg.headers) else (msg.data or b"")), msg.seq


async def remove_key(js: JetStreamContext, bucket: str, key: str) -> None:
    """Take `key` out of `bucket` altogether (a purge of its subject, no delete marker left): a
    listing's subjects are then exactly the live keys. A watcher of the key sees no change."""
    await js.purge_stream(f"KV_{bucket}", subject=f"$KV.{bucket}.{key}")


async def watch_key(
    bus: BusThread, bucket: str, key: str, *, quiet_seconds: float = WATCH_QUIET_SECONDS
) -> AsyncIterator[bytes | None]:
    """The value of `key` now and after each change, on the caller's loop; None when the key is
    gone. Each value is yielded once, never an older one after a newer (stream sequences only
    grow). Stop by leaving the iteration.

    No JetStream consumer is made: a plain subscription to the key's subject (a put is a message
    published there) says *that* the key changed, and each change, like the first value, is read
    directly from the stream. The ordered consumer this used to open had to be created by the
    stream's leader: after a cluster node's loss nats-server 2.9 answered that creation with
    timeouts for minutes, and a front could not follow any job. A core subscription moves to the
    next server with the connection by itself. When no change arrives for `quiet_seconds` the key
    is read anyway: a change published while the connection moved, a change this connection
    made itself (the bus asks for no echo), or a key removed without a marker (`remove_key`), is
    still seen; a bus that is down only delays the next read."""
    caller = asyncio.get_running_loop()
    changed = asyncio.Event()
    stream, subject = f"KV_{bucket}", f"$KV.{bucket}.{key}"

    async def subscribe() -> Subscription:
        async def receive(_msg: Msg) -> None:
            caller.call_soon_threadsafe(changed.set)

        return await bus.nc.subscribe(subject, cb=receive)

    async def read() -> tuple[int, bytes | None]:
        try:
            msg = await bus.js.get_last_msg(stream, subject)
        except nats.js.errors.NotFoundError:
            return 0, None
        return msg.seq or 0, None if _removed(msg.headers) else (msg.data or b"")

    subscription = await bus.run(subscribe, f"watch {key}")
    last: bytes | None = b"\x00unseen"
    last_seq = 0
    try:
        while True:
            try:
                seq, value = await bus.run(read, f"read {key}")
            except ApplianceError:
                seq, value = -1, last  # the bus is down: the next change or quiet period reads again
            gone = seq == 0  # purged or never written: no sequence to compare
            if value != last and (gone or seq >= last_seq):  # a lagging replica's older copy is skipped
                last, last_seq = value, max(seq, last_seq)
                yield value
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), quiet_seconds)
            changed.clear()
    finally:
        with contextlib.suppress(Exception):  # the connection may be gone at stop; the server drops it
            await bus.run(subscription.unsubscribe, f"stop watching {key}")
