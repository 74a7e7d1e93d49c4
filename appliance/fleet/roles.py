"""What a fleet role is built from: one NATS connection and what runs on it (README "Fleet").

Imported by a front or a segment only: a standalone appliance never imports nats-py.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import SecretStr

from appliance.config import Settings
from appliance.errors import ConfigError
from appliance.fleet.budgets import FleetBudgets
from appliance.fleet.bus import BusSettings, BusThread
from appliance.fleet.front import STALE_AFTER_SECONDS, FrontFleet
from appliance.fleet.kv import stream_drift
from appliance.fleet.queue import JobQueue, QueueSettings
from appliance.fleet.records import RecordSeals
from appliance.fleet.seal import SealCheck, Sealer, missing
from appliance.fleet.segments import SegmentRegistry
from appliance.jobs.jetstream import JetStreamJobStore

log = logging.getLogger(__name__)


@dataclass
class FleetParts:
    bus: BusThread
    store: JetStreamJobStore
    registry: SegmentRegistry
    queue: JobQueue
    # Streams whose settings differ from this appliance's (read at a front's start: `read_drift`).
    drift: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def read_drift(self) -> dict[str, dict[str, dict[str, int]]]:
        """Compare the fleet's streams with what these settings would create (a front's start):
        JetStream keeps the settings of a stream's creation, so a later APPLIANCE_FLEET_REPLICAS
        (or queue bound) changes nothing there. Each difference is logged, kept in `drift` and
        shown in /healthz `checks.fleet`; the operator changes the stream (`nats stream edit`)."""
        replicas = {"num_replicas": self.store.replicas}
        queue = self.queue.settings
        wanted = {
            queue.stream: {"num_replicas": queue.replicas, "max_msgs": queue.max_jobs},
            f"KV_{self.store.bucket}": replicas,
            f"KV_{self.store.live_bucket}": replicas,
            f"OBJ_{self.store.raw_bucket}": replicas,
            f"KV_{self.registry.bucket}": {"num_replicas": self.registry.replicas},
        }

        async def read() -> dict[str, dict[str, dict[str, int]]]:
            found = {stream: await stream_drift(self.bus.js, stream, fields) for stream, fields in wanted.items()}
            return {stream: differ for stream, differ in found.items() if differ}

        self.drift = self.bus.call_repeatable(read, "read the fleet's stream settings")
        for stream, differ in self.drift.items():
            for name, values in differ.items():
                log.warning(
                    "a fleet stream keeps the settings it was created with",
                    extra={
                        "stream": stream,
                        "setting": name,
                        "stream_value": values["stream"],
                        "settings_value": values["settings"],
                        "recovery": f"nats stream edit {stream} (as a NATS admin), or remove it while the fleet is "
                        "idle so that a front creates it anew",
                    },
                )
        return self.drift

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


def _rotated_front_keys(settings: Settings) -> dict[str, Ed25519PublicKey]:
    """The fronts' public keys besides a front's own (the public keys file, while a key is rotated)."""
    return {} if settings.fleet_seal_public_keys_file is None else seal_check(settings).keys


def record_seals(settings: Settings, sealer: Sealer | None, seals: SealCheck | None) -> RecordSeals:
    """How a served role signs the records it writes and whom it trusts (appliance.fleet.records):
    a front as a front (its own key, and the public keys file's while a key is rotated), a segment
    appliance with a key of its own made now (connect publishes it)."""
    if settings.role == "segment":
        # The settings refuse a segment role without its name; app.py read its seal_check.
        assert settings.segment is not None
        assert seals is not None
        return RecordSeals.of_segment(settings.segment, seals.keys)
    assert sealer is not None
    return RecordSeals.of_front(sealer.key, _rotated_front_keys(settings))


def operator_records(settings: Settings) -> RecordSeals:
    """`appliance jobs` on a fleet store: with the fronts' key it reads and writes as a front;
    with the public keys alone (a segment's container) it reads and checks, and writes no record."""
    if settings.fleet_seal_key_file is not None:
        return RecordSeals.of_front(sealer(settings).key, _rotated_front_keys(settings))
    if settings.fleet_seal_public_keys_file is None:
        raise missing("front")
    return RecordSeals(None, dict(seal_check(settings).keys))


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
    records = operator_records(settings)  # the key files first: nothing is read unchecked
    bus = BusThread(bus_settings(settings))
    bus.start()
    try:
        create = creates(settings)
        store = JetStreamJobStore(bus, replicas=settings.fleet_replicas, create=create, records=records)
        records.lookup = SegmentRegistry(bus, replicas=settings.fleet_replicas, create=create).published
        return bus, store
    except BaseException:
        bus.close()
        raise


def connect(settings: Settings, records: RecordSeals) -> FleetParts:
    """Connect and open the buckets and the queue; BusUnavailable (the start is refused) when
    NATS does not answer: a fleet appliance without its bus has nothing to serve. A segment
    appliance publishes its record key before anything else is written (`records`)."""
    bus = BusThread(bus_settings(settings))
    bus.start()
    try:
        create = creates(settings)
        store = JetStreamJobStore(bus, replicas=settings.fleet_replicas, create=create, records=records)
        registry = SegmentRegistry(bus, replicas=settings.fleet_replicas, create=create)
        records.lookup = registry.published
        if settings.role == "segment" and records.signer is not None and settings.segment is not None:
            registry.publish_key(records.signer, settings.segment, settings.appliance_id, time.time())
        queue = JobQueue(bus, queue_settings(settings), create=create)
        parts = FleetParts(bus, store, registry, queue)
        if create:  # a front: the role that makes the streams reads what they kept
            parts.read_drift()
    except BaseException:
        bus.close()
        raise
    return parts
