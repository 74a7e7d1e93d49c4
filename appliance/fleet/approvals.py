"""Approval on fleet fronts: the question lives in the job's record, not in a process.

A front runs stateless HTTP, so the 2026-07-28 retry that brings a human's answer may reach any
front. The question is therefore kept where every front reads it: the job's record in the fleet
store, `awaiting_approval` with its approval summary (argv hash, reasons, timeout). The sealed
request state (one key shared by the fronts) names the job; the front that gets the retry reads
the record, checks it, and moves it on by compare-and-set, so two answers (or an answer and the
deadline's sweep) cannot both win. Nothing here audits or queues: the service does (one
bookkeeping path); these are the record's checks and its three ways out of awaiting_approval.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from appliance.approval.desk import mismatch, unavailable
from appliance.approval.model import ApprovalState, Decision
from appliance.errors import ApplianceError
from appliance.jobs.model import Job

# What a retry says when its job left awaiting_approval between the read and the write.
RACE_LOST = "scan {scan_id} is no longer awaiting approval (it was answered, cancelled or timed out meanwhile)"


def deadline(job: Job) -> float | None:
    """When the job's question expires (created + its approval timeout); None without a question."""
    if job.approval is None:
        return None
    return job.created_at + float(job.approval.get("timeout_seconds", 0))


def expired(job: Job, now: float) -> bool:
    """Past its deadline while still awaiting approval."""
    limit = deadline(job)
    return job.state == "awaiting_approval" and limit is not None and now > limit


def check_retry(job: Job | None, state: ApprovalState, owner: str, planned_sha256: str) -> Job:
    """The record a retry answers, if it may: still awaiting approval, the caller's own, and the
    argv this retry plans is the one the state names and the record asked about. Does not check
    the deadline (`expired`: the caller ends such a job declined rather than mismatched)."""
    if job is None or job.principal != owner or job.state != "awaiting_approval" or job.approval is None:
        raise mismatch(f"scan {state.scan_id[:64]} is not awaiting your approval (it ended, or is not yours)")
    asked = job.approval.get("argv_sha256")
    if not (state.argv_sha256 == asked == planned_sha256):
        raise mismatch(
            f"the command this call would run is not the one scan {state.scan_id} asked approval for "
            "(the arguments or the policy changed)"
        )
    return job


def _decided(job: Job, decision: Decision) -> None:
    assert job.approval is not None
    job.approval = {**job.approval, "decision": decision.outcome, "approver": decision.approver, "note": decision.note}


def approve(job: Job, decision: Decision, now: float, seal: Callable[[Job], None]) -> Callable[[Job], bool]:
    """The compare-and-set change that queues an approved job (JobManager.approved semantics:
    out of awaiting_approval into `queued`, the decision written into its approval and sealed by
    the front: `seal`, appliance.fleet.seal, for the segment to check)."""

    def change(current: Job) -> bool:
        if current.state != "awaiting_approval" or current.approval != job.approval:
            return False
        _decided(current, decision)
        seal(current)
        current.move("queued", now, "approved")
        return True

    return change


def end_unapproved(decision: Decision, error: ApplianceError, now: float) -> Callable[[Job], bool]:
    """The compare-and-set change that ends a job whose approval did not come: `failed`, with the
    `approval_declined` error (naming the scan and its state) and the decision in its approval."""

    def change(current: Job) -> bool:
        if current.state != "awaiting_approval" or current.approval is None:
            return False
        _decided(current, decision)
        error.details.update(scan_id=current.scan_id, status="failed")
        current.error = error.to_dict(tool=current.tool, target=current.target, request_id=current.request_id)
        current.move("failed", now, f"not approved: {decision.outcome}")
        return True

    return change


def approval_line(job: Job, decision: Decision) -> dict[str, Any]:
    """The `approval` audit line of a decision taken on a front or by the deadline's sweep."""
    line: dict[str, Any] = {
        "event": "approval",
        "scan_id": job.scan_id,
        "request_id": job.request_id,
        "principal": job.principal,
        "tool": job.tool,
        "argv_sha256": None if job.approval is None else job.approval.get("argv_sha256"),
        "decision": decision.outcome,
        "approver": decision.approver,
    }
    if decision.note:
        line["note"] = decision.note
    if decision.detail:
        line["detail"] = decision.detail
    return line


def check_on_segment(job: Job, argv_sha256: str) -> None:
    """A segment's start of a job its own policy says needs approval: only with an approval a
    front recorded for exactly the argv a front plans from the request under this segment's
    policy (`argv_sha256`: for a name, the argv with the name, which a front does not resolve)."""
    approval = job.approval or {}
    if approval.get("decision") != "approved":
        raise unavailable(
            "this segment's policy asks a human to approve it",
            "it reached the segment without an approval",
            "Call through a fleet front with a 2026-07-28 client, which asks the human first",
        )
    if approval.get("argv_sha256") != argv_sha256:
        raise mismatch(
            f"the command this segment would run for scan {job.scan_id} is not the one approved at the front "
            "(the segment's policy plans other flags than the front's did)"
        )
