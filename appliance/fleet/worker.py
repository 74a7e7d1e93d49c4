"""A fleet segment's loop: take the segment's jobs off the queue, claim, re-check, run, ack.

Each job message is handled the same way whatever happens to it, and acked only once its end is
recorded (or it is not ours to run), so a crash at any point leaves the message to be delivered
again, and the claim in the store decides whether the next delivery runs it:

- the record is gone, finished, or claimed by another appliance: ack, run nothing;
- claimed here (a redelivery takes over the claim of an appliance that stopped answering):
  `ScanService.adopt` re-checks the whole request against this segment's policy; a refusal ends
  the job `failed` with its rule (audited), and the message is acked;
- admitted: it runs like a standalone scan; in-progress heartbeats keep the message while it
  runs; the ack follows the job's final record.

The segment also advertises its scope (appliance.fleet.segments) every heartbeat, and marks
`interrupted` a job of its segment whose claiming appliance has been silent for longer than
JetStream keeps redelivering (`ack_wait x max_deliver`): nobody is left to run or end it. A job
of its segment left `awaiting_approval` past its deadline (the question a front asked, README
"Approval") is ended `failed` (approval_declined) by the same sweep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from appliance.approval.desk import declined
from appliance.approval.model import Decision
from appliance.errors import ApplianceError
from appliance.fleet import approvals
from appliance.fleet.queue import Delivery, QueueSettings, SegmentConsumer
from appliance.fleet.records import RecordUnverifiedError
from appliance.fleet.seal import SEAL_RULES, SealCheck
from appliance.fleet.segments import SegmentRegistry, advertisement
from appliance.fleet.shards import fold_shard, merge_parent
from appliance.jobs.jetstream import JetStreamJobStore
from appliance.jobs.model import Job
from appliance.service import ScanService
from appliance.tracing import spans

log = logging.getLogger(__name__)

# How long one fetch waits for a job before the loop looks at its stop flag again.
FETCH_WAIT_SECONDS = 1.0
# After a failed fetch (NATS down): wait before the next try; the bus reconnects meanwhile.
RETRY_SECONDS = 1.0
# How often an ended job whose final record the store refused is written again.
FLUSH_RETRY_SECONDS = 1.0
# After an advertisement that failed: the next try (sooner than a heartbeat).
ADVERTISE_RETRY_SECONDS = 0.5


@dataclass
class WorkerCounts:
    """What the loop did, for the sidecar's metrics and /healthz."""

    received: int = 0
    redelivered: int = 0
    not_ours: int = 0
    refused: int = 0
    started: int = 0
    abandoned: int = 0  # marked interrupted: their appliance went silent
    cancelled: int = 0  # a cancel request came before they started: ended without running
    merged: int = 0  # sharded scans this appliance ended by merging their shards
    unapproved: int = 0  # awaiting approval past their deadline: ended approval_declined
    unsealed: int = 0  # refused (and counted in `refused` too): no front sealed them as they stand


