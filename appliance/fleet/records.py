"""Every fleet job record carries its writer's signature; a reader takes a record only from a
front or from an appliance of the job's own segment (README "Fleet", bus security).

Fronts and segment appliances both write the job bucket (a segment records its claim, its run
and its result), and NATS subject permissions cannot tell one job's key from another's: the keys
name the scan, not its segment. So without more, the NATS login of one segment could rewrite
another segment's records: its state, its findings, its error. What permissions cannot stop,
signatures show. Each appliance signs the whole of every record it writes (the result in place,
before a large one is kept apart):

- a front with the fronts' seal key (appliance.fleet.seal; segments hold its public half);
- a segment appliance with a key of its own, made at its start, whose public half it puts under
  `key.<segment>.<key id>` of the segment bucket before it writes anything: only that segment's
  NATS login may write those keys (scripts/nats_auth.py), so a key found there speaks for that
  segment. The keys stay when the appliance stops: the records it wrote stay readable.

A reader (every front call, a segment's claim, `appliance jobs`) takes a record only when it
verifies under a front's key or under a key published by the segment the record names; anything
else is refused `job_record_unverified` (`get_scan`, a claim), and listings leave it out (logged).
The raw output is bound to its record by its sha256 (`Job.raw_sha256`). What a segment's login can
still do to another segment's jobs is damage, not deceit: overwrite or remove them (README
"Fleet", limits).

Ed25519 from `cryptography`, canonical sorted compact JSON with a domain label (appliance.fleet.seal
uses other labels, so no admission signature is ever a record's).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance.errors import ConfigError, PermissionDeniedError
from appliance.fleet.seal import key_id, verifies

log = logging.getLogger(__name__)

LABEL = b"mcp-scanner-appliance job record v1\n"
# The record's field that carries the signature (outside what is signed).
FIELD = "written_by"
FRONT = "front"
RULE = "job_record_unverified"
RAW_RULE = "job_raw_unverified"
RECOVERY = (
    "The record was not written by a front or by an appliance of the job's own segment: the operator must check "
    'which NATS login wrote it (README "Fleet", bus security) and rotate that segment\'s password.'
)
KEY_PREFIX = "key"


def writer_of(segment: str | None) -> str:
    """How a record names its writer: `front`, or `segment:<name>`."""
    return FRONT if segment is None else f"segment:{segment}"


def published_key(segment: str, kid: str) -> str:
    """The segment bucket's key under which a segment appliance publishes its record key."""
    return f"{KEY_PREFIX}.{segment}.{kid}"


def canonical(record: Mapping[str, Any]) -> bytes:
    body = {name: value for name, value in record.items() if name != FIELD}
    return LABEL + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class RecordUnverifiedError(PermissionDeniedError):
    """A job record (or its raw output) that no front and no appliance of its segment wrote."""

    def __init__(self, scan_id: object, why: str, *, rule: str = RULE) -> None:
        message = f"the record of scan {scan_id} cannot be trusted: {why}"
        super().__init__(message, rule=rule, recovery_suggestion=RECOVERY)


@dataclass(frozen=True)
class RecordSigner:
    """What one appliance signs its records with."""

    writer: str  # writer_of(...)
    key: Ed25519PrivateKey

    @cached_property
    def key_id(self) -> str:
        return key_id(self.key.public_key())

    @cached_property
    def public_raw(self) -> bytes:
        return self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def publication(self, appliance: str, now: float) -> bytes:
        """The value a segment appliance publishes under `published_key`."""
        return json.dumps(
            {"public": base64.b64encode(self.public_raw).decode(), "appliance": appliance, "at": round(now, 3)}
        ).encode()


# Reads a published segment key's value: (segment, key id) -> the value, None when absent.
KeyLookup = Callable[[str, str], Awaitable[bytes | None]]


