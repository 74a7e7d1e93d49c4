"""What a fleet appliance shows of the fleet (`/healthz` checks.fleet, `appliance_fleet_*`), on a
real nats-server: here, jobs left waiting for a segment that no appliance advertises any more."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from support.fleet import SEALER, FleetLab

from appliance.fleet.observe import FleetCollector, FleetObserver
from appliance.tools import TOOLS
from appliance.tools.nmap import NmapRequest

pytestmark = pytest.mark.anyio


async def test_jobs_waiting_for_a_segment_whose_appliances_all_withdrew_are_shown_and_counted(
    fleet: FleetLab,
) -> None:
    seg_a = fleet.segment("seg-a", "seg-a-1")
    front = fleet.front()
    queued = await front.service.call(
        TOOLS["nmap_scan"], NmapRequest(target="127.0.0.1", ports="80", wait_seconds=0), "rid-1"
    )
    assert queued.status == "queued"
    assert seg_a.worker is not None
    seg_a.worker.withdraw()  # a clean stop of its only appliance; its job still waits in the queue
    observer = FleetObserver(front.parts, "front", "front-1")
    status = observer.status()
    assert "seg-a" not in status["segments"]
    assert status["unadvertised"] == {"seg-a": 1}
    # The seal keys in use: the one a front seals with, the ones a segment accepts (rotation).
    assert FleetObserver(front.parts, "front", "front-1", front=front.parts.front(SEALER)).status()["seal_key"] == (
        SEALER.key_id
    )
    assert FleetObserver(seg_a.parts, "segment", "seg-a-1", seg_a.worker).status()["seal_keys"] == [SEALER.key_id]
    registry = CollectorRegistry()
    registry.register(FleetCollector(observer.status))
    scraped = generate_latest(registry).decode()
    assert 'appliance_fleet_queue_depth{segment="seg-a"} 1.0' in scraped
    assert 'appliance_fleet_segment_appliances{segment="seg-a"} 0.0' in scraped
    assert 'appliance_fleet_segment_heartbeat_age_seconds{segment="seg-a"}' not in scraped
