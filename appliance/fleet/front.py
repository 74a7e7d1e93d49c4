"""A fleet front's side of a job: route it, queue it, follow its record until a segment ends it.

The front runs no scanner. Its ScanService checks a request as far as it can without the
segment's network (appliance.fleet.routing says what that is), records the job in the shared
store, and hands the scan_id to the segment's queue. The segment's appliance re-checks, runs and
records everything that follows; the front only watches the record change (a JetStream
key-value watch, so an answer comes the moment the segment writes it, not at a polling tick).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from appliance.errors import ResourceExhaustedError
from appliance.fleet.kv import watch_key
from appliance.fleet.queue import JobQueue
from appliance.fleet.routing import SegmentScope, route
from appliance.fleet.seal import Sealer
from appliance.fleet.segments import SegmentRegistry, SegmentView
from appliance.jobs.jetstream import JetStreamJobStore
from appliance.jobs.model import Job
from appliance.policy.model import PrincipalConcurrency

# A segment's advertisement older than this is not routed to (segments refresh theirs every
# few seconds, README "Fleet").
STALE_AFTER_SECONDS = 30.0
# How long a front reuses the segments it read: routing must not cost a KV listing per call.
VIEW_SECONDS = 1.0


@dataclass
class FrontFleet:
    registry: SegmentRegistry
    queue: JobQueue
    store: JetStreamJobStore
    # Signs each job this front admits (segments run only sealed jobs: appliance.fleet.seal).
    sealer: Sealer
    stale_after_seconds: float = STALE_AFTER_SECONDS
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._view: SegmentView | None = None
        self._read_at = 0.0
        self.routed: dict[str, int] = {}  # jobs handed to each segment (appliance_fleet_jobs_routed)

    def view(self) -> SegmentView:
        """The segments as last read (read again after VIEW_SECONDS)."""
        if self._view is None or self.monotonic() - self._read_at > VIEW_SECONDS:
            self._view = self.registry.view()
            self._read_at = self.monotonic()
        return self._view

    def route(self, target: str) -> SegmentScope:
        """The segment that runs `target`, or the refusal naming the segments known."""
        return route(target, self.view().segments, now=self.clock(), stale_after_seconds=self.stale_after_seconds)

    async def share_refusal(self, owner: str, share: PrincipalConcurrency) -> ResourceExhaustedError | None:
        """The refusal of one more job for `owner` when its unfinished scans in the whole fleet
        (every front's, in the shared store) have reached its share: the front's policy's
        per-principal `running` plus `queued`. A standalone appliance applies both to its own
        slots; a front has none, and the fleet's queue is one line per segment, so without this
        one principal's thousand jobs would make every other team's wait behind them. Two fronts
        admitting at the same instant may both pass (the count is read, not reserved)."""
        most = share.running + share.queued
        held = await self.store.unfinished_of(owner)
        if held < most:
            return None
        return ResourceExhaustedError(
            f"principal {owner} already has {held} scans queued or running in the fleet, its limit ({share.running} "
            f"running + {share.queued} queued, the front's limits.concurrency.per_principal)",
            rule="principal_queue_full",
            recovery_suggestion="Wait for your scans to finish (get_scan, list_scans) before sending more.",
        )

    async def dispatch(self, segment: str, scan_id: str, headers: dict[str, str]) -> None:
        await self.queue.publish(segment, scan_id, headers)
        self.routed[segment] = self.routed.get(segment, 0) + 1

    async def follow(self, scan_id: str) -> AsyncIterator[Job | None]:
        """The job's record now and after each change (None: it was deleted)."""
        async for value in watch_key(self.store.bus, self.store.bucket, f"job.{scan_id}"):
            yield None if not value else await self.store.decode_soon(value)