@dataclass
class RecordSeals:
    """One appliance's side of record signatures: its own signer (None: it writes no records,
    and a write is refused) and whom it trusts."""

    signer: RecordSigner | None
    front_keys: dict[str, Ed25519PublicKey]
    lookup: KeyLookup | None = None
    # Segment keys found so far ((segment, key id) -> key): published keys never change.
    _known: dict[tuple[str, str], Ed25519PublicKey] = field(default_factory=dict)

    @classmethod
    def of_front(cls, key: Ed25519PrivateKey, others: Mapping[str, Ed25519PublicKey] | None = None) -> RecordSeals:
        """A front (or `appliance jobs` with the fronts' key): signs as a front, trusts its own key
        and `others` (the public keys file while a key is rotated)."""
        signer = RecordSigner(FRONT, key)
        return cls(signer, {**(others or {}), signer.key_id: key.public_key()})

    @classmethod
    def of_segment(cls, segment: str, front_keys: Mapping[str, Ed25519PublicKey]) -> RecordSeals:
        """A segment appliance: a key of its own, made now (published by the caller before any write)."""
        return cls(RecordSigner(writer_of(segment), Ed25519PrivateKey.generate()), dict(front_keys))

    def seal(self, record: dict[str, Any]) -> dict[str, Any]:
        """`record` with this appliance's signature over all of it (replacing any)."""
        if self.signer is None:
            raise ConfigError(
                f"this appliance may not write the record of scan {record.get('scan_id')}: it holds no key to sign it",
                rule="fleet_seal_key_missing",
                recovery_suggestion="Run `appliance jobs` with the fronts' APPLIANCE_FLEET_SEAL_KEY_FILE (in a front).",
            )
        signature = self.signer.key.sign(canonical(record))
        stamp = {"writer": self.signer.writer, "key": self.signer.key_id, "sig": base64.b64encode(signature).decode()}
        return {**{name: value for name, value in record.items() if name != FIELD}, FIELD: stamp}

    async def check(self, record: Mapping[str, Any]) -> None:
        """Raise RecordUnverifiedError unless a front or an appliance of the record's own segment
        signed the record as it is (its result in place)."""
        scan_id = record.get("scan_id")
        stamp = record.get(FIELD)
        if not isinstance(stamp, dict):
            raise RecordUnverifiedError(scan_id, "it carries no writer's signature")
        writer, kid = str(stamp.get("writer")), str(stamp.get("key"))[:64]
        segment = record.get("segment")
        key: Ed25519PublicKey | None
        if writer == FRONT:
            key = self.front_keys.get(kid)
            known = f"this appliance knows the fronts' keys {', '.join(sorted(self.front_keys))}"
        elif isinstance(segment, str) and writer == writer_of(segment):
            key = await self._segment_key(segment, kid)
            known = f"segment {segment} never published it"
        else:
            raise RecordUnverifiedError(
                scan_id, f"it was written as {writer[:80]!r}, which may not write a job of segment {segment!r}"
            )
        if key is None:
            raise RecordUnverifiedError(scan_id, f"it is signed with key {kid!r} ({writer}), and {known}")
        if not verifies(key, stamp.get("sig"), canonical(record)):
            raise RecordUnverifiedError(scan_id, f"it was changed after {writer} signed it")

    async def _segment_key(self, segment: str, kid: str) -> Ed25519PublicKey | None:
        known = self._known.get((segment, kid))
        if known is not None or self.lookup is None:
            return known
        value = await self.lookup(segment, kid)
        if not value:
            return None  # not kept: a key published later is found by the next read
        try:
            raw = base64.b64decode(json.loads(value)["public"], validate=True)
            key = Ed25519PublicKey.from_public_bytes(raw)
        except (ValueError, KeyError, TypeError):
            log.warning("a published record key is unreadable", extra={"segment": segment, "key_id": kid})
            return None
        if key_id(key) != kid:  # published under another key's name
            return None
        self._known[(segment, kid)] = key
        return key
