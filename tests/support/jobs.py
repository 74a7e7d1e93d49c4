"""Jobs as the store holds them, for tests that fill a store directly (no scan runs)."""

from __future__ import annotations

from typing import Any

from appliance.jobs.model import Job, JobState, new_scan_id


def stored_job(
    state: JobState = "completed",
    *,
    tool: str = "nmap_scan",
    target: str = "127.0.0.1",
    principal: str = "alice",
    at: float = 1_000_000.0,
    result: dict[str, Any] | None = None,
    engagement: str | None = None,
) -> Job:
    """A job created (queued) at `at` and, unless `state` is queued, moved to `state` 2 s later."""
    job = Job(
        scan_id=new_scan_id(at),
        tool=tool,
        target=target,
        scanned_address=target,
        principal=principal,
        request={"target": target},
        argv=["/usr/bin/nmap", "-oX", "-", target],
        state="queued",
        created_at=at,
        updated_at=at,
        request_id=f"rid-{at}",
        engagement=engagement,
    )
    job.move("queued", at)
    if state != "queued":
        job.move(state, at + 2)
    job.result = result
    return job
