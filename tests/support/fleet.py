"""JetStream job stores on a test's own nats-server: each test gets buckets of its own."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator

from appliance.fleet.bus import BusSettings, BusThread
from appliance.jobs.jetstream import JetStreamJobStore


def started_bus(url: str, **settings: float) -> BusThread:
    bus = BusThread(BusSettings(servers=(url,), **settings))  # type: ignore[arg-type]
    bus.start()
    return bus


@contextlib.contextmanager
def jetstream_store_factory(url: str) -> Iterator[Callable[[], JetStreamJobStore]]:
    """A factory of stores on the same two fresh buckets, each on its own connection (as two
    fronts have); every connection is closed at the end."""
    suffix = uuid.uuid4().hex[:12]
    buses: list[BusThread] = []

    def open_store() -> JetStreamJobStore:
        bus = started_bus(url)
        buses.append(bus)
        return JetStreamJobStore(bus, bucket=f"jobs_{suffix}", raw_bucket=f"raw_{suffix}")

    try:
        yield open_store
    finally:
        for bus in buses:
            bus.close()
