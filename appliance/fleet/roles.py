"""What a fleet role is built from: one NATS connection and what runs on it (README "Fleet").

Imported by a front or a segment only: a standalone appliance never imports nats-py.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from appliance.config import Settings
from appliance.fleet.budgets import FleetBudgets
from appliance.fleet.bus import BusSettings, BusThread
from appliance.fleet.front import STALE_AFTER_SECONDS, FrontFleet
from appliance.fleet.queue import JobQueue, QueueSettings
from appliance.fleet.segments import SegmentRegistry
from appliance.jobs.jetstream import JetStreamJobStore


@dataclass
class FleetParts:
    bus: BusThread
    store: JetStreamJobStore
    registry: SegmentRegistry
    queue: JobQueue

    def front(self) -> FrontFleet:
        # Stale after three missed advertisements (segments advertise every ack_wait / 3), and
        # never sooner than the default.
        stale = max(STALE_AFTER_SECONDS, 3 * self.queue.settings.heartbeat_seconds)
        return FrontFleet(self.registry, self.queue, self.store, stale_after_seconds=stale)

    def budgets(self) -> FleetBudgets:
        """Engagement budgets in the job bucket: reserved by a front, found by the segment."""
        return FleetBudgets(self.store)

    def close(self) -> None:
        self.bus.close()


def bus_settings(settings: Settings) -> BusSettings:
    tls = None
    if settings.nats_ca_file is not None:
        tls = ssl.create_default_context(cafile=str(settings.nats_ca_file))
    return BusSettings(
        servers=settings.nats_servers(),
        name=f"mcp-scanner-appliance {settings.role} {settings.appliance_id}",
        tls=tls,
        credentials=settings.nats_credentials_file,
    )


def queue_settings(settings: Settings) -> QueueSettings:
    return QueueSettings(
        ack_wait_seconds=settings.fleet_ack_wait_seconds,
        max_deliver=settings.fleet_max_deliver,
        replicas=settings.fleet_replicas,
    )


def connect_store(settings: Settings) -> tuple[BusThread, JetStreamJobStore]:
    """The bus and the job store alone (the operator CLI's `appliance jobs`); close the bus after."""
    bus = BusThread(bus_settings(settings))
    bus.start()
    try:
        return bus, JetStreamJobStore(bus, replicas=settings.fleet_replicas)
    except BaseException:
        bus.close()
        raise


def connect(settings: Settings) -> FleetParts:
    """Connect and open the buckets and the queue; BusUnavailable (the start is refused) when
    NATS does not answer: a fleet appliance without its bus has nothing to serve."""
    bus = BusThread(bus_settings(settings))
    bus.start()
    try:
        store = JetStreamJobStore(bus, replicas=settings.fleet_replicas)
        registry = SegmentRegistry(bus, replicas=settings.fleet_replicas)
        queue = JobQueue(bus, queue_settings(settings))
    except BaseException:
        bus.close()
        raise
    return FleetParts(bus, store, registry, queue)
