"""A scan job: the single source of truth for one scan, whichever view (result, get_scan,
resource, CLI) shows it.

States and how they map to the MCP tasks extension (SEP-2663: working, input_required,
completed, failed, cancelled):

| state               | meaning                                                          | task status      |
|---------------------|------------------------------------------------------------------|------------------|
| `queued`            | admitted, waiting for a concurrency slot                         | `working`        |
| `running`           | the scanner runs                                                 | `working`        |
| `awaiting_approval` | held until a human approves its argv (README "Approval")         | `input_required` |
| `completed`         | the scanner finished                                             | `completed`      |
| `partial`           | stopped by its time budget or the output cap; findings kept      | `completed`      |
| `failed`            | the scanner could not run or failed; `error` says why            | `failed`         |
| `cancelled`         | `cancel_scan`, or the caller cancelled before it got the scan_id | `cancelled`      |
| `interrupted`       | the appliance stopped, crashed or lost its stdio client mid-scan | `failed`         |
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

JobState = Literal[
    "queued", "running", "awaiting_approval", "completed", "partial", "failed", "cancelled", "interrupted"
]
STATES: tuple[str, ...] = get_args(JobState)
UNFINISHED: frozenset[str] = frozenset({"queued", "running", "awaiting_approval"})
FINISHED: frozenset[str] = frozenset(STATES) - UNFINISHED
TASK_STATUS: dict[str, str] = {
    "queued": "working",
    "running": "working",
    "awaiting_approval": "input_required",
    "completed": "completed",
    "partial": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
    "interrupted": "failed",
}
# The principal of the stdio client: one process, one client (README: "Who sees what").
STDIO_PRINCIPAL = "stdio"
# Whose jobs an HTTP call without a verified principal starts (the loopback test mode only).
ANONYMOUS_PRINCIPAL = "anonymous"

_id_lock = threading.Lock()
_last_ms = 0


def new_scan_id(now: float | None = None) -> str:
    """`scan_` + 12 hex digits of milliseconds + 8 random hex digits.

    Ids sort by creation time (newest first = descending id, in SQLite and in a key-value
    store's key listing alike); within one process they are strictly increasing even when two
    jobs start in the same millisecond.
    """
    global _last_ms
    with _id_lock:
        ms = max(int((time.time() if now is None else now) * 1000), _last_ms + 1)
        _last_ms = ms
    return f"scan_{ms:012x}{os.urandom(4).hex()}"


def target_key(target: str) -> str:
    """The target as jobs are grouped for "the previous scan of this target": case and a
    trailing dot do not make a different target."""
    return target.strip().rstrip(".").lower()


@dataclass(frozen=True)
class Viewer:
    """Who reads jobs: its own scans always; the scans of `engagements` (its engagements, when its
    token has scan:read); every scan with `admin` (scan:admin). Only the owner or an admin cancels."""

    owner: str
    engagements: frozenset[str] = frozenset()
    admin: bool = False

    def sees(self, job: Job) -> bool:
        return (
            self.admin
            or job.principal == self.owner
            or (job.engagement is not None and job.engagement in self.engagements)
        )

    def may_cancel(self, job: Job) -> bool:
        return self.admin or job.principal == self.owner


def viewer_of(who: Viewer | str) -> Viewer:
    """A plain principal name reads as the viewer of its own scans only."""
    return who if isinstance(who, Viewer) else Viewer(who)


@dataclass
class Job:
    """One scan. `result` is the compact result as last recorded (findings so far while it
    runs); `error` the error object of a failed job. The raw output is stored apart."""

    scan_id: str
    tool: str
    target: str
    scanned_address: str
    principal: str
    request: dict[str, Any]
    argv: list[str]
    state: JobState
    created_at: float
    updated_at: float
    request_id: str
    finished_at: float | None = None
    progress: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    # The scanner's output size before the stored copy was cut to `limits.stored_raw_bytes`.
    raw_bytes: int | None = None
    # The stored copy's sha256 (a fleet store's: the raw output is a key of its own, bound to the
    # signed record by this; appliance.fleet.records).
    raw_sha256: str | None = None
    # The engagement the scan ran in (None: the policy had no engagements); its principals may read it.
    engagement: str | None = None
    # The fleet appliance that claimed the job and runs it (None: a standalone appliance runs its own).
    runner: str | None = None
    # The fleet segment the front routed it to (None: a standalone appliance's own scan).
    segment: str | None = None
    # The human approval it needed (None: none): the argv's sha256, the reasons, then the decision.
    approval: dict[str, Any] | None = None
    # Sharding (README "Fleet"): a parent job's shards, by scan_id (it runs nowhere itself: its
    # state and result are merged from theirs), or the parent a shard is part of.
    shards: list[str] | None = None
    parent: str | None = None
    # A parent's shards folded in so far (appliance.fleet.shards.fold): scan_id -> their state,
    # exit code and (the first failed one's) error.
    merged: dict[str, dict[str, Any]] | None = None
    # A fleet job's caller as the front's checks saw it, for the segment's re-check (README
    # "Fleet"): the token's subject, the claims the front's engagements name, the token's scopes
    # (None: a caller without a token). Standalone jobs carry none.
    caller: dict[str, Any] | None = None
    # A fleet front's Ed25519 signatures over what a segment trusts of this record (its caller,
    # request, engagement, segment, parent) and over an approval it recorded (appliance.fleet.seal).
    seal: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def move(self, state: JobState, now: float, note: str | None = None) -> None:
        """Record a state change (kept in `events`, with its time and why)."""
        self.state = state
        self.updated_at = now
        event: dict[str, Any] = {"state": state, "at": round(now, 3)}
        if note:
            event["note"] = note
        self.events.append(event)
        if state in FINISHED:
            self.finished_at = now

    def to_record(self) -> dict[str, Any]:
        return {
            "scan_id": self.scan_id,
            "tool": self.tool,
            "target": self.target,
            "scanned_address": self.scanned_address,
            "principal": self.principal,
            "request": self.request,
            "argv": self.argv,
            "state": self.state,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "request_id": self.request_id,
            "progress": self.progress,
            "events": self.events,
            "result": self.result,
            "error": self.error,
            "raw_bytes": self.raw_bytes,
            "raw_sha256": self.raw_sha256,
            "engagement": self.engagement,
            "runner": self.runner,
            "segment": self.segment,
            "approval": self.approval,
            "shards": self.shards,
            "parent": self.parent,
            "merged": self.merged,
            "caller": self.caller,
            "seal": self.seal,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Job:
        known: dict[str, Any] = {name: record[name] for name in cls.__dataclass_fields__ if name in record}
        return cls(**known)
