"""The fleet's job store: JetStream key-value (records, indexes, raw output) and object store (large raw output).

Any appliance connected to the same NATS sees the same jobs, so any front answers `get_scan`
and `list_scans` (fleet issue). The keys are those appliance/jobs/store.py writes down:

- `job.<scan_id>`: the record (JSON), the one truth;
- `p.<principal>.<scan_id>`, `e.<engagement>.<scan_id>`: who may list it;
- `s.<principal>.<tool>.<target_key>.<state>.<scan_id>`: list_scans' filters and "the previous
  completed scan" from the key alone;
- `f.<finished_at ms>.<scan_id>` once finished (retention);
- `l.<principal>.<tool>.<target_key>`: the scan_id of the target's latest completed scan (a
  rescan's diff reads it instead of listing the `s.` keys: nats-server 2.9 matches a listing
  against every key of the bucket and returns every match, 28 ms with 10,000 completed scans of
  one target); a hint, checked against its `s.` key, the listing when it does not hold;
- `r.<scan_id>`: the raw output when it is small (RAW_INLINE_BYTES), else it is an object of the
  raw bucket: one put beside the index keys instead of the object store's three round trips;
- `b.<engagement>`: an engagement's budget in use (appliance/fleet/budgets.py).

- `x.<n>.<scan_id>`: part n of a result kept apart. A record larger than the server takes in
  one message (its `max_payload`, 1 MB by default: a sharded block's result with thousands of
  live hosts) keeps its result in parts of one message each, written with the new index keys,
  and a marker (`{"stored_apart": <bytes>, "parts": <count>}`) in its place; every read of the
  record reads the parts at once and puts the result back. Keys of the job bucket, not objects:
  every role that reads records may read them (segments have no object-store reads).

The keys of unfinished work live in a second, small bucket (`<bucket>_live`): a listing costs
nats-server a pass over every key of its bucket (nats-server 2.9 matches the filter against each
subject: about 11 ms for the job bucket of 6,000 jobs), and these are listed on every front call
(a principal's share of the fleet) and every second on every appliance (cancel requests):

- `u.<principal>.<segment>.<scan_id>` while unfinished (`u.shard.<segment>.<scan_id>` for a shard
  of a sharded scan, counted as its parent: `shard` is no hex; `_` for no segment): a principal's
  count lists `u.<principal>.*.*`, a segment's sweeps `u.*.<segment>.*`;
- `c.<scan_id>`: a pending cancel request (JSON: who asked, when).

Principal, engagement and target parts are hex-encoded (keys allow `[-/_=.a-zA-Z0-9]`).
JetStream has no multi-key transaction, so writes are ordered to keep one rule: **a stored
record always has its index keys**. A write puts the new index keys, then the record, then
deletes the index keys the old state no longer has; a delete removes the index keys first and
the record last. A crash between two steps leaves at most stale index keys, which every read
checks against the record (stale keys are skipped, never shown).

Listings read the keys from the stream's subjects, filtered on a key prefix by the server
(appliance/fleet/kv.py `live_entries`): a page costs one pass over the keys of the principal asked
about (all keys for an operator or `scan:admin`), plus one read per job shown. README "Fleet" has
the figures and limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from appliance.errors import ExecutionError, ValidationError
from appliance.fleet.bus import BusThread, BusUnavailable
from appliance.fleet.kv import key_value_bucket, live_entries, not_provisioned, read_entry, remove_key
from appliance.fleet.records import RAW_RULE, RecordSeals, RecordUnverifiedError
from appliance.jobs.model import FINISHED, UNFINISHED, Job, target_key
from appliance.jobs.store import JobFilter, JobPage, take_oldest

log = logging.getLogger(__name__)

T = TypeVar("T")

BUCKET = "appliance_jobs"
RAW_BUCKET = "appliance_raw"
# JetStream's error code for a stream or account out of storage (nats-server errors.json).
INSUFFICIENT_RESOURCES = 10047
STREAM_STORE_FAILED = 10077
# Jobs whose index keys this store remembers (`_written`): more than run at once on one appliance.
WRITTEN_KEYS_KEPT = 4096
# Writers of one key racing each other (change_value): each lost compare-and-set is read again.
CAS_TRIES = 16
# Raw output up to this size is a key of the job bucket (`r.<scan_id>`), written with the new
# index keys in one step: an object-store put is three round trips one after another (its info,
# the chunks, the meta), on the path from a scan's end to its answer (issue 13's latency). A
# one-port nmap scan's XML is 1-3 kB; far below the server's max_payload (1 MB by default).
RAW_INLINE_BYTES = 64 * 1024
# A record's room for the message's subject and headers below the server's max_payload.
RECORD_HEADROOM_BYTES = 4096
# A record's result kept apart (see above): the marker's key.
RESULT_APART = "stored_apart"
# The keys kept in the live bucket (see above), and the owner part of a shard's unfinished key.
LIVE_PREFIXES = ("u.", "c.")
SHARD_OWNER = "shard"
NO_SEGMENT = "_"
# Records read at once by `unfinished` (a fleet's queue may hold thousands; one connection).
READS_AT_ONCE = 64


def hex_part(text: str) -> str:
    # An empty part would make an invalid key; no principal, tool or target is empty, but "_" keeps it valid.
    return text.encode().hex() or "_"


def apart_key(scan_id: str, part: int) -> str:
    return f"x.{part}.{scan_id}"


def apart_keys(job: Job) -> list[str]:
    """The keys of the parts of the job's result kept apart (none: its record holds it)."""
    if not (isinstance(job.result, dict) and RESULT_APART in job.result):
        return []
    return [apart_key(job.scan_id, part) for part in range(int(job.result.get("parts", 0)))]


