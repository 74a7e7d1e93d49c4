"""A job as the result a caller sees: the same shape whether the scan call returns it, get_scan
returns it, or the resource serves it (the job is the one source; these are views of it)."""

from __future__ import annotations

from typing import Any

from appliance.jobs.model import Job
from appliance.results import ScanReport

# Bounds of the "ask again in" hint of an unfinished scan.
RETRY_AFTER_MIN_SECONDS = 2
RETRY_AFTER_MAX_SECONDS = 60
RETRY_AFTER_UNKNOWN_SECONDS = 10


def resource_uri(scan_id: str) -> str:
    return f"scan://{scan_id}"


def retry_after(job: Job, now: float) -> int | None:
    """When to ask again: the time the scan still needs at its pace so far, within bounds."""
    if job.finished:
        return None
    progress = job.progress or 0.0
    if job.state != "running" or progress <= 0:
        return RETRY_AFTER_UNKNOWN_SECONDS
    elapsed = max(now - job.created_at, 0.0)
    left = elapsed * (100.0 - min(progress, 99.0)) / progress
    return int(min(max(left, RETRY_AFTER_MIN_SECONDS), RETRY_AFTER_MAX_SECONDS))


def job_fields(job: Job, now: float) -> dict[str, Any]:
    """What every result of a job carries, whatever the tool."""
    return {
        "scan_id": job.scan_id,
        "status": job.state,
        "resource_uri": resource_uri(job.scan_id),
        "progress": job.progress,
        "retry_after_seconds": retry_after(job, now),
    }


def result_base(job: Job, result_model: type[ScanReport]) -> dict[str, Any]:
    """The result fields a job has before its scanner reported anything: what every result
    carries, and the tool's own fields its request named (gobuster's mode)."""
    base: dict[str, Any] = {name: job.request[name] for name in result_model.model_fields if name in job.request}
    base.update(
        tool=job.tool,
        request_id=job.request_id,
        target=job.target,
        scanned_address=job.scanned_address,
        argv=job.argv,
        dry_run=False,
    )
    return base


def report_of(job: Job, result_model: type[ScanReport], now: float) -> ScanReport:
    """The job's result as its tool's result model: findings so far while it runs."""
    base = job.result if job.result is not None else result_base(job, result_model)
    return result_model.model_validate({**base, **job_fields(job, now)})


def error_of(job: Job) -> dict[str, Any] | None:
    """The error object of a failed job (the same object the scan call returned), or None."""
    if job.error is None:
        return None
    return {**job.error, "scan_id": job.scan_id, "status": job.state}


def summary_of(job: Job) -> dict[str, Any]:
    """One line of list_scans: enough to pick a scan, not its findings."""
    return {
        "scan_id": job.scan_id,
        "tool": job.tool,
        "target": job.target,
        "status": job.state,
        "created_at": round(job.created_at, 3),
        "finished_at": None if job.finished_at is None else round(job.finished_at, 3),
        "progress": job.progress,
        "resource_uri": resource_uri(job.scan_id),
        "error_rule": None if job.error is None else job.error.get("rule"),
        "engagement": job.engagement,
    }
