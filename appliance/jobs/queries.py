"""The four tools that follow jobs: get_scan, cancel_scan, list_scans, diff_scans.

Each takes the caller as a `Viewer` (or a plain principal: its own scans only). A principal
sees its own scans and, with scan:read, its engagements' scans; scan:admin sees all. A scan it
may not see gets the same `scan_not_found` as an id that never existed. Only the owner or
scan:admin cancels (`cancel_not_owner`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from appliance.errors import ApplianceError, NotFoundError, ValidationError
from appliance.jobs.diff import ScanDiff, diff_results, diff_views, result_view
from appliance.jobs.manager import JobManager, ProgressFn
from appliance.jobs.model import STATES, Job, Viewer, viewer_of
from appliance.jobs.store import JobFilter
from appliance.jobs.views import summary_of
from appliance.policy.model import Policy

log = logging.getLogger(__name__)

# No pattern in the schema (tools/list budget): an id of any other form is simply not found.
SCAN_ID = Field(max_length=64)
StatusFilter = Literal[
    "queued", "running", "awaiting_approval", "completed", "partial", "failed", "cancelled", "interrupted"
]
ToolName = Literal["nmap_scan", "masscan_scan", "gobuster_scan"]
assert set(StatusFilter.__args__) == set(STATES)  # type: ignore[attr-defined]


class GetScanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scan_id: str = SCAN_ID
    wait_seconds: int = Field(default=0, ge=0, le=3600, description="Wait up to this long for it to finish.")


class CancelScanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scan_id: str = SCAN_ID


class ListScansRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tool: ToolName | None = None
    target: str | None = Field(default=None, max_length=253)
    status: StatusFilter | None = None
    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=64, description="A page's next_cursor.")


class DiffScansRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scan_id: str = SCAN_ID
    against_scan_id: str | None = Field(
        default=None, max_length=64, description="Default: the previous completed scan."
    )


class ScanSummary(BaseModel):
    scan_id: str
    tool: str
    target: str
    status: str
    created_at: float
    finished_at: float | None = None
    progress: float | None = None
    resource_uri: str
    error_rule: str | None = None
    engagement: str | None = Field(default=None, description="The engagement the scan ran in.")


class ScanList(BaseModel):
    scans: list[ScanSummary] = Field(description="Newest first.")
    next_cursor: str | None = Field(default=None, description="Pass as cursor for the next page; null at the end.")


class JobQueries:
    def __init__(self, jobs: JobManager, policy: Callable[[], Policy]) -> None:
        self.jobs = jobs
        self._policy = policy

    async def get_scan(self, request: GetScanRequest, owner: Viewer | str, progress: ProgressFn | None = None) -> Job:
        limit = self._policy().limits.max_wait_seconds
        if request.wait_seconds > limit:
            raise ValidationError(
                f"wait_seconds {request.wait_seconds} is outside 0-{limit}",
                rule="wait_out_of_bounds",
                recovery_suggestion=f"Wait at most {limit} seconds and call get_scan again if it still runs.",
            )
        job = self.jobs.visible(request.scan_id, owner)
        return await self.jobs.wait(job, request.wait_seconds, progress)

    async def cancel_scan(self, request: CancelScanRequest, owner: Viewer | str) -> tuple[Job, bool]:
        """Stop the scan (its process group is killed; what it found is kept). The bool says
        whether this call stopped it (False: it had already finished)."""
        job = self.jobs.visible(request.scan_id, owner)
        if not viewer_of(owner).may_cancel(job):
            raise ValidationError(
                f"scan {job.scan_id} belongs to another principal of engagement {job.engagement}; only its owner "
                "or scan:admin may cancel it",
                rule="cancel_not_owner",
                recovery_suggestion="Ask the principal that started it, or an operator with scan:admin.",
            )
        stopped = self.jobs.cancel(job)
        if stopped:
            # The task ends through the service's one bookkeeping end: state, audit, metrics.
            job = await self.jobs.wait(job, CANCEL_WAIT_SECONDS)
        return job, stopped

    def list_scans(self, request: ListScansRequest, owner: Viewer | str) -> ScanList:
        viewer = viewer_of(owner)
        where = JobFilter(
            principal=None if viewer.admin else viewer.owner,
            engagements=viewer.engagements,
            tool=request.tool,
            target=request.target,
            states=None if request.status is None else frozenset({request.status}),
        )
        if request.cursor is not None and not request.cursor.startswith("scan_"):
            raise ValidationError(
                "cursor is not one this appliance gave out",
                rule="cursor_invalid",
                recovery_suggestion="Pass the next_cursor of the previous list_scans page, or omit it.",
            )
        page = self.jobs.page(where, request.limit, request.cursor)
        return ScanList(
            scans=[ScanSummary.model_validate(summary_of(job)) for job in page.jobs], next_cursor=page.next_cursor
        )

    def diff_scans(self, request: DiffScansRequest, owner: Viewer | str) -> ScanDiff:
        after = self.jobs.visible(request.scan_id, owner)
        if request.against_scan_id is None:
            # The previous scan of the same principal (rescans are per principal), if the caller may see it.
            before = self.jobs.store.previous_completed(after.tool, after.target, after.principal, after.scan_id)
            if before is not None and not viewer_of(owner).sees(before):
                before = None
            if before is None:
                raise NotFoundError(
                    f"no completed {after.tool} scan of {after.target!r} older than {after.scan_id}",
                    rule="no_previous_scan",
                    recovery_suggestion="Name the scan to compare with in against_scan_id, or scan the target again "
                    "later and diff the new scan.",
                )
        else:
            before = self.jobs.visible(request.against_scan_id, owner)
        if before.tool != after.tool:
            raise ValidationError(
                f"{before.scan_id} is a {before.tool} scan and {after.scan_id} a {after.tool} scan",
                rule="diff_tool_mismatch",
                recovery_suggestion="Diff two scans of the same tool.",
            )
        for job in (before, after):
            if job.result is None:
                raise ValidationError(
                    f"scan {job.scan_id} has no findings yet (status {job.state})",
                    rule="scan_has_no_result",
                    recovery_suggestion="Wait for it with get_scan, or diff another scan.",
                )
        assert before.result is not None
        assert after.result is not None
        return diff_results(
            after.tool, before.result, after.result, scan_id=after.scan_id, against_scan_id=before.scan_id
        )


# cancel_scan waits this long for the stopped scan to hand back what it found (SIGTERM grace 0.5 s).
CANCEL_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class Previous:
    """A rescan's previous scan as looked up when it started (None: it has none)."""

    scan_id: str | None


