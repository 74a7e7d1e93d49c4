"""Segment advertisements on a real nats-server: what a front sees, and what it refuses to see."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from support.fleet import started_bus
from support.nats import NatsServer

from appliance.errors import ValidationError
from appliance.fleet.bus import BusThread
from appliance.fleet.routing import route
from appliance.fleet.segments import SegmentRegistry, advertisement
from appliance.policy.model import Policy

NOW = 1_000_000.0


def policy(networks: list[str], suffixes: list[str], denied: list[str] | None = None) -> Policy:
    return Policy.model_validate(
        {
            "version": 2,
            "scope": {
                "allow_networks": networks,
                "allow_hostname_suffixes": suffixes,
                "deny_networks": denied or [],
            },
        }
    )


SEG_A = policy(["10.30.0.0/16"], [".seg-a.lab.internal"], ["10.30.99.0/24"])
SEG_B = policy(["10.40.0.0/16"], [".seg-b.lab.internal"])


@pytest.fixture
def buses(nats: NatsServer) -> Iterator[list[BusThread]]:
    opened = [started_bus(nats.url) for _ in range(3)]
    yield opened
    for bus in opened:
        bus.close()


@pytest.fixture
def bucket() -> str:
    return f"segments_{uuid.uuid4().hex[:12]}"


def test_a_front_routes_by_what_the_segments_advertised(buses: list[BusThread], bucket: str) -> None:
    seg_a, seg_b, front = (SegmentRegistry(bus, bucket=bucket) for bus in buses)
    seg_a.advertise(advertisement(SEG_A, "seg-a", NOW), "seg-a-1")
    seg_a.advertise(advertisement(SEG_A, "seg-a", NOW + 1), "seg-a-2")
    seg_b.advertise(advertisement(SEG_B, "seg-b", NOW), "seg-b-1")

    view = front.view()

    assert [s.name for s in view.segments] == ["seg-a", "seg-b"]
    assert view.appliances == {"seg-a": 2, "seg-b": 1}
    assert view.disagreements == () and view.skipped == 0
    assert route("web.seg-b.lab.internal", view.segments, now=NOW + 2, stale_after_seconds=30).name == "seg-b"
    assert route("10.30.0.5", view.segments, now=NOW + 2, stale_after_seconds=30).name == "seg-a"
    with pytest.raises(ValidationError) as refused:
        route("10.30.99.5", view.segments, now=NOW + 2, stale_after_seconds=30)
    assert refused.value.rule == "target_in_no_segment"


def test_a_withdrawn_appliance_leaves_and_a_segment_without_appliances_is_not_routed_to(
    buses: list[BusThread], bucket: str
) -> None:
    seg_a, _, front = (SegmentRegistry(bus, bucket=bucket) for bus in buses)
    seg_a.advertise(advertisement(SEG_A, "seg-a", NOW), "seg-a-1")
    seg_a.withdraw("seg-a", "seg-a-1")
    view = front.view()
    assert view.segments == ()
    with pytest.raises(ValidationError) as refused:
        route("10.30.0.5", view.segments, now=NOW, stale_after_seconds=30)
    assert refused.value.rule == "target_in_no_segment"


def test_forged_or_malformed_advertisements_are_skipped_never_routed_to(buses: list[BusThread], bucket: str) -> None:
    seg_a, _, front = (SegmentRegistry(bus, bucket=bucket) for bus in buses)
    seg_a.advertise(advertisement(SEG_A, "seg-a", NOW), "seg-a-1")
    wide = advertisement(policy(["0.0.0.0/0"], []), "seg-b", NOW).model_dump()

    async def forge() -> None:
        await seg_a.kv.put("seg.seg-x.evil", b"{not json")
        await seg_a.kv.put("seg.seg-y.evil", b'{"name": "seg-y", "allow_networks": ["10.0.0.1/8"], "heartbeat_at": 1}')
        # A valid scope under another segment's key: the name in the key and in the body must agree.
        await seg_a.kv.put("seg.seg-a.evil", json.dumps(wide).encode())

    buses[0].call(forge, "forge advertisements")
    view = front.view()
    assert [s.name for s in view.segments] == ["seg-a"]
    assert view.segments[0].allow_networks == ["10.30.0.0/16"]
    assert view.skipped == 3


def test_appliances_of_one_segment_that_disagree_are_reported_and_the_freshest_wins(
    buses: list[BusThread], bucket: str
) -> None:
    seg_a, other, front = (SegmentRegistry(bus, bucket=bucket) for bus in buses)
    seg_a.advertise(advertisement(SEG_A, "seg-a", NOW), "seg-a-1")
    other.advertise(advertisement(policy(["10.31.0.0/16"], []), "seg-a", NOW + 5), "seg-a-2")
    view = front.view()
    assert view.disagreements == ("seg-a",)
    assert view.segments[0].allow_networks == ["10.31.0.0/16"]


def test_an_appliance_id_that_is_not_a_key_token_is_refused(buses: list[BusThread], bucket: str) -> None:
    registry = SegmentRegistry(buses[0], bucket=bucket)
    with pytest.raises(ValidationError) as refused:
        registry.advertise(advertisement(SEG_A, "seg-a", NOW), "seg.a.1")
    assert refused.value.rule == "appliance_id_invalid"
