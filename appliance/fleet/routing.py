"""Which segment runs a target: the front's choice, made without the segment's network.

Each segment advertises its scope (the networks and name suffixes of its own policy). The front
routes an address or block to the segment whose allowed network holds all of it, the most
specific network winning, and a name to the segment with the longest matching suffix, without
resolving it (the front may not even see that segment's DNS). The segment re-checks the whole
request against its own policy before it starts anything: routing decides where a job goes,
never whether it may run.

Not covered here: the global and engagement rules (the front's ScanService checks those first)
and the spelling of the target (parse_target refuses every non-canonical form before routing).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import Field, field_validator

from appliance.errors import ValidationError
from appliance.policy.fields import NetworkLists, within
from appliance.policy.targets import parse_target

SEGMENT_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")


class SegmentScope(NetworkLists):
    """What a segment advertises (validated again on receipt: the bus is not trusted)."""

    name: str = Field(description="The segment's name: its job subject is jobs.<name>.")
    allow_networks: list[str] = Field(default_factory=list)
    allow_hostname_suffixes: list[str] = Field(default_factory=list)
    deny_networks: list[str] = Field(default_factory=list)
    heartbeat_at: float = Field(description="Wall-clock time of the advertisement; stale ones are not routed to.")

    @field_validator("name")
    @classmethod
    def _name_is_a_subject_token(cls, value: str) -> str:
        if not SEGMENT_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a segment name (lower-case letters, digits, inner '-', 1-32)")
        return value

    def describe(self) -> str:
        parts = [*self.allow_networks, *(f"*{suffix}" for suffix in self.allow_hostname_suffixes)]
        return f"{self.name} ({', '.join(parts) or 'nothing'})"


def _refusal(rule: str, message: str, segments: Sequence[SegmentScope], recovery: str) -> ValidationError:
    known = "; ".join(s.describe() for s in sorted(segments, key=lambda s: s.name)) or "none"
    return ValidationError(f"{message}; segments known: {known}", rule=rule, recovery_suggestion=recovery)


def route(target: str, segments: Sequence[SegmentScope], *, now: float, stale_after_seconds: float) -> SegmentScope:
    """The segment that runs `target`; ValidationError naming the rule and the segments known:
    `target_in_no_segment`, `target_in_several_segments` (two segments claim it equally:
    their scopes overlap, an operator error) or `segment_unavailable` (only a segment whose
    advertisement is stale claims it)."""
    parsed = parse_target(target)
    ranked: list[tuple[int, SegmentScope]] = []
    for segment in segments:
        if parsed.network is not None:
            block = parsed.network
            if any(within(block, denied) or within(denied, block) for denied in segment.denied()):
                continue
            holding = [net.prefixlen for net in segment.allowed() if within(block, net)]
            if holding:
                ranked.append((max(holding), segment))
        else:
            matching = [len(suffix) for suffix in segment.allow_hostname_suffixes if parsed.text.endswith(suffix)]
            if matching:
                ranked.append((max(matching), segment))
    if not ranked:
        raise _refusal(
            "target_in_no_segment",
            f"{target!r} is in no segment's scope",
            segments,
            "Scan a target inside one segment's networks or name suffixes, or ask the operator to add a segment.",
        )
    # The most specific claim decides, stale or not: a /24 carved out of another segment's /16
    # is somewhere else on the network, and must not fall back to the /16's segment.
    best = max(rank for rank, _ in ranked)
    claimants = [segment for rank, segment in ranked if rank == best]
    fresh = [segment for segment in claimants if now - segment.heartbeat_at <= stale_after_seconds]
    if len({segment.name for segment in claimants}) > 1:
        raise _refusal(
            "target_in_several_segments",
            f"{target!r} is claimed equally by segments {', '.join(sorted(s.name for s in claimants))} "
            "(their scopes overlap)",
            segments,
            "Ask the operator to make the segments' scopes disjoint; until then scan a target only one claims.",
        )
    if not fresh:
        raise _refusal(
            "segment_unavailable",
            f"{target!r} belongs to segment {claimants[0].name}, which has not been heard from for over "
            f"{stale_after_seconds:g} s",
            segments,
            "Retry later; the operator must check that segment's appliances and their link to NATS.",
        )
    return fresh[0]
