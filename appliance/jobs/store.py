"""The job store interface. Code above it (manager, server, CLI) does not know which store runs.

Two implementations: `SqliteJobStore` (embedded, the default) and `JetStreamJobStore` (the
fleet's; its module lists its keys). The queries are few and written down here so that both
serve them without reading every job:

- `get(scan_id)`: SQLite primary key; KV `job.<scan_id>` -> the record.
- `raw(scan_id)`: SQLite table `raw`; KV `r.<scan_id>` (object store when large).
- `page(filter, limit, cursor)`: index `(principal, scan_id)` (engagements: `(engagement, scan_id)`);
  KV keys `s.<p>.<tool>.<target>.<state>.<scan_id>` listed with a subject filter, in descending
  order (engagements: `e.<engagement>.<scan_id>`).
- `previous_completed(_id)(tool, target, principal)`: index `(principal, tool, target_key, state, scan_id)`;
  the same `s.` keys.
- `sweep(max_age, max_count)`: index `(finished_at)` and a count; KV keys `f.<ms>.<scan_id>`.
- `unfinished()`: index `(state)`; KV keys `u.<p>.<segment>.<scan_id>` in a bucket of their own
  (small: listed often), deleted when the job finishes.
- `cancel_requests()`: table `cancel_requests` (primary key scan_id, holds only pending requests);
  KV keys `c.<scan_id>` beside the `u.` keys, deleted once the appliance has acted on them.

Scan ids sort by creation time, so "newest first" is a descending key order in both; a cursor
is the last scan id a page showed. Principal and target parts of a key are hex-encoded.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from appliance.jobs.model import Job


@dataclass(frozen=True)
class JobFilter:
    """What `list_scans` narrows by. `principal` None means every principal (operator CLI, scan:admin).
    With `engagements`, a job of another principal in one of them matches too."""

    principal: str | None = None
    engagements: frozenset[str] = frozenset()
    tool: str | None = None
    target: str | None = None  # compared as `target_key`
    states: frozenset[str] | None = None


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    next_cursor: str | None  # the last scan id shown, when more jobs follow


class JobStore(Protocol):
    """Synchronous on purpose: each call is one indexed statement (well under a millisecond on
    a local disk, see the benchmark), cheaper than a thread hop, and one writer keeps order."""

    ephemeral: bool  # True when the store lives on a temporary directory (lost with the container)

    def put(self, job: Job, raw: bytes | None = None, *, new: bool = False) -> None:
        """Insert or replace the whole job; with `raw`, its raw output too, in the same
        transaction (a job's end is one commit). `new`: the job was never stored (created now,
        under a fresh scan id), so a store need not read what the write replaces."""

    def put_state(self, job: Job) -> None:
        """A state change of a stored job, written alone: its state and the record's state,
        updated_at, finished_at, progress and events (the rest is as the last `put` wrote it).
        A job the store does not hold yet is put whole."""

    def get(self, scan_id: str) -> Job | None: ...

    def delete(self, scan_ids: Iterable[str]) -> int: ...

    def put_raw(self, scan_id: str, output: bytes) -> None:
        """The scanner's raw output, already cut to `limits.stored_raw_bytes`."""

    def raw(self, scan_id: str) -> bytes | None: ...

    def page(self, where: JobFilter, limit: int, cursor: str | None = None) -> JobPage:
        """Newest first; `cursor` continues after the scan id a previous page ended with."""

    def previous_completed_id(self, tool: str, target: str, principal: str, before: str) -> str | None:
        """The scan id of the newest `completed` job of this tool, target and principal older
        than `before`, from the index alone (a rescan's diff may already hold that scan's view)."""

    def previous_completed(self, tool: str, target: str, principal: str, before: str) -> Job | None:
        """The newest `completed` job of this tool, target and principal older than `before`."""

    def count(self, principal: str | None = None) -> int: ...

    def counts(self) -> dict[str, int]:
        """Stored jobs by state (the `appliance_jobs` gauge, read at scrape time)."""

    def describe(self) -> dict[str, object]:
        """For /healthz: kind (durable or ephemeral), where, schema version, jobs, any problem."""

    def unfinished(self) -> list[Job]:
        """Jobs in queued, running or awaiting_approval (at start: the ones a stop left behind)."""

    def sweep(self, now: float, max_age_seconds: float, max_count: int, principal_max: int) -> list[str]:
        """Drop finished jobs older than the age limit, then the oldest finished ones over the
        total count and over any principal's count. Returns the scan ids removed."""

    def writable(self) -> tuple[str, str] | None:
        """None when the store can take writes; else (rule, why not): `store_full` (the data
        directory is below its free-space reserve, or a write hit a full disk) or `store_unwritable`."""

    def space_problem(self) -> tuple[str, str] | None:
        """(rule, why) when the data directory is below its free-space reserve (`store_full`);
        checked before each new job (a failing write refuses the job by itself)."""

    def request_cancel(self, scan_id: str, requested_by: str, now: float) -> None:
        """Ask the appliance that runs `scan_id` to cancel it (the operator CLI is another process)."""

    def cancel_requests(self) -> dict[str, str]:
        """Pending cancel requests: scan id -> who asked (the appliance polls this about every second)."""

    def drop_cancel_requests(self, scan_ids: Iterable[str]) -> None:
        """Forget requests that were acted on, or that name no job this appliance runs."""

    def close(self) -> None: ...


@runtime_checkable
class ChangingStore(Protocol):
    """A store that changes a record by compare-and-set (the fleet's JetStream store)."""

    def update(self, scan_id: str, change: Callable[[Job], bool], attempts: int = 5) -> Job | None: ...


@runtime_checkable
class SendingStore(Protocol):
    """A store whose state write can be sent without waiting for it (the fleet's JetStream store:
    a write is round trips to NATS; SQLite's is local and short). The job's next write waits
    for it."""

    def put_state_soon(self, job: Job) -> Coroutine[Any, Any, None]: ...


@runtime_checkable
class LookingAheadStore(Protocol):
    """A store whose reads are round trips to NATS (the fleet's): a rescan's previous scan is
    looked up on the caller's loop while the scanner runs, not after it, on the way to the
    answer."""

    async def previous_completed_id_soon(self, tool: str, target: str, principal: str, before: str) -> str | None: ...


def take_oldest(scan_ids: Iterable[str], over: int, doomed: list[str], gone: set[str]) -> None:
    """Doom the first `over` of `scan_ids` (finished scans, oldest first) not doomed already
    (the retention sweep of both stores)."""
    for scan_id in scan_ids:
        if over <= 0:
            return
        if scan_id not in gone:
            doomed.append(scan_id)
            gone.add(scan_id)
            over -= 1