def _unhex(part: str) -> str:
    return "" if part == "_" else bytes.fromhex(part).decode()


@dataclass(frozen=True)
class IndexEntry:
    """One `s.` key read back: everything list_scans filters on, without the record."""

    principal: str
    tool: str
    target_key: str
    state: str
    scan_id: str

    @classmethod
    def parse(cls, key: str) -> IndexEntry | None:
        parts = key.split(".")
        if len(parts) != 6 or parts[0] != "s":
            return None
        try:
            return cls(_unhex(parts[1]), parts[2], _unhex(parts[3]), parts[4], parts[5])
        except ValueError:
            return None


def state_key(principal: str, tool: str, target: str, state: str, scan_id: str) -> str:
    """The `s.` key of a scan in `state` (`scan_id` "*": a listing's filter)."""
    return f"s.{hex_part(principal)}.{tool}.{hex_part(target_key(target))}.{state}.{scan_id}"


def latest_key(principal: str, tool: str, target: str) -> str:
    """The key naming the latest completed scan of a principal's tool and target (see above)."""
    return f"l.{hex_part(principal)}.{tool}.{hex_part(target_key(target))}"


def latest_key_of(job: Job) -> str | None:
    """The `l.` key a completed job is (or was) named by; None for others and for shards."""
    if job.state != "completed" or job.parent is not None:
        return None
    return latest_key(job.principal, job.tool, job.target)


def live_bucket_of(bucket: str) -> str:
    """The bucket of a job bucket's unfinished-work keys (scripts/nats_auth.py names it alike)."""
    return f"{bucket}_live"


def index_keys(job: Job) -> set[str]:
    """The index keys a stored `job` has in its current state."""
    principal = hex_part(job.principal)
    keys: set[str] = set()
    # A shard of a sharded scan is listed, counted and diffed as its parent (README "Fleet"):
    # it keeps only the keys the fleet's sweeps read (unfinished, finished-at).
    if job.parent is None:
        keys.add(f"p.{principal}.{job.scan_id}")
        keys.add(state_key(job.principal, job.tool, job.target, job.state, job.scan_id))
        if job.engagement is not None:
            keys.add(f"e.{hex_part(job.engagement)}.{job.scan_id}")
    if job.state in UNFINISHED:
        owner = principal if job.parent is None else SHARD_OWNER
        keys.add(f"u.{owner}.{job.segment or NO_SEGMENT}.{job.scan_id}")
    if job.finished_at is not None:
        keys.add(f"f.{int(job.finished_at * 1000):013d}.{job.scan_id}")
    return keys


@dataclass(frozen=True)
class Snapshot:
    """What one write of a job puts, taken from the job when the write is asked for (a write
    sent ahead, `put_state_soon`, must not read a job the caller goes on changing)."""

    scan_id: str
    state: str
    keys: frozenset[str]
    body: bytes
    # A completed scan's `s.` key and its target's `l.` key (None: not completed, or a shard).
    completed: tuple[str, str] | None = None

    @classmethod
    def of(cls, job: Job, records: RecordSeals | None = None) -> Snapshot:
        record = job.to_record()
        if records is not None:  # signed whole, its result in place (appliance.fleet.records)
            record = records.seal(record)
        body = json.dumps(record, separators=(",", ":")).encode()
        latest = latest_key_of(job)
        completed = None
        if latest is not None:
            completed = (state_key(job.principal, job.tool, job.target, "completed", job.scan_id), latest)
        return cls(job.scan_id, job.state, frozenset(index_keys(job)), body, completed)


def _store_error(action: str, exc: BaseException) -> ExecutionError:
    code = getattr(exc, "err_code", None)
    full = code in (INSUFFICIENT_RESOURCES, STREAM_STORE_FAILED)
    return ExecutionError(
        f"the job store could not {action}: {exc!r}",
        rule="store_full" if full else "store_unwritable",
        recovery_suggestion="Retry later; the operator must check the NATS JetStream servers (their storage "
        "limits and health). Running scans and stored results are kept.",
    )


@contextlib.contextmanager
def _read_errors(action: str) -> Iterator[None]:
    """A failed read as ExecutionError `store_unreachable`."""
    try:
        yield
    except BusUnavailable as exc:
        raise ExecutionError(
            exc.message, rule="store_unreachable", recovery_suggestion=exc.recovery_suggestion
        ) from exc
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        raise ExecutionError(
            f"the job store could not {action}: {exc!r}",
            rule="store_unreachable",
            recovery_suggestion="Retry shortly; the operator must check the NATS JetStream servers.",
        ) from exc


