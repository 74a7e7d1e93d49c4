"""JetStream job stores on a test's own nats-server: each test gets buckets of its own."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from appliance.audit import AuditSink
from appliance.config import Settings
from appliance.fleet.bus import BusSettings, BusThread
from appliance.fleet.queue import JobQueue, QueueSettings
from appliance.fleet.records import RecordSeals
from appliance.fleet.roles import FleetParts
from appliance.fleet.seal import SealCheck, Sealer
from appliance.fleet.segments import SegmentRegistry
from appliance.fleet.worker import SegmentWorker
from appliance.jobs.jetstream import JetStreamJobStore, live_bucket_of
from appliance.jobs.manager import JobManager
from appliance.jobs.model import Job
from appliance.metrics import Metrics
from appliance.policy.store import PolicyStore
from appliance.service import ScanService
from appliance.tools import TOOLS
from support.lab import FakeResolver, LabService
from support.policies import LOOPBACK_POLICY, write_policy
from support.runners import SpyRunner
from support.servers import Served, served

# The fronts' seal key of every fleet the tests build (appliance.fleet.seal): fronts sign with it,
# segments check with its public key. A forged job a test wants the segment's own checks to see
# (not only the seal's) is sealed with it too, as a front's key holder could.
SEAL_KEY = Ed25519PrivateKey.generate()
SEALER = Sealer(SEAL_KEY)
SEALS = SealCheck.of([SEAL_KEY.public_key()])


def sealed(job: Job) -> Job:
    """`job` sealed as a front seals what it admits (and its approval, when it says approved)."""
    SEALER.admit(job)
    if (job.approval or {}).get("decision") == "approved":
        SEALER.approve(job)
    return job


def seal_files(directory: Path) -> dict[str, str]:
    """The seal key and its public key as files in `directory`, as the settings of both roles."""
    key, public = directory / "fleet_seal_key.pem", directory / "fleet_seal_pub.pem"
    if not key.exists():
        key.write_bytes(
            SEAL_KEY.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        public.write_bytes(
            SEAL_KEY.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    return {"APPLIANCE_FLEET_SEAL_KEY_FILE": str(key), "APPLIANCE_FLEET_SEAL_PUBLIC_KEYS_FILE": str(public)}


def started_bus(url: str, **settings: Any) -> BusThread:
    bus = BusThread(BusSettings(servers=(url,), **settings))
    bus.start()
    return bus


@contextlib.contextmanager
def jetstream_store_factory(url: str) -> Iterator[Callable[[], JetStreamJobStore]]:
    """A factory of stores on the same fresh buckets, each on its own connection (as two
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


# --- an in-process fleet: fronts and segments, each on its own NATS connection -------------


@dataclass(frozen=True)
class FleetNames:
    """One test's fleet: buckets and a job stream of its own on the session's nats-server."""

    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def jobs_bucket(self) -> str:
        return f"jobs_{self.suffix}"

    @property
    def live_bucket(self) -> str:
        return live_bucket_of(self.jobs_bucket)

    @property
    def raw_bucket(self) -> str:
        return f"raw_{self.suffix}"

    @property
    def segments_bucket(self) -> str:
        return f"segments_{self.suffix}"

    def queue(self, **overrides: Any) -> QueueSettings:
        return QueueSettings(stream=f"JOBS_{self.suffix}", subject_prefix=f"jobs_{self.suffix}", **overrides)


def record_seals(segment: str | None) -> RecordSeals:
    """A front's record signatures (SEAL_KEY), or a new appliance of `segment`'s (a key of its own)."""
    return RecordSeals.of_front(SEAL_KEY) if segment is None else RecordSeals.of_segment(segment, SEALS.keys)


def fleet_parts(
    url: str,
    names: FleetNames,
    queue: QueueSettings,
    *,
    create: bool = True,
    bus: Mapping[str, Any] | None = None,
    segment: str | None = None,
    appliance_id: str = "front-1",
) -> FleetParts:
    """One appliance's parts, as appliance.fleet.roles.connect makes them: a front's (`segment`
    None) or an appliance of `segment`'s, its record key published; `create` False opens only
    (a segment: its NATS user may not create), `bus` more BusSettings (a user, a password, TLS)."""
    connection = started_bus(url, **(bus or {}))
    try:
        records = record_seals(segment)
        store = JetStreamJobStore(
            connection, bucket=names.jobs_bucket, raw_bucket=names.raw_bucket, create=create, records=records
        )
        registry = SegmentRegistry(connection, bucket=names.segments_bucket, create=create)
        records.lookup = registry.published
        if segment is not None and records.signer is not None:
            registry.publish_key(records.signer, segment, appliance_id, time.time())
        return FleetParts(connection, store, registry, JobQueue(connection, queue, create=create))
    except BaseException:
        connection.close()
        raise


@dataclass
class FleetMember:
    """One fleet appliance of a test: its parts, its service, its audit lines."""

    parts: FleetParts
    lab: LabService
    worker: SegmentWorker | None = None

    @property
    def service(self) -> ScanService:
        return self.lab.service


def fleet_member(
    url: str,
    names: FleetNames,
    policy_path: Path,
    *,
    queue: QueueSettings,
    segment: str | None = None,
    appliance_id: str = "front-1",
    runner: Any = None,
    resolves: Mapping[str, Sequence[str]] | None = None,
    settings: Mapping[str, Any] | None = None,
    bus: Mapping[str, Any] | None = None,
    create: bool = True,
) -> FleetMember:
    """A front (segment None: routes and follows; the spy runner proves it starts nothing) or an
    appliance of `segment` (the real runner unless a test gives one, the dict resolver)."""
    parts = fleet_parts(url, names, queue, create=create, bus=bus, segment=segment, appliance_id=appliance_id)
    audit, registry, resolver = io.StringIO(), CollectorRegistry(), FakeResolver(resolves)
    runner = SpyRunner() if runner is None and segment is None else runner
    sink = AuditSink(stream=audit)
    front = parts.front(SEALER) if segment is None else None
    service = ScanService(
        Settings(privilege_mode="connect", policy_path=policy_path, role="standalone", **(settings or {})),  # type: ignore[arg-type]
        PolicyStore(policy_path),
        sink,
        resolve=resolver,
        **({} if runner is None else {"runner": runner}),
        metrics=Metrics(registry, TOOLS, process=False),
        jobs=JobManager(parts.store, sink, follow=None if front is None else front.follow),
        fleet=front,
        budgets=parts.budgets(),
    )
    member = FleetMember(parts, LabService(service, audit, registry, resolver, runner))
    if segment is not None:
        member.worker = SegmentWorker(
            service, parts.store, parts.queue.consumer(segment), parts.registry, segment, appliance_id, queue, SEALS
        )
        member.worker.advertise()
    return member


# Two segments on loopback addresses the tests listen on themselves: seg-a holds 127.0.0.0/24
# and seg-b 127.0.1.0/24. Loopback is one network to the scope check (insecure_allow_loopback
# opens all of 127.0.0.0/8), so seg-a's policy denies seg-b's block outright: a job for seg-b's
# target is out of seg-a's scope by seg-a's own policy.
SEGMENT_POLICIES: dict[str, dict[str, Any]] = {
    "seg-a": {
        "scope": {
            "allow_networks": ["127.0.0.0/24"],
            "deny_networks": ["127.0.1.0/24"],
            "allow_hostname_suffixes": [".seg-a.lab.internal"],
        }
    },
    "seg-b": {
        "scope": {
            "allow_networks": ["127.0.1.0/24"],
            "deny_networks": ["127.0.0.0/24"],
            "allow_hostname_suffixes": [".seg-b.lab.internal"],
        }
    },
}
# The front's own rules: loopback and both suffixes (the global rules; routing does the rest).
FRONT_POLICY: dict[str, Any] = {
    "scope": {"allow_networks": [], "allow_hostname_suffixes": [".seg-a.lab.internal", ".seg-b.lab.internal"]}
}


# --- the roles as `appliance serve` processes (a nats-server of the test's own: default names) --


@contextlib.contextmanager
def served_front(directory: Path, url: str, policy: dict[str, Any] | None = None, **env: str) -> Iterator[Served]:
    """`appliance serve --role front` with FRONT_POLICY (and `policy` merged in) on NATS at
    `url`; `env`: more APPLIANCE_* settings (a request-state key file)."""
    path = write_policy(directory, LOOPBACK_POLICY, FRONT_POLICY, policy or {}, name="front.yaml")
    with served(path, APPLIANCE_ROLE="front", APPLIANCE_NATS_URL=url, **{**seal_files(directory), **env}) as server:
        yield server


@contextlib.contextmanager
def served_segment(
    directory: Path, url: str, name: str, appliance_id: str, policy: dict[str, Any] | None = None, **env: str
) -> Iterator[Served]:
    """`appliance serve --role segment` of segment `name` (SEGMENT_POLICIES, `policy` merged in)
    on NATS at `url`; `env`: more APPLIANCE_* settings."""
    path = write_policy(directory, LOOPBACK_POLICY, SEGMENT_POLICIES[name], policy or {}, name=f"{name}.yaml")
    with served(
        path,
        APPLIANCE_ROLE="segment",
        APPLIANCE_NATS_URL=url,
        APPLIANCE_SEGMENT=name,
        APPLIANCE_APPLIANCE_ID=appliance_id,
        APPLIANCE_DATA_DIR=str(directory / appliance_id),
        **{**seal_files(directory), **env},
    ) as server:
        yield server


class FleetLab:
    """Fronts and segment appliances of one test on the session's nats-server; every connection
    is closed at the end."""

    def __init__(
        self,
        url: str,
        directory: Path,
        *,
        policy: dict[str, Any] | None = None,
        names: FleetNames | None = None,
        credentials: Callable[[str | None], Mapping[str, Any]] | None = None,
        **queue: Any,
    ) -> None:
        """`policy`: merged into every member's policy (engagements, say). `credentials(segment)`:
        the BusSettings of a front (None) or of a segment's appliance (a secured server's user,
        password and TLS); with them, as in the deployment, only fronts create the stream and
        buckets (start a front first)."""
        self.url = url
        self.directory = directory
        self.policy = policy or {}
        self.names = names or FleetNames()
        self.queue = self.names.queue(**queue)
        self.credentials = credentials
        self.members: list[FleetMember] = []

    def _bus(self, segment: str | None) -> dict[str, Any]:
        if self.credentials is None:
            return {}
        return {"bus": self.credentials(segment), "create": segment is None}

    def _policy(self, name: str, *extra: dict[str, Any]) -> Path:
        return write_policy(self.directory, LOOPBACK_POLICY, *extra, self.policy, name=f"{name}.yaml")

    def front(self, policy: dict[str, Any] | None = None, **settings: Any) -> FleetMember:
        """A front; `policy`: rules merged into its policy (a sharding threshold); `settings`:
        its Settings' fields (a request-state key file)."""
        name = f"front-{len(self.members)}"
        member = fleet_member(
            self.url,
            self.names,
            self._policy(name, FRONT_POLICY, policy or {}),
            queue=self.queue,
            settings=settings,
            **self._bus(None),
        )
        self.members.append(member)
        return member

    def segment(
        self, segment: str, appliance_id: str, policy: dict[str, Any] | None = None, **options: Any
    ) -> FleetMember:
        """An appliance of `segment`; `policy`: rules merged into its segment's policy."""
        path = self._policy(f"{segment}-{appliance_id}", SEGMENT_POLICIES[segment], policy or {})
        member = fleet_member(
            self.url,
            self.names,
            path,
            queue=self.queue,
            segment=segment,
            appliance_id=appliance_id,
            **self._bus(segment),
            **options,
        )
        self.members.append(member)
        return member

    def queue_messages(self) -> int:
        """Job messages left in this fleet's stream (none once every job is acked)."""
        return self.members[0].parts.queue.messages()

    def close(self) -> None:
        for member in self.members:
            member.parts.close()

    def __enter__(self) -> FleetLab:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@contextlib.asynccontextmanager
async def running(*segments: FleetMember) -> AsyncIterator[None]:
    """The segments' job loops (and their heartbeat sweeps), stopped at the end."""
    tasks = []
    for member in segments:
        assert member.worker is not None
        tasks.append(asyncio.create_task(member.worker.run()))
    try:
        yield
    finally:
        for member in segments:
            assert member.worker is not None
            member.worker.stopping.set()
        await asyncio.wait(tasks, timeout=10)


async def until(member: FleetMember, scan_id: str, *states: str, seconds: float = 30.0) -> Job:
    """The job's record once it is in one of `states`, read from `member`'s store."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job = member.parts.store.get(scan_id)
        if job is not None and job.state in states:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"{scan_id} did not reach {states} within {seconds} s: {member.parts.store.get(scan_id)}")


def stored_keys(store: JetStreamJobStore) -> set[str]:
    """Every key of a JetStream job store: its job bucket's and its live bucket's."""

    async def read() -> set[str]:
        keys = {key for key, _ in await store._keys(">")}
        return keys | {key for key, _ in await store._keys("u.>")} | {key for key, _ in await store._keys("c.>")}

    return store.bus.call(read, "list every key")


def record_reads(store: JetStreamJobStore) -> list[str]:
    """The scan ids whose records `store` reads from now on (a list that grows as it reads)."""
    reads: list[str] = []
    real_record = store._record

    async def counted(scan_id: str) -> bytes | None:
        reads.append(scan_id)
        return await real_record(scan_id)

    store._record = counted  # type: ignore[method-assign]
    return reads
