"""Routing a target to the segment whose scope holds it, at the front, without resolving names."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError as ModelError

from appliance.errors import ValidationError
from appliance.fleet.routing import SegmentScope, route

NOW = 1_000_000.0
STALE = 30.0


def segment(name: str, heartbeat_at: float = NOW, **scope: Any) -> SegmentScope:
    return SegmentScope(name=name, heartbeat_at=heartbeat_at, **scope)


SEG_A = segment(
    "seg-a",
    allow_networks=["10.30.0.0/16"],
    allow_hostname_suffixes=[".seg-a.lab.internal"],
    deny_networks=["10.30.99.0/24"],
)
SEG_B = segment("seg-b", allow_networks=["10.40.0.0/16", "10.30.7.0/24"], allow_hostname_suffixes=[".lab.internal"])
FLEET = [SEG_A, SEG_B]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        # safe
        ("10.30.0.5", "seg-a"),
        ("10.30.0.0/24", "seg-a"),
        ("10.40.1.1", "seg-b"),
        ("10.30.7.9", "seg-b"),  # seg-b's /24 inside seg-a's /16: the most specific network wins
        ("web.seg-a.lab.internal", "seg-a"),  # the longest suffix wins over seg-b's .lab.internal
        ("WEB.SEG-A.LAB.INTERNAL", "seg-a"),
        ("web.seg-b.lab.internal", "seg-b"),
    ],
)
def test_route_picks_the_segment_whose_scope_holds_the_target(target: str, expected: str) -> None:
    assert route(target, FLEET, now=NOW, stale_after_seconds=STALE).name == expected


@pytest.mark.parametrize(
    ("target", "rule"),
    [
        # unsafe
        ("10.50.0.1", "target_in_no_segment"),
        ("10.30.0.0/15", "target_in_no_segment"),  # wider than any one segment's network
        ("10.30.99.4", "target_in_no_segment"),  # seg-a denies it and nobody else claims it
        ("10.30.98.0/23", "target_in_no_segment"),  # overlaps seg-a's deny
        ("web.other.internal", "target_in_no_segment"),
        ("xseg-a.lab.internalx", "target_in_no_segment"),
        ("010.30.0.5", "target_noncanonical_ipv4"),  # spelling is refused before routing
        ("10.30.0.5,10.40.0.1", "target_list_syntax"),
    ],
)
def test_route_refuses_a_target_no_segment_holds_naming_the_rule(target: str, rule: str) -> None:
    with pytest.raises(ValidationError) as refused:
        route(target, FLEET, now=NOW, stale_after_seconds=STALE)
    assert refused.value.rule == rule


def test_a_refusal_names_every_segment_known_and_its_scope() -> None:
    with pytest.raises(ValidationError) as refused:
        route("10.50.0.1", FLEET, now=NOW, stale_after_seconds=STALE)
    assert "seg-a (10.30.0.0/16, *.seg-a.lab.internal)" in refused.value.message
    assert "seg-b (10.40.0.0/16, 10.30.7.0/24, *.lab.internal)" in refused.value.message
    assert "segment" in refused.value.recovery_suggestion


def test_a_target_only_a_stale_segment_claims_is_segment_unavailable() -> None:
    stale_a = segment("seg-a", heartbeat_at=NOW - STALE - 1, allow_networks=["10.30.0.0/16"])
    with pytest.raises(ValidationError) as refused:
        route("10.30.0.5", [stale_a, SEG_B], now=NOW, stale_after_seconds=STALE)
    assert refused.value.rule == "segment_unavailable"
    assert "seg-a" in refused.value.message


def test_a_fresh_less_specific_segment_does_not_take_a_stale_segments_target() -> None:
    # seg-b's /24 is stale: its target must not silently go to seg-a (that /24 is elsewhere).
    stale_b = segment("seg-b", heartbeat_at=NOW - STALE - 1, allow_networks=["10.30.7.0/24"])
    with pytest.raises(ValidationError) as refused:
        route("10.30.7.9", [SEG_A, stale_b], now=NOW, stale_after_seconds=STALE)
    assert refused.value.rule == "segment_unavailable"
    assert "seg-b" in refused.value.message


def test_two_segments_claiming_a_target_equally_is_refused_as_an_overlap() -> None:
    twin = segment("seg-c", allow_networks=["10.30.0.0/16"])
    with pytest.raises(ValidationError) as refused:
        route("10.30.0.5", [SEG_A, twin], now=NOW, stale_after_seconds=STALE)
    assert refused.value.rule == "target_in_several_segments"
    assert "seg-a, seg-c" in refused.value.message


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "Seg A"},
        {"name": "seg.a"},  # a dot would change the job subject
        {"name": "seg-a", "allow_networks": ["10.30.0.1/16"]},  # host bits set
        {"name": "seg-a", "allow_hostname_suffixes": ["lab.internal"]},
        {"name": "seg-a", "extra": True},
    ],
)
def test_an_advertisement_that_is_not_a_valid_scope_is_refused_on_receipt(bad: dict[str, Any]) -> None:
    with pytest.raises(ModelError):
        SegmentScope(heartbeat_at=NOW, **bad)