def changes_since(
    jobs: JobManager, job: Job, result: dict[str, Any], shown: int = 20, looked_up: Previous | None = None
) -> dict[str, Any] | None:
    """What a finished rescan changed since the previous completed scan of its tool and target.

    `result` is the job's completed result: its view is kept (`jobs.result_views`) for the next
    rescan of the same target, which then reads only its own result. `looked_up`: the previous
    scan as found when the job started (JobManager.previous_completed_id); else found now.
    """
    after = result_view(job.tool, result)
    jobs.result_views.keep(job.scan_id, after)
    try:
        if looked_up is None:
            previous = jobs.store.previous_completed_id(job.tool, job.target, job.principal, job.scan_id)
        else:
            previous = looked_up.scan_id
        if previous is None:
            return None
        # The view this process kept when that scan completed, else its stored result (a restart).
        before = jobs.result_views.get(previous)
        if before is None:
            stored = jobs.store.get(previous)
            if stored is None or stored.result is None:
                return None
            before = result_view(job.tool, stored.result)
    except ApplianceError as exc:
        # The store did not answer: the scan ends without its diff (diff_scans makes it later);
        # it must end all the same, never stay `running` over its diff.
        log.warning(
            "no changes_since_previous: the store did not answer", extra={"scan_id": job.scan_id, "rule": exc.rule}
        )
        return None
    try:
        diff = diff_views(job.tool, before, after, scan_id=job.scan_id, against_scan_id=previous)
    except ValidationError:
        return None  # not comparable (two gobuster modes): diff_scans says why when asked
    entries = [entry.model_dump(mode="json", exclude_none=True) for entry in diff.entries]
    return {
        "previous_scan_id": previous,
        "summary": diff.summary,
        "counts": diff.counts,
        "entries": entries[:shown],
        "entries_truncated": len(entries) > shown,
    }
