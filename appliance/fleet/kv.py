"""JetStream key-value plumbing the fleet's buckets share (the job store, the segment registry)."""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue


async def key_value_bucket(js: JetStreamContext, name: str, *, replicas: int, direct: bool = False) -> KeyValue:
    """The bucket `name`, created (file storage, history 1) when it does not exist yet."""
    try:
        return await js.key_value(name)
    except nats.js.errors.BucketNotFoundError:
        config = KeyValueConfig(bucket=name, history=1, storage=StorageType.FILE, replicas=replicas, direct=direct)
        return await js.create_key_value(config)


async def live_entries(kv: KeyValue, pattern: str, *, values: bool) -> list[tuple[str, bytes]]:
    """The live keys matching `pattern` (a subject filter the server applies), with their values
    when asked (else headers only, and empty values)."""
    watcher = await kv.watch(pattern, meta_only=not values, ignore_deletes=True)
    found: list[tuple[str, bytes]] = []
    try:
        async for entry in watcher:
            if entry is None:  # the end of what is stored now
                break
            found.append((entry.key, entry.value or b""))
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated
    return found
