"""What a fleet role is built from: one NATS connection and what runs on it (README "Fleet").

Imported by a front or a segment only: a standalone appliance never imports nats-py.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from appliance.config import Settings
from appliance.errors import ConfigError
from appliance.fleet.budgets import FleetBudgets
from appliance.fleet.bus import BusSettings, BusThread
from appliance.fleet.front import STALE_AFTER_SECONDS, FrontFleet
from appliance.fleet.queue import JobQueue, QueueSettings
from appliance.fleet.seal import SealCheck, Sealer, missing
from appliance.fleet.segments import SegmentRegistry
from appliance.jobs.jetstream import JetStreamJobStore


@dataclass
class FleetParts:
    bus: BusThread
    store: JetStreamJobStore
    registry: SegmentRegistry
    queue: JobQueue

    def front(self, sealer: Sealer) -> FrontFleet:
        # Stale after three missed advertisements (segments advertise every ack_wait / 3), and
        # never sooner than the default.
        stale = max(STALE_AFTER_SECONDS, 3 * self.queue.settings.heartbeat_seconds)
        return FrontFleet(self.registry, self.queue, self.store, sealer, stale_after_seconds=stale)

    def budgets(self) -> FleetBudgets:
        """Engagement budgets in the job bucket: reserved by a front, found by the segment."""
        return FleetBudgets(self.store)

    def close(self) -> None:
        self.bus.close()


def bus_settings(settings: Settings) -> BusSettings:
    tls = None
    if settings.nats_ca_file is not None:
        tls = ssl.create_default_context(cafile=str(settings.nats_ca_file))
    password = None
    if settings.nats_user is not None and settings.nats_password_file is not None:
        password = SecretStr(_read_secret(settings.nats_password_file, "APPLIANCE_NATS_PASSWORD_FILE"))
    return BusSettings(
        servers=settings.nats_servers(),
        name=f"mcp-scanner-appliance {settings.role} {settings.appliance_id}",
        tls=tls,
        credentials=settings.nats_credentials_file,
        user=settings.nats_user,
        password=password,
    )


def _read_secret(path: Path, setting: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"{setting} {path} cannot be read: {exc.strerror}",
            rule="settings_invalid",
            recovery_suggestion=f"Mount the file {setting} names (scripts/up writes secrets/nats_password_<user>).",
        ) from exc
    if not value:
        raise ConfigError(
            f"{setting} {path} is empty",
            rule="settings_invalid",
            recovery_suggestion="Run scripts/up (it writes the NATS passwords) or put the user's password in it.",
        )
    return value


def sealer(settings: Settings) -> Sealer:
    """A front's seal key; a front without one refuses to start (fleet_seal_key_missing)."""
    if settings.fleet_seal_key_file is None:
        raise missing("front")
    return Sealer.from_file(settings.fleet_seal_key_file)


def seal_check(settings: Settings) -> SealCheck:
    """A segment's fronts' public keys; a segment without them refuses to start."""
    if settings.fleet_seal_public_keys_file is None:
        raise missing("segment")
    return SealCheck.from_file(settings.fleet_seal_public_keys_file)


def queue_settings(settings: Settings) -> QueueSettings:
    return QueueSettings(
        ack_wait_seconds=settings.fleet_ack_wait_seconds,
        max_deliver=settings.fleet_max_deliver,
        replicas=settings.fleet_replicas,
    )


def creates(settings: Settings) -> bool:
    """Fronts create the fleet's stream and buckets when missing. A segment with a NATS user or
    credentials only opens them: its user may not create or delete any (README "Fleet", bus
    security), and a clear `bus_not_provisioned` beats a request the server leaves unanswered.
    On a bus without authentication (a developer's nats-server) any role creates them."""
    secured = settings.nats_user is not None or settings.nats_credentials_file is not None
    return settings.role == "front" or not secured


def connect_store(settings: Settings) -> tuple[BusThread, JetStreamJobStore]:
    """The bus and the job store alone (the operator CLI's `appliance jobs`); close the bus after."""
    bus = BusThread(bus_settings(settings))
    bus.start()
    try:
        return bus, JetStreamJobStore(bus, replicas=settings.fleet_replicas, create=creates(settings))
    except BaseException:
        bus.close()
        raise


def connect(settings: Settings) -> FleetParts:
    """Connect and open the buckets and the queue; BusUnavailable (the start is refused) when
    NATS does not answer: a fleet appliance without its bus has nothing to serve."""
    bus = BusThread(bus_settings(settings))
    bus.start()
    try:
        create = creates(settings)
        store = JetStreamJobStore(bus, replicas=settings.fleet_replicas, create=create)
        registry = SegmentRegistry(bus, replicas=settings.fleet_replicas, create=create)
        queue = JobQueue(bus, queue_settings(settings), create=create)
    except BaseException:
        bus.close()
        raise
    return FleetParts(bus, store, registry, queue)