class JetStreamJobStore:
    ephemeral = False  # JetStream keeps it (file storage, replicated as the bucket says)

    def __init__(
        self,
        bus: BusThread,
        *,
        bucket: str = BUCKET,
        raw_bucket: str = RAW_BUCKET,
        replicas: int = 1,
        create: bool = True,
        records: RecordSeals | None = None,
    ) -> None:
        """Open the three buckets (`bucket`, `<bucket>_live`, `raw_bucket`) on a started `bus`,
        creating them when missing if `create` (a front; a segment's NATS user may not:
        ExecutionError `bus_not_provisioned`). Raises ExecutionError when NATS does not answer or
        JetStream refuses the buckets. `records`: every record written is signed and every record
        read checked (a fleet role's store: appliance.fleet.records); None for neither."""
        self._bus = bus
        self.records = records
        # Records (and raw outputs) refused by the check since start, whoever read them: the
        # ApplianceFleetUntrustedRecord alert (appliance.fleet.observe).
        self.untrusted = 0
        self._create = create
        self.bucket = bucket
        self.live_bucket = live_bucket_of(bucket)
        self.raw_bucket = raw_bucket
        self.replicas = replicas
        self._fault: tuple[str, str] | None = None
        self._kv: KeyValue | None = None
        self._live: KeyValue | None = None
        self._objects: ObjectStore | None = None
        # The index keys this store last wrote (or claimed) for a job, so that its next write
        # need not read the record back first (a round trip per state change). Only this
        # appliance writes a job's record between its claim and its end, bar a takeover; a
        # stale entry leaves at most stale index keys, which every read skips (see above).
        self._written: OrderedDict[str, set[str]] = OrderedDict()
        # One job's writes, in the order they were asked for (bus loop only): a write sent ahead
        # (put_state_soon) and the caller's next write of that job must not overtake each other.
        self._order: dict[str, tuple[asyncio.Lock, int]] = {}
        self._write("open the job buckets", self._open)

    async def _open(self) -> None:
        js = self._bus.js
        self._kv = await key_value_bucket(js, self.bucket, replicas=self.replicas, direct=True, create=self._create)
        self._live = await key_value_bucket(
            js, self.live_bucket, replicas=self.replicas, direct=True, create=self._create
        )
        try:
            self._objects = await js.object_store(self.raw_bucket)
        except nats.js.errors.BucketNotFoundError:
            if not self._create:
                raise not_provisioned(f"the bucket {self.raw_bucket}") from None
            config_objects = ObjectStoreConfig(storage=StorageType.FILE, replicas=self.replicas)
            # nats-py sets the config's bucket from its own argument.
            self._objects = await js.create_object_store(self.raw_bucket, config=config_objects)
        if self._create:
            await self._move_old_live_keys()

    async def _move_old_live_keys(self) -> None:
        """Stores before the live bucket kept `u.<scan_id>` and `c.<scan_id>` in the job bucket:
        a front moves them at its start (new keys first, then the old one; a crash in between
        leaves an old key the next start moves again)."""
        for key, _ in await live_entries(self._bus.js, self.bucket, "u.*", values=False):
            job = await self._stored(key[2:])  # its state and keys alone: nothing shown or run from it
            if job is not None:
                await asyncio.gather(
                    *(self._kv_of(new).put(new, job.state.encode()) for new in index_keys(job) if new.startswith("u."))
                )
            await remove_key(self._bus.js, self.bucket, key)
        for key, value in await live_entries(self._bus.js, self.bucket, "c.*", values=True):
            await self.live.put(key, value)
            await remove_key(self._bus.js, self.bucket, key)

    @property
    def bus(self) -> BusThread:
        return self._bus

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None
        return self._kv

    @property
    def live(self) -> KeyValue:
        assert self._live is not None
        return self._live

    def _bucket_of(self, key: str) -> str:
        """The bucket a key (or a listing's pattern) lives in."""
        return self.live_bucket if key.startswith(LIVE_PREFIXES) else self.bucket

    def _kv_of(self, key: str) -> KeyValue:
        return self.live if key.startswith(LIVE_PREFIXES) else self.kv

    @property
    def objects(self) -> ObjectStore:
        assert self._objects is not None
        return self._objects

    # --- plumbing --------------------------------------------------------------------------
    def _write(self, action: str, operation: Callable[[], Awaitable[T]]) -> T:
        # Every write here may run twice (puts of the same value; compare-and-sets re-read first).
        with self._write_errors(action):
            result = self._bus.call_repeatable(operation, action)
        self._fault = None
        return result

    @contextlib.contextmanager
    def _write_errors(self, action: str) -> Iterator[None]:
        """A failed write as ExecutionError (`store_unwritable`, `store_full`), kept for /healthz."""
        try:
            yield
        except BusUnavailable as exc:
            self._fault = ("store_unwritable", exc.message)
            raise ExecutionError(
                exc.message, rule="store_unwritable", recovery_suggestion=exc.recovery_suggestion
            ) from exc
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            error = _store_error(action, exc)
            self._fault = (error.rule, error.message)
            raise error from exc

    @contextlib.asynccontextmanager
    async def _in_order(self, scan_id: str) -> AsyncIterator[None]:
        """Hold the job's turn: its writes run one at a time, first asked first (asyncio.Lock
        wakes its waiters in order, and each write takes its turn before its first await)."""
        lock, users = self._order.get(scan_id) or (asyncio.Lock(), 0)
        self._order[scan_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._order[scan_id]
            if users == 1:
                del self._order[scan_id]
            else:
                self._order[scan_id] = (lock, users - 1)

    def _read(self, action: str, operation: Callable[[], Awaitable[T]]) -> T:
        with _read_errors(action):
            return self._bus.call_repeatable(operation, action)

    async def _read_soon(self, action: str, operation: Callable[[], Awaitable[T]]) -> T:
        """`_read` awaited on the caller's loop, which goes on serving others meanwhile."""
        with _read_errors(action):
            return await self._bus.run_repeatable(operation, action)

    async def _get(self, key: str) -> bytes | None:
        return (await read_entry(self._bus.js, self._bucket_of(key), key))[0]

    async def _record(self, scan_id: str) -> bytes | None:
        return await self._get(f"job.{scan_id}")

    async def _stored(self, scan_id: str) -> Job | None:
        """The record as stored (a result kept apart still its marker), unchecked: for what only
        its keys matter to (the index keys a write replaces, a delete)."""
        value = await self._record(scan_id)
        return None if not value else Job.from_record(json.loads(value))

    async def _job(self, scan_id: str) -> Job | None:
        """The record, whole and checked (RecordUnverifiedError: no front or appliance of its
        segment wrote it as it is)."""
        value = await self._record(scan_id)
        return None if not value else await self._decode(value)

    async def _decode(self, value: bytes) -> Job:
        record = json.loads(value)
        job = await self.whole(Job.from_record(record))
        if self.records is not None:
            try:
                await self.records.check({**record, "result": job.result})
            except RecordUnverifiedError:
                self.untrusted += 1
                raise
        return job

    async def decode_soon(self, value: bytes) -> Job:
        """A record's value as a job, whole and checked, awaited on the caller's loop (a front's
        follow of a record it was sent)."""
        return await self._read_soon("read a scan's record", lambda: self._decode(value))

    async def _listed(self, scan_id: str) -> Job | None:
        """`_job` for a listing: a record nobody may have written is left out (logged), not shown."""
        try:
            return await self._job(scan_id)
        except RecordUnverifiedError as exc:
            log.warning("an untrusted job record is left out", extra={"scan_id": scan_id, "reason": exc.message})
            return None

    async def whole(self, job: Job) -> Job:
        """`job` with its result back in place when the record keeps it apart (on the bus loop):
        its parts read at once."""
        keys = apart_keys(job)
        if not keys:
            return job
        parts = await asyncio.gather(*(self._get(key) for key in keys))
        if any(part is None for part in parts):
            # Only a delete under way removes them (the record goes last): the marker stays.
            log.warning("a scan's result kept apart is gone", extra={"scan_id": job.scan_id})
            return job
        job.result = json.loads(b"".join(part for part in parts if part is not None))
        return job

    async def whole_soon(self, job: Job) -> Job:
        """`whole`, awaited on the caller's loop (a front's follow of a record it was sent)."""
        return await self._read_soon(f"read the result of {job.scan_id}", lambda: self.whole(job))

    async def _keys(self, pattern: str, *, values: bool = False) -> list[tuple[str, bytes]]:
        return await live_entries(self._bus.js, self._bucket_of(pattern), pattern, values=values)

    async def _index(self, principal: str | None) -> list[IndexEntry]:
        pattern = "s.>" if principal is None else f"s.{hex_part(principal)}.>"
        return [entry for key, _ in await self._keys(pattern) if (entry := IndexEntry.parse(key)) is not None]

    async def _delete_keys(self, keys: Iterable[str]) -> None:
        # At once: the keys of one step are independent (the crash-safe order is between steps).
        await asyncio.gather(*(remove_key(self._bus.js, self._bucket_of(key), key) for key in keys))

    # --- writes ----------------------------------------------------------------------------
    async def _put(self, snapshot: Snapshot, raw: bytes | None, *, new: bool = False) -> None:
        """Three steps in the crash-safe order, the writes within a step sent at once (each is a
        round trip to the stream's leader): the index keys the record does not have yet and the
        raw output; the record; the old state's keys. A write that changes no index key (findings
        so far) is the read of the old record and the record's write. `new`: the job was never
        stored, so there is no old record to read (a retry of this write finds its own keys)."""
        scan_id = snapshot.scan_id
        async with self._in_order(scan_id):
            old_keys = set() if new else self._written.get(scan_id)
            if old_keys is None:
                old = await self._stored(scan_id)
                old_keys = set() if old is None else index_keys(old)

            async def record(body: bytes) -> None:
                await self.kv.put(f"job.{scan_id}", body)

            await self._write_in_order(snapshot, old_keys, record, raw)

    async def _write_in_order(
        self,
        snapshot: Snapshot,
        old_keys: set[str],
        write_record: Callable[[bytes], Awaitable[object]],
        raw: bytes | None = None,
    ) -> None:
        """The crash-safe order of every record write: the index keys the record does not have
        yet (and the raw output), all at once; the record (`write_record` of its body); the old
        state's keys. A record write that raises leaves the old keys in place."""
        body = snapshot.body
        parts: list[bytes] = []
        if len(body) > self._bus.nc.max_payload - RECORD_HEADROOM_BYTES:
            body, parts = self._result_apart(snapshot)  # or its refusal, before anything is sent
        new_keys = set(snapshot.keys)
        self._written.pop(snapshot.scan_id, None)  # unknown until this write has landed
        state = snapshot.state.encode()
        first: list[Awaitable[object]] = [self._kv_of(key).put(key, state) for key in sorted(new_keys - old_keys)]
        first.extend(self.kv.put(apart_key(snapshot.scan_id, n), part) for n, part in enumerate(parts))
        if snapshot.completed is not None and snapshot.completed[0] not in old_keys:
            # The job completes with this write: it is its target's latest completed scan.
            first.append(self.kv.put(snapshot.completed[1], snapshot.scan_id.encode()))
        if raw is not None:
            first.append(self._put_raw(snapshot.scan_id, raw))
        await asyncio.gather(*first)
        await write_record(body)
        await self._delete_keys(sorted(old_keys - new_keys))
        self._remember(snapshot.scan_id, new_keys)

    def _result_apart(self, snapshot: Snapshot) -> tuple[bytes, list[bytes]]:
        """The record with a marker in its result's place, and the result in parts of one
        message each: or the refusal of a record too large even so (its events or shards: no
        scan of the policy's limits has as many), named, not left to look like a store that
        will answer later."""
        limit = self._bus.nc.max_payload - RECORD_HEADROOM_BYTES
        record = json.loads(snapshot.body)
        result = json.dumps(record["result"], separators=(",", ":")).encode()
        parts = [result[start : start + limit] for start in range(0, len(result), limit)]
        record["result"] = {RESULT_APART: len(result), "parts": len(parts)}
        body = json.dumps(record, separators=(",", ":")).encode()
        if len(body) > limit:
            raise ValidationError(
                f"the record of scan {snapshot.scan_id} is {len(body)} bytes without its result, over the "
                f"{limit} bytes one NATS message may carry here",
                rule="job_record_too_large",
                recovery_suggestion="Scan a smaller block (fewer shards); the operator may raise the NATS "
                "servers' max_payload.",
            )
        return body, parts

    def _remember(self, scan_id: str, keys: set[str]) -> None:
        self._written[scan_id] = keys
        self._written.move_to_end(scan_id)
        while len(self._written) > WRITTEN_KEYS_KEPT:
            self._written.popitem(last=False)

    def put(self, job: Job, raw: bytes | None = None, *, new: bool = False) -> None:
        if raw is not None:
            # On the job itself, so that its later writes carry it too (the raw output is written once).
            job.raw_sha256 = hashlib.sha256(raw).hexdigest()
        snapshot = Snapshot.of(job, self.records)
        self._write(f"record scan {job.scan_id}", lambda: self._put(snapshot, raw, new=new))

    def put_state(self, job: Job) -> None:
        # A key-value entry is written whole: a state change rewrites the record (the live job
        # holds it all), unlike SQLite's patch in place.
        snapshot = Snapshot.of(job, self.records)
        self._write(f"record the state of scan {job.scan_id}", lambda: self._put(snapshot, None))

    def put_state_soon(self, job: Job) -> Coroutine[Any, Any, None]:
        """`put_state`, sent now without waiting for it: the job as it is now is written while the
        caller goes on (a segment starts the scan meanwhile: three round trips less before it),
        and the job's next write waits for this one. The coroutine returned, awaited on the
        caller's loop, ends when the write has landed, or raises put_state's ExecutionError."""
        snapshot = Snapshot.of(job, self.records)
        action = f"record the state of scan {job.scan_id}"
        with self._write_errors(action):  # the connection is closed: nothing is sent
            sent = self._bus.submit_repeatable(lambda: self._put(snapshot, None), action)

        async def landed() -> None:
            with self._write_errors(action):
                await self._bus.outcome(sent, action)
            self._fault = None

        return landed()

    async def _put_raw(self, scan_id: str, output: bytes) -> None:
        if len(output) <= RAW_INLINE_BYTES:
            await self.kv.put(f"r.{scan_id}", output)
        else:
            await self.objects.put(scan_id, output)

    def put_raw(self, scan_id: str, output: bytes) -> None:
        self._write(f"record the raw output of {scan_id}", lambda: self._put_raw(scan_id, output))

    async def _delete(self, scan_ids: list[str]) -> int:
        removed = 0
        for scan_id in scan_ids:
            job = await self._stored(scan_id)
            if job is None:
                continue
            if job.shards:  # a sharded scan's shards go with it (they are listed as it)
                removed += await self._delete([shard for shard in job.shards if shard not in scan_ids])
            latest = latest_key_of(job)
            if latest is not None and await self._get(latest) == scan_id.encode():
                await remove_key(self._bus.js, self.bucket, latest)  # the next rescan lists the `s.` keys
            await self._delete_keys([*sorted(index_keys(job)), f"r.{scan_id}", *apart_keys(job)])
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self.objects.delete(scan_id)
            await remove_key(self._bus.js, self.bucket, f"job.{scan_id}")
            self._written.pop(scan_id, None)
            removed += 1
        return removed

    def delete(self, scan_ids: Iterable[str]) -> int:
        ids = list(scan_ids)
        return self._write("delete scans", lambda: self._delete(ids)) if ids else 0

    # --- claims (fleet: JetStream delivers a job at least once) ----------------------------
    async def _compare_and_set(self, scan_id: str, change: Callable[[Job], bool], attempts: int = 1) -> Job | None:
        """Apply `change` to the record (False: leave it) and write it only if nobody wrote it
        since it was read; the index keys in the usual crash-safe order (new ones first, the
        stale ones after the record). None when the record is gone, left, or was written
        meanwhile `attempts` times (each conflict reads the record again and applies `change` again)."""
        key = f"job.{scan_id}"
        async with self._in_order(scan_id):
            for _ in range(attempts):
                value, revision = await read_entry(self._bus.js, self.bucket, key)
                if not value or revision is None:
                    return None
                job = await self._decode(value)
                old_keys = index_keys(job)
                if not change(job):
                    return None

                async def record(body: bytes, revision: int = revision) -> None:
                    await self.kv.update(key, body, last=revision)

                try:
                    await self._write_in_order(Snapshot.of(job, self.records), old_keys, record)
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue  # another appliance's write came first (its index keys are its own)
                return job
            return None

    def update(self, scan_id: str, change: Callable[[Job], bool], attempts: int = 5) -> Job | None:
        """Change a record by compare-and-set, read again and changed again on a conflict (a
        sharded scan's merge: `change` is a function of the record and what it was given)."""
        return self._write(f"update scan {scan_id}", lambda: self._compare_and_set(scan_id, change, attempts))

    def claim(self, scan_id: str, runner: str, now: float, *, takeover: bool = False) -> Job | None:
        """Make `runner` the one appliance that runs this queued job, by compare-and-set on its
        record's revision. None when the job is gone, finished, or already claimed (a
        redelivery of a job another appliance has): the caller acks it without running it.

        `takeover`: the message is a redelivery, so the appliance that claimed the job held it
        past ack_wait without a heartbeat (it died or lost NATS): its claim, queued or running,
        passes to `runner`, once (the compare-and-set still decides between two takers)."""
        take = self._taker(runner, now, takeover=takeover)
        return self._write(f"claim scan {scan_id}", lambda: self._compare_and_set(scan_id, take))

    def claim_to_run(self, scan_id: str, runner: str, now: float, *, takeover: bool = False) -> tuple[Job | None, bool]:
        """`claim`, and whether a cancel request waits for the job (a segment's start of a
        delivery): the cancel request is read while the claim's own read is on its way, one
        round trip to the stream's leader less before a scan starts (issue 13's latency)."""
        take = self._taker(runner, now, takeover=takeover)

        async def both() -> tuple[Job | None, bool]:
            job, cancel = await asyncio.gather(self._compare_and_set(scan_id, take), self._get(f"c.{scan_id}"))
            return job, bool(cancel)

        return self._write(f"claim scan {scan_id}", both)

    @staticmethod
    def _taker(runner: str, now: float, *, takeover: bool) -> Callable[[Job], bool]:
        def take(job: Job) -> bool:
            if job.runner == runner and job.state == "queued":
                return True  # this appliance's own claim, landed before a retry of it
            if job.state not in ("queued", "running") or (job.runner is not None and not takeover):
                return False
            if job.state == "running":  # taken over: it runs again from the start, as a new run
                job.move("queued", now, f"taken over from {job.runner}, which stopped answering")
            job.runner, job.updated_at = runner, now
            return True

        return take

    def abandon(self, scan_id: str, runner: str, now: float, note: str) -> Job | None:
        """End `interrupted` a job `runner` claimed and can no longer end (it went silent past
        every redelivery), by compare-and-set: None when the record changed meanwhile (it ended,
        or another appliance took it over). Its findings so far are kept."""

        def end(job: Job) -> bool:
            if job.runner != runner or job.state not in UNFINISHED:
                return False
            job.move("interrupted", now, note)
            return True

        return self._write(f"end abandoned scan {scan_id}", lambda: self._compare_and_set(scan_id, end))

    # --- cancel requests (operator CLI or another front -> the appliance running the scan) --
    def request_cancel(self, scan_id: str, requested_by: str, now: float) -> None:
        body = json.dumps({"requested_by": requested_by, "requested_at": now}).encode()

        async def put() -> None:
            await self.live.put(f"c.{scan_id}", body)

        self._write(f"record a cancel request for {scan_id}", put)

    def cancel_requests(self) -> dict[str, str]:
        async def read() -> dict[str, str]:
            found = await self._keys("c.*", values=True)
            return {key[2:]: str(json.loads(value)["requested_by"]) for key, value in found if value}

        return self._read("read cancel requests", read)

    def drop_cancel_requests(self, scan_ids: Iterable[str]) -> None:
        keys = [f"c.{scan_id}" for scan_id in scan_ids]
        if keys:
            self._write("drop cancel requests", lambda: self._delete_keys(keys))

    # --- other keys of the bucket (the fleet's engagement budgets: appliance/fleet/budgets.py)
    def read_value(self, key: str) -> bytes | None:
        return self._read(f"read {key}", lambda: self._get(key))

    async def read_job(self, scan_id: str) -> Job | None:
        """The record, read on the bus loop (from a `change_value` function)."""
        return await self._job(scan_id)

    def change_value(self, key: str, change: Callable[[bytes | None], Awaitable[bytes | None]], action: str) -> None:
        """Compare-and-set of one key: `change(value)` gives the new value (None: leave it as it
        is; a refusal it raises propagates), written only if nobody wrote the key since it was
        read; a lost race reads it and asks `change` again."""

        async def attempt() -> None:
            for _ in range(CAS_TRIES):
                value, revision = await read_entry(self._bus.js, self.bucket, key)
                new = await change(value)
                if new is None:
                    return
                try:
                    if revision is None:
                        await self.kv.create(key, new)
                    else:
                        await self.kv.update(key, new, last=revision)
                    return
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue  # another appliance wrote it first: read it and decide again
            raise ExecutionError(
                f"could not {action}: other appliances changed it first {CAS_TRIES} times",
                rule="store_contended",
                recovery_suggestion="Retry the call; many appliances are changing the same record at once.",
            )

        self._write(action, attempt)

    # --- reads -----------------------------------------------------------------------------
    def get(self, scan_id: str) -> Job | None:
        return self._read(f"read scan {scan_id}", lambda: self._job(scan_id))

    def get_many(self, scan_ids: Iterable[str]) -> dict[str, Job | None]:
        """Several records in one call, read at once (a sharded scan's shards)."""
        ids = list(scan_ids)

        async def read() -> dict[str, Job | None]:
            return dict(zip(ids, await asyncio.gather(*(self._job(scan_id) for scan_id in ids)), strict=True))

        return self._read(f"read {len(ids)} scans", read)

    def raw(self, scan_id: str) -> bytes | None:
        async def stored() -> bytes | None:
            inline = await self._get(f"r.{scan_id}")
            if inline is not None:
                return inline
            try:  # output larger than RAW_INLINE_BYTES, or stored before raw output went inline
                result = await self.objects.get(scan_id)
            except (nats.js.errors.ObjectNotFoundError, nats.js.errors.ObjectDeletedError):
                return None
            return result.data

        async def read() -> bytes | None:
            if self.records is None:
                return await stored()
            job, output = await asyncio.gather(self._job(scan_id), stored())
            if output is None:
                return None
            # The output must be the one its checked record names (a key of its own, writable by any segment).
            if job is None or job.raw_sha256 != hashlib.sha256(output).hexdigest():
                self.untrusted += 1
                raise RecordUnverifiedError(
                    scan_id, "its raw output is not the one its record names (its sha256 differs)", rule=RAW_RULE
                )
            return output

        return self._read(f"read the raw output of {scan_id}", read)

    async def _page(self, where: JobFilter, limit: int, cursor: str | None) -> JobPage:
        entries = await self._index(where.principal if not where.engagements else None)
        readable: set[str] | None = None
        if where.principal is not None and where.engagements:
            readable = {e.scan_id for e in entries if e.principal == where.principal}
            for engagement in sorted(where.engagements):
                readable.update(key.rpartition(".")[2] for key, _ in await self._keys(f"e.{hex_part(engagement)}.*"))
        wanted_target = None if where.target is None else target_key(where.target)

        def matches(principal: str, tool: str, target: str, state: str, scan_id: str) -> bool:
            return (
                (readable is None or scan_id in readable)
                and (readable is not None or where.principal is None or principal == where.principal)
                and (where.tool is None or tool == where.tool)
                and (wanted_target is None or target == wanted_target)
                and (where.states is None or state in where.states)
                and (cursor is None or scan_id < cursor)
            )

        candidates = sorted(
            {e.scan_id for e in entries if matches(e.principal, e.tool, e.target_key, e.state, e.scan_id)},
            reverse=True,
        )
        jobs: list[Job] = []
        more = False
        for scan_id in candidates:
            job = await self._listed(scan_id)
            # The record decides: a stale index key (a crash between two writes) is skipped.
            if job is None or not matches(job.principal, job.tool, target_key(job.target), job.state, scan_id):
                continue
            if len(jobs) == limit:
                more = True
                break
            jobs.append(job)
        return JobPage(jobs, jobs[-1].scan_id if more and jobs else None)

    def page(self, where: JobFilter, limit: int, cursor: str | None = None) -> JobPage:
        return self._read("list scans", lambda: self._page(where, limit, cursor))

    async def _previous_completed_id(self, tool: str, target: str, principal: str, before: str) -> str | None:
        # The target's latest completed scan, when it is older than `before` and still stored
        # completed (its `s.` key): two direct reads. Else (a newer scan completed since, a
        # delete, a store from before the `l.` keys) the listing.
        latest = (await self._get(latest_key(principal, tool, target)) or b"").decode()
        checked = state_key(principal, tool, target, "completed", latest)
        if latest and latest < before and await self._get(checked) is not None:
            return latest
        pattern = state_key(principal, tool, target, "completed", "*")
        ids = [key.rpartition(".")[2] for key, _ in await self._keys(pattern)]
        older = [scan_id for scan_id in ids if scan_id < before]
        return max(older) if older else None

    def previous_completed_id(self, tool: str, target: str, principal: str, before: str) -> str | None:
        return self._read(
            "find the previous scan", lambda: self._previous_completed_id(tool, target, principal, before)
        )

    async def previous_completed_id_soon(self, tool: str, target: str, principal: str, before: str) -> str | None:
        """`previous_completed_id`, awaited on the caller's loop (a scan looks it up as it starts)."""
        return await self._read_soon(
            "find the previous scan", lambda: self._previous_completed_id(tool, target, principal, before)
        )

    def previous_completed(self, tool: str, target: str, principal: str, before: str) -> Job | None:
        scan_id = self.previous_completed_id(tool, target, principal, before)
        return None if scan_id is None else self.get(scan_id)

    def count(self, principal: str | None = None) -> int:
        async def read() -> int:
            if principal is None:
                return len(await self._keys("job.*"))
            return len(await self._keys(f"p.{hex_part(principal)}.*"))

        return self._read("count scans", read)

    async def unfinished_of(self, principal: str) -> int:
        """How many of `principal`'s scans are unfinished (queued, running or awaiting approval):
        one listing of the live bucket, whose size is the fleet's unfinished work, not its
        stored jobs. A sharded scan counts once (its shards' keys name no principal). Awaited,
        not blocking: a front's other calls go on while NATS answers."""

        action = f"count the unfinished scans of {principal}"
        return await self._read_soon(action, lambda: self._unfinished_of(principal))

    async def _unfinished_of(self, principal: str) -> int:
        return len(await self._keys(f"u.{hex_part(principal)}.*.*"))

    async def _recorded(self) -> tuple[set[str], list[IndexEntry]]:
        """The scan ids that have a record, and the `s.` entries of those only (an index key a
        crash left without its record is not a job)."""
        records = {key[4:] for key, _ in await self._keys("job.*")}
        return records, [entry for entry in await self._index(None) if entry.scan_id in records]

    def counts(self) -> dict[str, int]:
        async def read() -> dict[str, int]:
            _, entries = await self._recorded()
            states: dict[str, str] = {}
            for entry in entries:
                if entry.scan_id in states and states[entry.scan_id] != entry.state:
                    job = await self._listed(entry.scan_id)  # two states: a stale key; the record decides
                    if job is not None:
                        states[entry.scan_id] = job.state
                else:
                    states[entry.scan_id] = entry.state
            totals: dict[str, int] = {}
            for state in states.values():
                totals[state] = totals.get(state, 0) + 1
            return totals

        return self._read("count scans by state", read)

    def unfinished(self, segment: str | None = None) -> list[Job]:
        """The unfinished jobs (of one `segment`: its appliances' sweeps read no other's), their
        records read READS_AT_ONCE at a time."""

        async def read() -> list[Job]:
            ids = [
                key.rpartition(".")[2] for key, _ in await self._keys("u.>" if segment is None else f"u.*.{segment}.*")
            ]
            jobs: list[Job | None] = []
            for start in range(0, len(ids), READS_AT_ONCE):
                jobs.extend(
                    await asyncio.gather(*(self._listed(scan_id) for scan_id in ids[start : start + READS_AT_ONCE]))
                )
            return sorted(
                (job for job in jobs if job is not None and job.state in UNFINISHED), key=lambda job: job.scan_id
            )

        return self._read("list unfinished scans", read)

    # --- retention -------------------------------------------------------------------------
    def sweep(self, now: float, max_age_seconds: float, max_count: int, principal_max: int) -> list[str]:
        async def plan() -> list[str]:
            cutoff_ms = int((now - max_age_seconds) * 1000)
            doomed: list[str] = []
            for key, _ in await self._keys("f.*.*"):
                _, ms, scan_id = key.split(".", 2)
                if int(ms) < cutoff_ms:
                    doomed.append(scan_id)
            gone = set(doomed)
            owners: dict[str, str] = {}
            finished: set[str] = set()
            _, entries = await self._recorded()
            for entry in entries:
                owners[entry.scan_id] = entry.principal
                if entry.state in FINISHED:
                    finished.add(entry.scan_id)
            oldest_finished = sorted(finished)
            over = len(owners) - len(gone) - max_count
            take_oldest(oldest_finished, over, doomed, gone)
            by_principal: dict[str, list[str]] = {}
            for scan_id, principal in owners.items():
                by_principal.setdefault(principal, []).append(scan_id)
            for principal, ids in sorted(by_principal.items()):
                if len(ids) <= principal_max:
                    continue
                theirs = [scan_id for scan_id in oldest_finished if owners[scan_id] == principal]
                over = len(ids) - principal_max - sum(1 for scan_id in ids if scan_id in gone)
                take_oldest(theirs, over, doomed, gone)
            return doomed

        doomed = self._read("plan the retention sweep", plan)
        self.delete(doomed)
        self._write("remove index keys without a record", self._repair)
        return doomed

    async def _repair(self) -> None:
        """Delete the index keys a crash between two writes left behind (the sweep's chore)."""
        records = {key[4:] for key, _ in await self._keys("job.*")}
        for pattern in ("p.>", "e.>", "s.>", "u.>", "f.*.*", "r.*", "x.*.*"):
            keys = [key for key, _ in await self._keys(pattern) if key.rpartition(".")[2] not in records]
            await self._delete_keys(keys)
        # A target's latest-scan key names its scan in its value (a hint: a stale one is only skipped).
        await self._delete_keys(
            [key for key, value in await self._keys("l.>", values=True) if value.decode() not in records]
        )

    # --- health ----------------------------------------------------------------------------
    def writable(self) -> tuple[str, str] | None:
        # The last write's failure until a write succeeds; new scans still try to write.
        if self._fault is None and not self._bus.connected:
            return "store_unwritable", "the NATS connection is down (reconnecting)"
        return self._fault

    def space_problem(self) -> tuple[str, str] | None:
        # JetStream enforces its own limits; a write it refuses is `store_full` (see `_store_error`).
        # Only that known condition refuses new scans before they try to write.
        return self._fault if self._fault is not None and self._fault[0] == "store_full" else None

    def describe(self) -> dict[str, object]:
        problem = self.writable()
        try:
            jobs: int | None = self.count()
        except ExecutionError:
            jobs = None
        return {
            "kind": "jetstream",
            "servers": self._bus.settings.redacted_servers(),
            "bucket": self.bucket,
            "live_bucket": self.live_bucket,
            "raw_bucket": self.raw_bucket,
            "replicas": self.replicas,
            "jobs": jobs,
            "problem": None if problem is None else problem[1],
            "rule": None if problem is None else problem[0],
        }

    def close(self) -> None:
        """The bus belongs to whoever started it (one connection serves the store and the queues)."""
