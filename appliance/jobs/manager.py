"""Jobs at run time: each admitted scan runs as a task the appliance owns, not the request.

The caller's request only waits for it (`wait_seconds`); when the wait ends first the call
returns the job as it stands and the scan goes on. Every state change is written to the store
and to the audit trail, counted, and announced (resource subscriptions) - here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from appliance.audit import AuditSink
from appliance.errors import ApplianceError, NotFoundError, ResourceExhaustedError
from appliance.jobs.diff import ResultView
from appliance.jobs.model import Job, JobState, Viewer, new_scan_id, viewer_of
from appliance.jobs.store import ChangingStore, JobFilter, JobPage, JobStore, LookingAheadStore, SendingStore
from appliance.tracing import spans

log = logging.getLogger(__name__)

# Diff views kept for rescans (ResultViews): the last results of this many scans, and no more
# than this many hosts, ports and findings in all (a few hundred bytes each: a sweep of a /16
# must not keep 64 copies of itself in memory).
RESULT_VIEWS_KEPT = 64
RESULT_VIEW_ENTRIES_KEPT = 50_000

ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]
ChangeFn = Callable[[Job], None]
FollowFn = Callable[[str], AsyncIterator[Job | None]]


def cancel_awaiting(now: float) -> Callable[[Job], bool]:
    """The compare-and-set change of cancel_scan on a fleet job nobody runs yet (awaiting approval)."""

    def change(current: Job) -> bool:
        if current.state != "awaiting_approval":
            return False
        current.move("cancelled", now, "cancelled while it awaited approval")
        return True

    return change


@dataclass
class LiveJob:
    """A job this process runs: its task, who is watching, and when it ends."""

    job: Job
    task: asyncio.Task[Any] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # Progress listeners: the waiting scan call, then any get_scan that waits; each best effort.
    listeners: set[ProgressFn] = field(default_factory=set)
    # Seconds its store writes took so far (the `store` stage of the call timings line).
    store_seconds: float = 0.0


class ResultViews:
    """The diff views (`result_view`) of the last completed results, by scan id: a rescan's
    `changes_since_previous` compares with the previous scan without reading its result again.
    A completed job's result never changes, so a view is right for as long as its scan exists
    (and a deleted scan is never the previous one: the store's index says which one is)."""

    def __init__(self, size: int = RESULT_VIEWS_KEPT, entries: int = RESULT_VIEW_ENTRIES_KEPT) -> None:
        self.size = size
        self.entries = entries
        self._views: OrderedDict[str, tuple[ResultView, int]] = OrderedDict()
        self._entries = 0

    def keep(self, scan_id: str, view: ResultView) -> None:
        weight = 1 + len(view.up) + len(view.ports) + len(view.findings)
        dropped = self._views.pop(scan_id, None)
        if dropped is not None:
            self._entries -= dropped[1]
        self._views[scan_id] = (view, weight)
        self._entries += weight
        while self._views and (len(self._views) > self.size or self._entries > self.entries):
            self._entries -= self._views.popitem(last=False)[1][1]

    def get(self, scan_id: str) -> ResultView | None:
        kept = self._views.get(scan_id)
        return None if kept is None else kept[0]


def scan_not_found(scan_id: str) -> NotFoundError:
    # The same answer for "no such scan" and "another principal's scan": ids do not leak.
    return NotFoundError(
        f"no scan {scan_id[:64]!r} is visible to you",
        rule="scan_not_found",
        recovery_suggestion="Call list_scans to see your scans; a scan id is only visible to the principal that "
        "started it and to the principals of its engagement.",
    )


class JobManager:
    def __init__(
        self,
        store: JobStore,
        audit: AuditSink,
        *,
        clock: Callable[[], float] = time.time,
        on_change: ChangeFn | None = None,
        follow: FollowFn | None = None,
    ) -> None:
        self.store = store
        # A fleet front: its jobs run on segments. A wait follows the job's record (`follow`: its
        # record now and after each change), and a cancel is a request the segment acts on.
        self.follow = follow
        self.audit = audit
        self._clock = clock
        self.live: dict[str, LiveJob] = {}
        self.result_views = ResultViews()
        # Jobs whose last store write failed (with the raw output it carried, if any): written
        # again, whole, by flush_unsaved until the store takes them. An ended scan's record is
        # never left behind in memory alone.
        self.unsaved: dict[str, tuple[Job, bytes | None]] = {}
        # State writes sent ahead (a SendingStore, `_save(ahead=True)`) until they land.
        self.landing: set[asyncio.Future[None]] = set()
        # Called after each state change is stored: metrics, resource update notifications.
        self.on_change: list[ChangeFn] = [on_change] if on_change else []

    # --- start and recovery ----------------------------------------------------------------
    def recover(self, runner: str | None = None) -> list[Job]:
        """At start: a job left queued, running or awaiting approval by a stop or a crash is
        `interrupted` (an approval question dies with the process that asked it); its findings so
        far stay as they were last recorded. In a fleet (`runner`: this appliance's id) only the
        jobs this appliance had claimed: the shared store holds everyone's."""
        left = [job for job in self.store.unfinished() if runner is None or job.runner == runner]
        for job in left:
            self._move(
                job, "interrupted", "the appliance stopped while this scan ran; findings so far are kept", audit=True
            )
        return left

    def admissible(self) -> None:
        """Raise when the store has no room for a new job (a scan it cannot keep does not start);
        a store that fails to write refuses in `create`."""
        problem = self.store.space_problem()
        if problem is not None:
            rule, reason = problem
            raise ResourceExhaustedError(
                f"new scans are refused: {reason}",
                rule=rule,
                recovery_suggestion="Retry later; the operator must free space on or fix the data volume "
                "(APPLIANCE_DATA_DIR). Stored scans stay readable.",
            )

    def new_scan_id(self) -> str:
        """An id for a job about to be created (`create(scan_id=...)`), on this manager's clock."""
        return new_scan_id(self._clock())

    def create(
        self,
        *,
        tool: str,
        target: str,
        scanned_address: str,
        owner: str,
        request: dict[str, Any],
        argv: list[str],
        request_id: str,
        engagement: str | None = None,
        state: JobState = "queued",
        approval: dict[str, Any] | None = None,
        segment: str | None = None,
        scan_id: str | None = None,
        shards: list[str] | None = None,
        caller: dict[str, Any] | None = None,
        seal: Callable[[Job], None] | None = None,
    ) -> LiveJob:
        """A new job, `queued` (or `awaiting_approval` when a human must approve it first:
        `approval` is then what it waits for). `scan_id`: one the caller made already (a fleet
        front reserves the engagement's budget under it before the job exists). `shards`: the
        scan ids of its shards (a fleet front's sharded scan). `seal`: a fleet front's signature
        of what it admitted (appliance.fleet.seal), put on the job before its first write."""
        now = self._clock()
        job = Job(
            scan_id=scan_id or new_scan_id(now),
            tool=tool,
            target=target,
            scanned_address=scanned_address,
            principal=owner,
            request=request,
            argv=argv,
            state=state,
            created_at=now,
            updated_at=now,
            request_id=request_id,
            engagement=engagement,
            approval=approval,
            segment=segment,
            shards=shards,
            caller=caller,
        )
        job.move(state, now)
        if seal is not None:
            seal(job)
        # The trail first, then the store, both fail closed: a job the trail does not show never
        # exists, and a scan the store cannot keep is refused before it starts.
        self.audit_state(job, state, strict=True)
        live = LiveJob(job, store_seconds=self._save(job, strict=True, new=True))
        self.live[job.scan_id] = live
        for notify in self.on_change:
            notify(job)
        return live

    def adopt(self, job: Job) -> LiveJob:
        """A job another appliance created and queued (a fleet front), now run by this one: it
        is written only when its state next changes."""
        live = LiveJob(job)
        self.live[job.scan_id] = live
        return live

    def release(self, live: LiveJob) -> None:
        """A job this appliance followed and no longer follows (its segment goes on running it):
        its waiters get it as it stands."""
        live.listeners.clear()
        self.live.pop(live.job.scan_id, None)
        live.done.set()

    def changed(self, job: Job) -> None:
        """A record another way changed (a fleet front's compare-and-set): tell the listeners."""
        for notify in self.on_change:
            notify(job)

    def settle(self, live: LiveJob, job: Job) -> None:
        """A job this appliance followed while another ran it ended: `job` is its final record
        (already stored by the appliance that ran it)."""
        live.job = job
        live.listeners.clear()
        self.live.pop(job.scan_id, None)
        live.done.set()
        for notify in self.on_change:
            notify(job)

    # --- changes ---------------------------------------------------------------------------
    def _move(
        self,
        job: Job,
        state: JobState,
        note: str | None,
        *,
        strict: bool = False,
        audit: bool = False,
        raw: bytes | None = None,
        state_only: bool = False,
        ahead: bool = False,
    ) -> float:
        """Returns the seconds the store write took."""
        job.move(state, self._clock(), note)
        seconds = self._save(job, strict=strict, raw=raw, state_only=state_only, ahead=ahead)
        if audit:
            self.audit_state(job, state, note)
        for notify in self.on_change:
            notify(job)
        return seconds

    def audit_state(self, job: Job, state: JobState, note: str | None = None, *, strict: bool = False) -> None:
        """An audit line for a state change no call line shows (the service's start and end lines
        carry `scan_id` and `state` for the others): created (queued), interrupted at start.
        `strict`: a sink failure raises (the job is then refused), else it is logged."""
        record: dict[str, Any] = {
            "event": "job",
            "scan_id": job.scan_id,
            "state": state,
            "tool": job.tool,
            "principal": job.principal,
            "request_id": job.request_id,
        }
        if note:
            record["note"] = note
        try:
            self.audit.write(record)
        except ApplianceError:
            if strict:
                raise
            # After the start line the trail already shows the scan; a state line that cannot be
            # written is the sink's failure (readiness shows it), not a reason to lose the scan.
            log.error("audit line of a job state change could not be written", extra={"scan_id": job.scan_id})

    def _save(
        self,
        job: Job,
        *,
        strict: bool = False,
        raw: bytes | None = None,
        state_only: bool = False,
        new: bool = False,
        ahead: bool = False,
    ) -> float:
        """Write the whole job (`state_only`: its state change alone; `new`: its first write;
        `ahead`: a state change a SendingStore sends without waiting for it, see `running`);
        returns the seconds it took."""
        started = time.perf_counter()
        landing: Coroutine[Any, Any, None] | None = None
        try:
            with spans.stage("store", **{"appliance.scan_id": job.scan_id, "appliance.job.state": job.state}):
                if ahead and isinstance(self.store, SendingStore):
                    landing = self.store.put_state_soon(job)
                elif state_only:
                    self.store.put_state(job)
                else:
                    self.store.put(job, raw, new=new)
        except ApplianceError:
            if strict:
                raise
            self._keep_unsaved(job, raw)
        else:
            if landing is not None:
                sent = asyncio.ensure_future(self._landed(job, landing))
                self.landing.add(sent)
                sent.add_done_callback(self.landing.discard)
            elif job.scan_id in self.unsaved and (raw is not None or self.unsaved[job.scan_id][1] is None):
                del self.unsaved[job.scan_id]
        return time.perf_counter() - started

    def _keep_unsaved(self, job: Job, raw: bytes | None) -> None:
        """A write that did not land: the job kept in memory (get_scan still answers) and written
        again, whole, by flush_unsaved; raw output kept from an earlier failed write stays."""
        kept = self.unsaved.get(job.scan_id)
        self.unsaved[job.scan_id] = (job, raw if raw is not None else None if kept is None else kept[1])
        log.error("job store write failed; the job is kept in memory", extra={"scan_id": job.scan_id})

    async def previous_completed_id(self, job: Job) -> str | None:
        """The scan a rescan's `changes_since_previous` compares with: the newest completed scan
        of its tool, target and principal older than it, as the store has them when it starts
        (README "Diffs"). A fleet store's lookup is round trips, made while the scanner runs."""
        if isinstance(self.store, LookingAheadStore):
            return await self.store.previous_completed_id_soon(job.tool, job.target, job.principal, job.scan_id)
        return self.store.previous_completed_id(job.tool, job.target, job.principal, job.scan_id)

    def flush_unsaved(self) -> list[str]:
        """Write again every job whose last write failed; the scan ids still unsaved."""
        for scan_id, (job, raw) in list(self.unsaved.items()):
            try:
                self.store.put(job, raw)
            except ApplianceError:
                continue
            if self.unsaved.get(scan_id, (None, None))[0] is job:
                del self.unsaved[scan_id]
                log.info("job written after an earlier store failure", extra={"scan_id": scan_id})
        return list(self.unsaved)

    def approved(self, live: LiveJob) -> None:
        """Out of awaiting_approval into the queue; the whole job is written, with its decision."""
        live.store_seconds += self._move(live.job, "queued", "approved")

    def running(self, live: LiveJob) -> None:
        # Nothing but the state changed since `create` wrote the whole job. In a fleet segment
        # (a SendingStore) the scan starts while `running` is on its way to NATS (three round
        # trips). A write that fails is handled as a synchronous one would be: the job is kept
        # in memory and written again, whole, by flush_unsaved; the job's next write (its end)
        # waits for this one in the store, so a late `running` never overwrites the end.
        live.store_seconds += self._move(live.job, "running", None, state_only=True, ahead=True)

    async def _landed(self, job: Job, landing: Coroutine[Any, Any, None]) -> None:
        try:
            await landing
        except ApplianceError:
            self._keep_unsaved(job, None)  # an end kept meanwhile keeps its raw output

    def findings(self, live: LiveJob, result: dict[str, Any]) -> None:
        """Findings so far (finished host groups, lines): stored with the progress the job has
        reached, so a crash keeps them."""
        live.job.result = result
        live.job.updated_at = self._clock()
        live.store_seconds += self._save(live.job)

    def finish(
        self,
        live: LiveJob,
        state: JobState,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        raw: bytes | None = None,
        note: str | None = None,
    ) -> None:
        job = live.job
        if result is not None:
            job.result = result
        job.error = error
        if state in ("completed", "partial"):
            job.progress = 100.0
        # The final record and the raw output in one commit.
        live.store_seconds += self._move(job, state, note, raw=raw)
        live.listeners.clear()
        self.live.pop(job.scan_id, None)
        live.done.set()

    async def progress(self, live: LiveJob, done: float, total: float | None, message: str | None) -> None:
        live.job.progress = round(100.0 * done / total, 1) if total else done
        for listener in list(live.listeners):
            await listener(done, total, message)

    # --- reads -----------------------------------------------------------------------------
    def visible(self, scan_id: str, who: Viewer | str) -> Job:
        """The job, if `who` may see it (its own scans, its engagements' scans, all for an admin)."""
        live = self.live.get(scan_id)
        job = live.job if live is not None else self.store.get(scan_id)
        if job is None or not viewer_of(who).sees(job):
            raise scan_not_found(scan_id)
        return job

    async def wait(self, job: Job, seconds: float, progress: ProgressFn | None = None) -> Job:
        """Up to `seconds` for the job to finish. Cancelling this wait never cancels the job."""
        live = self.live.get(job.scan_id)
        if live is None and self.follow is not None and not job.finished and seconds > 0:
            return await self._followed(job, seconds, progress)
        if live is None or seconds <= 0:
            return live.job if live is not None else job
        if progress is not None:
            live.listeners.add(progress)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.done.wait(), seconds)
        finally:
            if progress is not None:
                live.listeners.discard(progress)
        return live.job

    async def _followed(self, job: Job, seconds: float, progress: ProgressFn | None) -> Job:
        """A fleet front's wait for a job a segment runs: its record's changes, up to `seconds`."""
        assert self.follow is not None
        latest = job

        async def until_finished() -> None:
            nonlocal latest
            assert self.follow is not None
            async for current in self.follow(job.scan_id):
                if current is None:  # deleted meanwhile: the last record seen stands
                    return
                if progress is not None and current.progress is not None and current.progress != latest.progress:
                    with contextlib.suppress(Exception):  # progress is best effort
                        await progress(current.progress, 100.0, None)
                latest = current
                if current.finished:
                    return

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until_finished(), seconds)
        return latest

    def cancel(self, job: Job) -> bool:
        """Stop a running job (its process group is killed; findings so far are kept).
        False when it had already finished. On a fleet front: a cancel request for the
        segment running it (it stops within a second or two; get_scan shows when)."""
        if self.follow is not None:
            current = self.store.get(job.scan_id) or job
            if current.finished:
                return False
            if current.state == "awaiting_approval" and isinstance(self.store, ChangingStore):
                # Nobody runs it yet (its question is in the record): ended here, by
                # compare-and-set against an answer or the deadline's sweep.
                ended = self.store.update(job.scan_id, cancel_awaiting(self._clock()))
                if ended is not None:
                    self.audit_state(ended, "cancelled", ended.events[-1].get("note"))
                    self.changed(ended)
                    return True
                moved = self.store.get(job.scan_id)  # answered or timed out meanwhile
                if moved is None or moved.finished:
                    return False
            self.store.request_cancel(job.scan_id, "cancel_scan", self._clock())
            # A sharded scan runs as its shards: each gets the request (one not yet started is
            # ended by the segment that claims it, before it starts).
            for shard in current.shards or ():
                self.store.request_cancel(shard, "cancel_scan", self._clock())
            return True
        live = self.live.get(job.scan_id)
        if live is None or live.task is None or live.task.done():
            return False
        live.task.cancel()
        return True

    def page(self, where: JobFilter, limit: int, cursor: str | None) -> JobPage:
        page = self.store.page(where, limit, cursor)
        # A running job's freshest state is in memory (progress is not written on every tick).
        return JobPage([self.live[j.scan_id].job if j.scan_id in self.live else j for j in page.jobs], page.next_cursor)
