"""The fleet's job queue: one JetStream work-queue stream, one subject and one durable consumer per segment.

A front publishes a job's scan_id on `jobs.<segment>` once the job's record is in the store (the
record is the job; the message only says "run it"). Every appliance of a segment pulls from the
segment's one durable consumer, so each message goes to one of them at a time (a queue group in
NATS' words). JetStream delivers at least once: an appliance that does not ack within `ack_wait`
(it died, or lost its link) has its message redelivered to another; the store's compare-and-set
claim (`JetStreamJobStore.claim`) keeps a redelivery from running a job twice. JetStream is told
to deliver without limit and the segment counts deliveries itself (appliance/fleet/worker.py): a
job may pass to another appliance up to `max_deliver` deliveries in all, but a message whose
claim failed (the store unreachable) is delivered again until its job is claimed or ended, so
no job is left `queued` with no message behind it. A long scan keeps its message by sending in-progress heartbeats, well
inside `ack_wait`.

Nothing in a message is trusted: the segment reads the job's record from the store and re-checks
the whole request against its own policy before it starts anything.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from appliance.errors import ApplianceError, ExecutionError, ResourceExhaustedError, ValidationError
from appliance.fleet.bus import BusThread
from appliance.fleet.kv import not_provisioned

STREAM = "APPLIANCE_JOBS"
SUBJECT_PREFIX = "jobs"
# A job message is a scan_id and a trace context; anything bigger is not ours.
MAX_MESSAGE_BYTES = 4096
SCAN_ID = re.compile(r"^scan_[0-9a-f]{20,40}$")
# JetStream's error codes for a publish the stream has no room for (nats-server errors.json):
# "maximum messages exceeded" comes as a store failure.
STREAM_STORE_FAILED = 10077
INSUFFICIENT_RESOURCES = 10047


@dataclass(frozen=True)
class QueueSettings:
    # How long an appliance may hold a job without a heartbeat before JetStream hands it to another.
    ack_wait_seconds: float = 30.0
    # Deliveries that may take a job over: the first and one redelivery to another appliance of the
    # segment (counted by the worker; JetStream itself redelivers without limit).
    max_deliver: int = 2
    # Jobs waiting in the whole fleet; a full queue refuses new jobs at the front (`queue_full`).
    max_jobs: int = 100_000
    replicas: int = 1
    # A fleet has one stream; tests give each fleet its own (subjects of two streams must not overlap).
    stream: str = STREAM
    subject_prefix: str = SUBJECT_PREFIX

    def subject_of(self, segment: str) -> str:
        return f"{self.subject_prefix}.{segment}"

    def consumer_of(self, segment: str) -> str:
        return f"segment_{segment}"

    @property
    def heartbeat_seconds(self) -> float:
        # Three heartbeats per ack_wait: one lost or late heartbeat does not lose the job.
        return self.ack_wait_seconds / 3

    @property
    def given_up_after_seconds(self) -> float:
        """After this long without an ack, JetStream delivers a job no more (ack_wait x max_deliver)."""
        return self.ack_wait_seconds * self.max_deliver


@dataclass
class Delivery:
    """One delivery of a job message to this appliance."""

    scan_id: str
    attempt: int  # 1 for the first delivery, 2 for the first redelivery, ...
    headers: dict[str, str]
    msg: Msg


def job_body(scan_id: str) -> bytes:
    return json.dumps({"scan_id": scan_id}, separators=(",", ":")).encode()


def parse_job_body(data: bytes) -> str:
    """The scan_id a job message names; ValidationError for anything else (the bus is not trusted)."""
    try:
        if len(data) > MAX_MESSAGE_BYTES:
            raise ValueError("too long")
        body = json.loads(data)
        scan_id = body["scan_id"] if isinstance(body, dict) else None
        if not isinstance(scan_id, str) or not SCAN_ID.fullmatch(scan_id):
            raise ValueError("no scan_id")
    except (ValueError, KeyError) as exc:
        raise ValidationError(
            f"a job message that is not a job: {exc}",
            rule="job_message_invalid",
            recovery_suggestion='Publish jobs through a front; a job message is {"scan_id": ...} of a stored job.',
        ) from exc
    return scan_id


class JobQueue:
    """The stream, for fronts (publish, depth) and segments (their consumer)."""

    def __init__(self, bus: BusThread, settings: QueueSettings | None = None, *, create: bool = True) -> None:
        """Open the stream; create it when missing if `create` (fronts; a segment's NATS user may
        not create it: ExecutionError `bus_not_provisioned`)."""
        self._bus = bus
        self.settings = settings or QueueSettings()
        self._create = create
        self._bus.call_repeatable(self._ensure_stream, "open the job queue")

    async def _ensure_stream(self) -> None:
        js: JetStreamContext = self._bus.js
        config = StreamConfig(
            name=self.settings.stream,
            subjects=[f"{self.settings.subject_prefix}.*"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=self.settings.replicas,
            max_msgs=self.settings.max_jobs,
            discard=DiscardPolicy.NEW,  # a full queue refuses the publish; it never drops a queued job
            max_msg_size=MAX_MESSAGE_BYTES,
        )
        try:
            await js.stream_info(self.settings.stream)
        except nats.js.errors.NotFoundError:
            if not self._create:
                raise not_provisioned(f"the job stream {self.settings.stream}") from None
            await js.add_stream(config)

    async def publish(self, segment: str, scan_id: str, headers: dict[str, str] | None = None) -> None:
        """Queue `scan_id` for `segment` (on the caller's loop; the bus loop does the work)."""

        async def send() -> None:
            # Nats-Msg-Id: a publish retried after a lost ack is stored once (the stream's duplicate window).
            await self._bus.js.publish(
                self.settings.subject_of(segment),
                job_body(scan_id),
                stream=self.settings.stream,
                headers={**(headers or {}), "Nats-Msg-Id": scan_id},
            )

        try:
            await self._bus.run(send, f"queue scan {scan_id} for segment {segment}")
        except nats.js.errors.APIError as exc:
            # The stream refuses a publish past max_msgs (DiscardPolicy.NEW) or its storage limits.
            if exc.err_code in (STREAM_STORE_FAILED, INSUFFICIENT_RESOURCES):
                raise ResourceExhaustedError(
                    f"the fleet's job queue refused scan {scan_id}: {exc.description}",
                    rule="queue_full",
                    recovery_suggestion=f"Retry when the segments have worked through the queue (at most "
                    f"{self.settings.max_jobs} jobs wait); the operator can add segment appliances.",
                ) from exc
            raise ExecutionError(
                f"the fleet's job queue refused scan {scan_id}: {exc!r}",
                rule="queue_unwritable",
                recovery_suggestion="Retry shortly; the operator must check the NATS JetStream servers.",
            ) from exc

    def depth(self, segment: str) -> int:
        """Jobs of `segment` waiting to be delivered or acked."""

        async def read() -> int:
            try:
                info = await self._bus.js.consumer_info(self.settings.stream, self.settings.consumer_of(segment))
            except nats.js.errors.NotFoundError:
                return 0
            return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

        return self._bus.call_repeatable(read, f"read the queue depth of segment {segment}")

    def waiting(self) -> dict[str, int]:
        """Job messages in the stream by segment (queued, or delivered and not yet acked), from the
        stream's own subject counts: segments nobody advertises any more are in it too."""
        prefix = f"{self.settings.subject_prefix}."

        async def read() -> dict[str, int]:
            info = await self._bus.js.stream_info(self.settings.stream, subjects_filter=prefix + "*")
            return {subject[len(prefix) :]: int(count) for subject, count in (info.state.subjects or {}).items()}

        return self._bus.call_repeatable(read, "read the job queue by segment")

    def messages(self) -> int:
        """Job messages in the stream (queued, or delivered and not yet acked)."""

        async def read() -> int:
            info = await self._bus.js.stream_info(self.settings.stream)
            return int(info.state.messages)

        return self._bus.call_repeatable(read, "read the job queue")

    def consumer(self, segment: str) -> SegmentConsumer:
        return SegmentConsumer(self._bus, segment, self.settings)


class SegmentConsumer:
    """A segment appliance's pull from its segment's durable consumer (shared by the segment's appliances)."""

    def __init__(self, bus: BusThread, segment: str, settings: QueueSettings) -> None:
        self._bus = bus
        self.segment = segment
        self.settings = settings
        self._sub: JetStreamContext.PullSubscription | None = None
        self._bus.call(self._subscribe, f"subscribe to the jobs of segment {segment}")

    async def _subscribe(self) -> None:
        settings = self.settings
        durable, subject = settings.consumer_of(self.segment), settings.subject_of(self.segment)
        config = ConsumerConfig(
            # `name` too: nats-py then creates (or updates) it on the API subject naming the
            # filter, the one a segment's NATS user may use (its own consumer, its own subject).
            name=durable,
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=settings.ack_wait_seconds,
            max_deliver=-1,  # the worker counts (see the module's docstring)
            filter_subject=subject,
            max_ack_pending=1000,
        )
        # Created, or updated to these settings: a changed ack_wait reaches a consumer an earlier
        # start made (pull_subscribe alone binds to it as it is).
        await self._bus.js.add_consumer(settings.stream, config)
        self._sub = await self._bus.js.pull_subscribe(subject, durable=durable, stream=settings.stream, config=config)

    async def next(self, wait_seconds: float) -> Delivery | None:
        """The next job message for this segment, or None after `wait_seconds` without one."""

        async def fetch() -> Msg | None:
            assert self._sub is not None
            try:
                messages = await self._sub.fetch(1, timeout=wait_seconds)
            except nats.errors.TimeoutError:
                return None
            return messages[0] if messages else None

        msg = await self._bus.run(fetch, f"fetch a job of segment {self.segment}", seconds=wait_seconds + 5)
        if msg is None:
            return None
        headers = dict(msg.headers or {})
        try:
            scan_id = parse_job_body(msg.data)
        except ValidationError:
            await self.settle(msg, "term")  # never redelivered: no appliance could run it
            raise
        return Delivery(scan_id, int(msg.metadata.num_delivered), headers, msg)

    async def settle(self, msg: Msg, how: str) -> None:
        """`ack` (done: ran, refused, or not ours to run), `term` (never deliver again) or
        `in_progress` (still running: restart ack_wait)."""

        async def send() -> None:
            if how == "ack":
                await msg.ack_sync(timeout=self._bus.settings.operation_timeout_seconds)
            elif how == "term":
                await msg.term()
            else:
                await msg.in_progress()

        await self._bus.run(send, f"{how} a job message of segment {self.segment}")

    async def heartbeats(self, msg: Msg) -> None:
        """Keep `msg` ours while its job runs (cancel this task when the job ends)."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            try:
                await self.settle(msg, "in_progress")
            except (ApplianceError, nats.errors.Error):
                continue  # a lost heartbeat: the next one may get through before ack_wait
