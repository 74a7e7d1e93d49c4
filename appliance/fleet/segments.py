"""Segments advertise their scope; fronts read the advertisements to route (appliance.fleet.routing).

Each segment appliance puts its scope under `seg.<segment>.<appliance>` in a key-value bucket
every heartbeat, and deletes its key at a clean stop; a front reads every key. An advertisement
is validated again on receipt (the bus is not trusted: a malformed one is skipped and logged,
never routed to). The appliances of one segment run one policy file, so they advertise the same
scope; where they disagree (a rollout half done, an operator error) the freshest heartbeat wins
and `describe()` says so, which /healthz shows. Routing only decides where a job goes: the
segment re-checks it against its own policy before it runs anything.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue
from pydantic import ValidationError as ModelError

from appliance.errors import ExecutionError, ValidationError
from appliance.fleet.bus import BusThread
from appliance.fleet.kv import key_value_bucket, live_entries, read_entry
from appliance.fleet.records import RecordSigner, published_key
from appliance.fleet.routing import SegmentScope
from appliance.policy.model import Policy

log = logging.getLogger(__name__)

T = TypeVar("T")

BUCKET = "appliance_segments"
APPLIANCE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def advertisement(policy: Policy, segment: str, now: float) -> SegmentScope:
    """What a segment appliance with `policy` advertises: its global scope's networks and suffixes."""
    scope = policy.scope
    return SegmentScope(
        name=segment,
        allow_networks=list(scope.allow_networks),
        allow_hostname_suffixes=list(scope.allow_hostname_suffixes),
        deny_networks=list(scope.deny_networks),
        heartbeat_at=now,
    )


@dataclass(frozen=True)
class SegmentView:
    """The segments a front sees: one scope each (the freshest), and what disagreed."""

    segments: tuple[SegmentScope, ...]
    appliances: dict[str, int]  # segment -> appliances advertising it
    disagreements: tuple[str, ...]  # segments whose appliances advertise different scopes
    skipped: int  # advertisements that failed validation


class SegmentRegistry:
    def __init__(self, bus: BusThread, *, bucket: str = BUCKET, replicas: int = 1, create: bool = True) -> None:
        self._bus = bus
        self.bucket = bucket
        self.replicas = replicas
        self._create = create
        self._kv: KeyValue | None = None
        self._call("open the segment bucket", self._open)

    async def _open(self) -> None:
        self._kv = await key_value_bucket(self._bus.js, self.bucket, replicas=self.replicas, create=self._create)

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None
        return self._kv

    def _call(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            return self._bus.call_repeatable(operation, what)
        except ExecutionError:  # BusUnavailable, bus_not_provisioned: named already
            raise
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise ExecutionError(
                f"could not {what}: {exc!r}",
                rule="bus_unavailable",
                recovery_suggestion="Retry shortly; the operator must check the NATS JetStream servers.",
            ) from exc

    def advertise(self, scope: SegmentScope, appliance: str) -> None:
        """Put (or refresh) this appliance's advertisement of its segment."""
        key = _key(scope.name, appliance)
        body = scope.model_dump_json().encode()

        async def put() -> None:
            await self.kv.put(key, body)

        self._call(f"advertise segment {scope.name}", put)

    def publish_key(self, signer: RecordSigner, segment: str, appliance: str, now: float) -> None:
        """Put this appliance's record key where only its segment's login may write
        (appliance.fleet.records): before it writes any record. Never withdrawn: the records it
        signed must stay readable after it stops."""
        key, body = published_key(segment, signer.key_id), signer.publication(appliance, now)

        async def put() -> None:
            await self.kv.put(key, body)

        self._call(f"publish the record key of segment {segment}", put)

    async def published(self, segment: str, kid: str) -> bytes | None:
        """A published record key's value (on the bus loop), read from the stream's leader."""
        return (await read_entry(self._bus.js, self.bucket, published_key(segment, kid)))[0]

    def withdraw(self, segment: str, appliance: str) -> None:
        """A clean stop: this appliance no longer runs jobs of `segment`. A delete marker, not a
        purge: a segment's NATS user may write its own keys only, and a purge request names its
        subject where permissions cannot see it (readers skip the marker)."""
        key = _key(segment, appliance)

        async def delete() -> None:
            await self.kv.delete(key)

        self._call(f"withdraw from segment {segment}", delete)

    def view(self) -> SegmentView:
        async def read() -> list[tuple[str, bytes]]:
            return await live_entries(self._bus.js, self.bucket, "seg.>", values=True)

        by_segment: dict[str, list[SegmentScope]] = {}
        skipped = 0
        for key, value in self._call("read the segments", read):
            _, name, _appliance = key.split(".", 2)
            try:
                scope = SegmentScope.model_validate(json.loads(value))
            except (ValueError, ModelError):
                scope = None
            if scope is None or scope.name != name:
                skipped += 1
                log.warning("segment advertisement refused: not a valid scope", extra={"key": key})
                continue
            by_segment.setdefault(name, []).append(scope)
        chosen: list[SegmentScope] = []
        disagreements: list[str] = []
        for name, scopes in sorted(by_segment.items()):
            freshest = max(scopes, key=lambda scope: scope.heartbeat_at)
            chosen.append(freshest)
            shapes = {scope.model_copy(update={"heartbeat_at": 0.0}).model_dump_json() for scope in scopes}
            if len(shapes) > 1:
                disagreements.append(name)
        return SegmentView(
            tuple(chosen), {name: len(scopes) for name, scopes in by_segment.items()}, tuple(disagreements), skipped
        )

    def heartbeats(self, segment: str) -> dict[str, float]:
        """When each appliance of `segment` last advertised it (its liveness, for the takeover
        of a silent appliance's jobs); an unreadable advertisement counts as none."""

        async def read() -> list[tuple[str, bytes]]:
            return await live_entries(self._bus.js, self.bucket, f"seg.{segment}.*", values=True)

        beats: dict[str, float] = {}
        for key, value in self._call(f"read the heartbeats of segment {segment}", read):
            try:
                beats[key.split(".", 2)[2]] = SegmentScope.model_validate(json.loads(value)).heartbeat_at
            except (ValueError, ModelError):
                continue
        return beats


def _key(segment: str, appliance: str) -> str:
    if not APPLIANCE_ID.fullmatch(appliance):
        raise ValidationError(
            f"{appliance!r} is not an appliance id (letters, digits, - and _, 1-64)",
            rule="appliance_id_invalid",
            recovery_suggestion="Name the appliance with letters, digits, '-' and '_' only.",
        )
    return f"seg.{segment}.{appliance}"