@dataclass
class SegmentWorker:
    service: ScanService
    store: JetStreamJobStore
    consumer: SegmentConsumer
    registry: SegmentRegistry
    segment: str
    appliance_id: str
    queue: QueueSettings
    # The fronts' public keys: a job no front sealed is refused before anything starts.
    seals: SealCheck
    clock: Callable[[], float] = time.time
    counts: WorkerCounts = field(default_factory=WorkerCounts)

    def __post_init__(self) -> None:
        self._running: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()

    @property
    def capacity(self) -> int:
        """Jobs this appliance runs at once: the policy's global running limit."""
        return max(1, self.service.store.current.policy.limits.concurrency.global_.running)

    def advertise(self) -> None:
        scope = advertisement(self.service.store.current.policy, self.segment, self.clock())
        self.registry.advertise(scope, self.appliance_id)

    def withdraw(self) -> None:
        """A clean stop: fronts route no more jobs here on this appliance's account."""
        try:
            self.registry.withdraw(self.segment, self.appliance_id)
        except ApplianceError as exc:
            log.warning("segment advertisement not withdrawn", extra={"rule": exc.rule})

    async def run(self) -> None:
        """Until `stopping` is set: advertise, fetch and start jobs while there is capacity."""
        beats = asyncio.create_task(self._advertise_forever())
        try:
            while not self.stopping.is_set():
                if len(self._running) >= self.capacity:
                    await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    delivery = await self.consumer.next(FETCH_WAIT_SECONDS)
                except ApplianceError as exc:
                    log.warning("no job fetched", extra={"rule": exc.rule, "reason": exc.message})
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
                except Exception:  # an unmapped NATS error: the loop outlives it
                    log.exception("no job fetched")
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
                if delivery is not None:
                    await self.handle(delivery)
        finally:
            beats.cancel()

    async def drain(self) -> None:
        """Wait for the jobs this appliance runs to end (the service's stop ends them)."""
        if self._running:
            await asyncio.wait(self._running)

    async def handle(self, delivery: Delivery) -> None:
        """One delivery, to its start (the job then runs as its own task) or its ack. Whatever
        goes wrong with one delivery is logged and leaves the loop running (the message, not
        acked, comes again after ack_wait)."""
        try:
            await self._handle(delivery)
        except RecordUnverifiedError as exc:
            await self._untrusted(delivery, exc)
        except Exception:
            log.exception("job delivery could not be handled", extra={"scan_id": delivery.scan_id})

    async def _untrusted(self, delivery: Delivery, exc: RecordUnverifiedError) -> None:
        """A job whose record no front and no appliance of this segment wrote as it stands (another
        segment's login rewrote it): nothing in it is run or written back (what it says cannot be
        told from what it said), the refusal is audited and counted for the
        ApplianceFleetUnsealedJob alert, and the message acked (a redelivery would find the same)."""
        self.counts.refused += 1
        self.counts.unsealed += 1
        record = {"scan_id": delivery.scan_id, "segment": self.segment, "runner": self.appliance_id}
        self.service.refuse(exc, record, tool=None)
        await self._ack(delivery)

    async def _handle(self, delivery: Delivery) -> None:
        self.counts.received += 1
        # A redelivery takes the job over from a silent claimer up to max_deliver deliveries; past
        # that it runs only a job nobody claimed yet (every earlier claim failed: the store was
        # unreachable), and a silent claimer's job is left to the orphan sweep (`interrupted`).
        takeover = 1 < delivery.attempt <= self.queue.max_deliver
        if delivery.attempt > 1:
            self.counts.redelivered += 1
            if self._runner_alive(delivery.scan_id):
                # Redelivered because a heartbeat was late, not because its runner died: the
                # runner goes on (and acks it); taking it over would run the scan twice.
                self.counts.not_ours += 1
                await self._ack(delivery)
                return
        claimed = self._claim(delivery, takeover=takeover)
        if claimed is None:
            return
        job, cancel_waits = claimed
        if job is None and self._miscounted_redelivery(delivery):
            # nats-server 2.9 (Debian 12's) can hand a redelivery out again as a first delivery
            # when the pull request it was meant for expires at that moment (nats-io/nats-server
            # #5305, fixed in 2.10): the claim of an appliance that stopped answering is taken
            # over as a redelivery's would be, not left to the orphan sweep.
            self.counts.redelivered += 1
            claimed = self._claim(delivery, takeover=True)
            if claimed is None:
                return
            job, cancel_waits = claimed
        if job is None:
            self.counts.not_ours += 1
            await self._ack(delivery)
            return
        if cancel_waits:
            # Cancelled while it waited in the queue (a sharded scan's cancel reaches every
            # shard): it ends here without starting a scanner.
            self.counts.cancelled += 1
            self._cancel_unstarted(job)
            await self._stored_then_ack(delivery)
            self.fold(job.scan_id, job.parent)
            return
        with spans.continued(delivery.headers):  # the job's span joins the front's trace
            task = await self.service.adopt(job, self.seals.check)
        if task is None:
            self.counts.refused += 1
            if (job.error or {}).get("rule") in SEAL_RULES:  # forged or rewritten on the bus: an alert
                self.counts.unsealed += 1
            await self._stored_then_ack(delivery)  # the refusal's `failed` record first
            self.fold(job.scan_id, job.parent)
            return
        self.counts.started += 1
        watched = asyncio.create_task(self._until_done(task, delivery, job.parent))
        self._running.add(watched)
        watched.add_done_callback(self._running.discard)

    def _claim(self, delivery: Delivery, *, takeover: bool) -> tuple[Job | None, bool] | None:
        """The store's claim (the job, or None when not ours; whether a cancel waits), or None
        when the store did not answer: not acked, JetStream delivers it again after ack_wait,
        when the store may answer."""
        try:
            return self.store.claim_to_run(delivery.scan_id, self.appliance_id, self.clock(), takeover=takeover)
        except RecordUnverifiedError:
            raise  # not the store's trouble: a refusal (handle)
        except ApplianceError as exc:
            log.warning("job not claimed", extra={"scan_id": delivery.scan_id, "rule": exc.rule})
            return None

    def _runner_alive(self, scan_id: str) -> bool:
        """Is the appliance that claimed this job still heard from (this one, running it; or
        another whose advertisement is younger than two heartbeats)?"""
        return self._claimer(scan_id) == "alive"

    def _miscounted_redelivery(self, delivery: Delivery) -> bool:
        """A "first" delivery of a job an appliance claimed and went silent on: only a redelivery
        miscounted by the server leaves that (claims follow deliveries, and a front queues a job
        once). Counted as the second delivery: taken over only when max_deliver allows one."""
        return delivery.attempt == 1 and self.queue.max_deliver >= 2 and self._claimer(delivery.scan_id) == "silent"

    def _claimer(self, scan_id: str) -> Literal["none", "alive", "silent"]:
        """`none` (no record, unclaimed or finished), `alive` (this appliance running it, or
        another heard from within two heartbeats) or `silent`."""
        current = self.store.get(scan_id)
        if current is None or current.runner is None or current.finished:
            return "none"
        if current.runner == self.appliance_id:
            return "alive" if scan_id in self.service.jobs.live else "silent"
        heard = self.registry.heartbeats(self.segment).get(current.runner)
        alive = heard is not None and self.clock() - heard <= 2 * self.queue.heartbeat_seconds
        return "alive" if alive else "silent"

    async def _until_done(self, task: asyncio.Task[object], delivery: Delivery, parent: str | None) -> None:
        beats = asyncio.create_task(self.consumer.heartbeats(delivery.msg))
        try:
            await asyncio.wait({task})
            await self._stored_then_ack(delivery)
        finally:
            beats.cancel()
        self.fold(delivery.scan_id, parent)  # after its final record: see appliance.fleet.shards

    def _cancel_unstarted(self, job: Job) -> None:
        note = "cancelled before it started (a cancel request was waiting for it)"
        live = self.service.jobs.adopt(job)
        self.service.jobs.finish(live, "cancelled", note=note)
        self.service.jobs.audit_state(live.job, "cancelled", note)
        try:
            self.store.drop_cancel_requests([job.scan_id])
        except ApplianceError as exc:  # dropped by the next sweep of cancel requests (the job is over)
            log.warning("cancel request not dropped", extra={"scan_id": job.scan_id, "rule": exc.rule})

    def fold(self, scan_id: str, parent: str | None) -> Job | None:
        """A shard's end (its final record, read back) folded into its sharded scan: one read of
        each and a compare-and-set, whatever the number of shards. Audited when it ends the
        scan here. A store that does not answer leaves it to the next sweep."""
        if parent is None:
            return None
        try:
            shard = self.store.get(scan_id)
        except ApplianceError as exc:
            log.warning("shard not folded into its scan", extra={"scan_id": parent, "rule": exc.rule})
            return None
        return None if shard is None else self._merged(self._fold_ended(shard))

    def merge(self, parent: str | None, unfinished: Mapping[str, Job] | None = None) -> Job | None:
        """Bring a sharded scan up to date with its shards (progress, the ends no fold brought,
        its end once they all ended), reading the shards neither folded nor in `unfinished` (the
        sweep's listing); audited when it ends here. A store that does not answer leaves it to
        the next sweep."""
        if parent is None:
            return None
        try:
            merged = merge_parent(self.store, parent, self.clock(), self.queue.given_up_after_seconds, unfinished)
        except ApplianceError as exc:
            log.warning("sharded scan not merged", extra={"scan_id": parent, "rule": exc.rule})
            return None
        return self._merged(merged)

    def _fold_ended(self, shard: Job) -> Job | None:
        """A shard's end this appliance holds (read back, or just written) folded into its parent."""
        try:
            return fold_shard(self.store, shard, self.clock())
        except ApplianceError as exc:
            log.warning("shard not folded into its scan", extra={"scan_id": shard.parent, "rule": exc.rule})
            return None

    def _merged(self, merged: Job | None) -> Job | None:
        if merged is not None and merged.finished:
            self.counts.merged += 1
            self.service.jobs.audit_state(merged, merged.state, merged.events[-1].get("note"))
            if merged.engagement is not None:  # the place the front reserved for the whole block
                self.service.forget_budget(merged.engagement, merged.scan_id)
        return merged

    def merge_parents(self, unfinished: list[Job] | None = None) -> list[str]:
        """The sweep's safety net: merge every unfinished sharded scan of this segment (a fold
        lost to a crash or a store outage between a shard's end and its parent's write), from
        `unfinished` (the heartbeat's one listing of the segment's unfinished jobs)."""
        jobs = self.store.unfinished(self.segment) if unfinished is None else unfinished
        shards = {job.scan_id: job for job in jobs if job.parent is not None}
        ended: list[str] = []
        for job in jobs:
            if job.shards and job.segment == self.segment:
                merged = self.merge(job.scan_id, shards)
                if merged is not None and merged.finished:
                    ended.append(job.scan_id)
        return ended

    async def _stored_then_ack(self, delivery: Delivery) -> None:
        """The ack says the job's end is recorded: a final write the store refused (NATS electing
        a leader) is written again first, the message kept meanwhile."""
        while delivery.scan_id in self.service.jobs.flush_unsaved():  # noqa: ASYNC110 - a retry, no event
            await asyncio.sleep(FLUSH_RETRY_SECONDS)
        await self._ack(delivery)

    async def _ack(self, delivery: Delivery) -> None:
        try:
            await self.consumer.settle(delivery.msg, "ack")
        except ApplianceError as exc:
            # Delivered again after ack_wait; the claim then finds the job finished and acks it.
            log.warning("job message not acked", extra={"scan_id": delivery.scan_id, "rule": exc.rule})
        except Exception:
            log.exception("job message not acked", extra={"scan_id": delivery.scan_id})

    async def _advertise_forever(self) -> None:
        """The advertisement every heartbeat; after a failed one (JetStream still electing its
        leaders at start, a node lost) the next try comes sooner: a segment nobody sees gets no
        jobs. The orphan sweep rides along."""
        while True:
            advertised = False
            try:
                self.advertise()
                advertised = True
                # One listing of the segment's unfinished jobs for the three sweeps (each write
                # is a compare-and-set: a record changed since it was listed is read again).
                unfinished = self.store.unfinished(self.segment)
                self.abandon_orphans(unfinished)
                self.merge_parents(unfinished)
                self.expire_approvals(unfinished)
            except ApplianceError as exc:
                log.warning("segment heartbeat failed", extra={"rule": exc.rule, "reason": exc.message})
            except Exception:  # a bad record or an unmapped NATS error must not end the heartbeats
                log.exception("segment heartbeat failed unexpectedly")
            await asyncio.sleep(self.queue.heartbeat_seconds if advertised else ADVERTISE_RETRY_SECONDS)

    def abandon_orphans(self, unfinished: list[Job] | None = None) -> list[str]:
        """Mark `interrupted` the jobs of this segment that an appliance claimed and then went
        silent on for longer than JetStream redelivers (its advertisement is that old or gone);
        `unfinished`: the heartbeat's listing (else read here)."""
        now = self.clock()
        alive = {
            appliance: at
            for appliance, at in self.registry.heartbeats(self.segment).items()
            if now - at <= self.queue.given_up_after_seconds
        }
        ended: list[str] = []
        for job in self.store.unfinished(self.segment) if unfinished is None else unfinished:
            if job.segment != self.segment or job.runner is None or job.runner in alive:
                continue
            if job.runner == self.appliance_id or job.scan_id in self.service.jobs.live:
                continue
            if now - job.updated_at <= self.queue.given_up_after_seconds:
                continue
            note = f"appliance {job.runner} stopped answering and no other appliance took the job over"
            abandoned = self.store.abandon(job.scan_id, job.runner, now, note)
            if abandoned is not None:
                self.service.jobs.audit_state(abandoned, "interrupted", note)
                self.counts.abandoned += 1
                ended.append(job.scan_id)
                self._merged(self._fold_ended(abandoned))
        return ended

    def expire_approvals(self, unfinished: list[Job] | None = None) -> list[str]:
        """End `failed` (approval_declined, timed out) the jobs of this segment still awaiting the
        approval a front asked for past their deadline; audited by the appliance whose
        compare-and-set wins (another segment appliance, or a front reading the late retry, may
        end it first). The engagement place the front reserved is given back."""
        now = self.clock()
        ended: list[str] = []
        for job in self.store.unfinished(self.segment) if unfinished is None else unfinished:
            if job.segment != self.segment or not approvals.expired(job, now):
                continue
            assert job.approval is not None  # expired() says it has a question
            decision = Decision("timed_out")
            error = declined(job.scan_id, int(job.approval.get("timeout_seconds", 0)), decision)
            done = self.store.update(job.scan_id, approvals.end_unapproved(decision, error, now), attempts=3)
            if done is None:
                continue
            self.counts.unapproved += 1
            ended.append(job.scan_id)
            service = self.service
            try:
                service.audit.write(approvals.approval_line(done, decision))
            except ApplianceError:
                log.error("approval timeout could not be audited", extra={"scan_id": job.scan_id})
            record = {
                "request_id": done.request_id,
                "principal": done.principal,
                "tool": done.tool,
                "scan_id": done.scan_id,
                "segment": self.segment,
                "state": "failed",
            }
            try:
                service.refuse(error, record, tool=done.tool)
            except ApplianceError:
                log.error("approval timeout could not be audited", extra={"scan_id": job.scan_id})
            if done.engagement is not None:
                service.forget_budget(done.engagement, done.scan_id)
        return ended
