"""`appliance serve --role front` and `--role segment` as processes on a nats-server of the test's
own: a real MCP client scans through a front, a segment appliance runs real nmap, a second
front answers for the scan, and a front without its NATS is not ready."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
from support.fleet import (
    FRONT_POLICY,
    SEGMENT_POLICIES,
    FleetNames,
    fleet_parts,
    seal_files,
    served_front,
    served_segment,
    started_bus,
)
from support.listeners import tcp_listener
from support.nats import NatsServer
from support.policies import LOOPBACK_POLICY, write_policy
from support.raw_mcp import HANDSHAKE_VERSION, initialize_request, mcp_headers, rpc_messages
from support.servers import TOKEN, http_client, served
from support.waiting import wait_until

from appliance.fleet.observe import FleetObserver
from appliance.fleet.queue import JobQueue, QueueSettings
from appliance.fleet.roles import FleetParts
from appliance.fleet.segments import SegmentRegistry
from appliance.jobs.jetstream import JetStreamJobStore

pytestmark = pytest.mark.anyio


async def test_a_scan_through_a_front_runs_on_the_segment_and_another_front_answers_for_it(
    tmp_path: Path, own_nats: NatsServer
) -> None:
    with (
        tcp_listener() as port,
        served_segment(tmp_path, own_nats.url, "seg-a", "seg-a-1") as seg_a,
        served_front(tmp_path, own_nats.url) as first,
        served_front(tmp_path, own_nats.url) as second,
    ):
        # The segment advertises itself once it runs; a front routes only to what it has seen.
        wait_until(lambda: first.get("/healthz")[1]["checks"]["fleet"].get("segments"), timeout=20)
        async with http_client(first.url, "2026-07-28") as client:
            result = await client.call_tool(
                "nmap_scan", {"target": "127.0.0.1", "ports": str(port), "wait_seconds": 60}
            )
            refused = await client.call_tool("nmap_scan", {"target": "127.0.2.9", "ports": "80"})
        async with http_client(second.url, "2026-07-28") as other:
            seen = await other.call_tool("get_scan", {"scan_id": result.structured_content["scan_id"]})  # type: ignore[index]
        # A handshake-era client too: the fronts keep no session, so each of its requests may
        # land on any front (here: the whole session on the second one, which never saw it).
        async with http_client(second.url, "legacy") as legacy:
            listed = await legacy.call_tool("list_scans", {})
        status, ready = seg_a.get("/readyz")
        front_metrics, segment_metrics = first.metrics(), seg_a.metrics()
    assert not result.is_error, result.structured_content
    body = result.structured_content
    assert body is not None
    assert body["status"] == "completed"
    assert [(p["port"], p["state"]) for p in body["hosts"][0]["ports"]] == [(port, "open")]
    assert refused.is_error
    assert refused.structured_content["rule"] == "target_in_no_segment"  # type: ignore[index]
    assert not seen.is_error
    assert seen.structured_content["status"] == "completed"  # type: ignore[index]
    assert seen.structured_content["hosts"][0]["ports"][0]["port"] == port  # type: ignore[index]
    assert status == 200, ready
    assert not listed.is_error
    assert [scan["status"] for scan in listed.structured_content["scans"]] == ["completed"]  # type: ignore[index]
    assert 'appliance_fleet_jobs_routed_total{segment="seg-a"} 1.0' in front_metrics
    assert 'appliance_fleet_segment_appliances{segment="seg-a"} 1.0' in front_metrics
    assert "appliance_fleet_connected 1.0" in front_metrics
    assert 'appliance_fleet_jobs_handled_total{outcome="started"} 1.0' in segment_metrics
    assert 'appliance_fleet_queue_depth{segment="seg-a"} 0.0' in segment_metrics


async def test_a_front_without_nats_refuses_to_start_and_says_why(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY, FRONT_POLICY, name="front.yaml")
    dead = "nats://127.0.0.1:1"  # nothing listens on port 1 of loopback
    with (
        pytest.raises(AssertionError) as exited,
        served(policy, APPLIANCE_ROLE="front", APPLIANCE_NATS_URL=dead, **seal_files(tmp_path)),
    ):
        pass
    assert "bus_unavailable" in str(exited.value) or "could not connect to NATS" in str(exited.value)


@pytest.mark.parametrize(("role", "setting"), [("front", "KEY"), ("segment", "PUBLIC_KEYS")])
async def test_a_fleet_role_without_its_seal_file_refuses_to_start_before_it_joins_the_bus(
    tmp_path: Path, role: str, setting: str
) -> None:
    # The NATS URL answers nothing: the seal check must come first, and name its rule and file.
    rules = FRONT_POLICY if role == "front" else SEGMENT_POLICIES["seg-a"]
    policy = write_policy(tmp_path, LOOPBACK_POLICY, rules, name=f"{role}.yaml")
    env = {"APPLIANCE_ROLE": role, "APPLIANCE_NATS_URL": "nats://127.0.0.1:1", "APPLIANCE_SEGMENT": "seg-a"}
    with pytest.raises(AssertionError) as exited, served(policy, **env):
        pass
    assert "fleet_seal_key_missing" in str(exited.value)
    assert f"APPLIANCE_FLEET_SEAL_{setting}_FILE" in str(exited.value)
    assert "bus_unavailable" not in str(exited.value)


async def test_fronts_keep_no_session_so_a_handshake_era_client_may_go_to_any_front(
    tmp_path: Path, own_nats: NatsServer
) -> None:
    with served_front(tmp_path, own_nats.url) as first, served_front(tmp_path, own_nats.url) as second:
        async with httpx2.AsyncClient(timeout=30) as http:
            opened = await http.post(first.url, json=initialize_request(), headers=mcp_headers(TOKEN))
            headers = {**mcp_headers(TOKEN), "MCP-Protocol-Version": HANDSHAKE_VERSION}
            call = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "list_scans", "arguments": {}},
            }
            answered = await http.post(second.url, json=call, headers=headers)
    assert opened.status_code == 200, opened.text
    assert "mcp-session-id" not in opened.headers  # stateless: nothing to be sticky to
    assert answered.status_code == 200, answered.text
    [message] = rpc_messages(answered.text)
    assert message["result"]["structuredContent"]["scans"] == []


def test_a_front_shows_the_streams_that_kept_the_settings_of_their_creation(
    nats: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    names = FleetNames()
    first = fleet_parts(nats.url, names, names.queue(max_jobs=100))  # an earlier start made them
    bus = started_bus(nats.url)
    try:
        assert first.read_drift() == {}
        # A later start with three copies and the default queue bound: the streams keep theirs.
        later = FleetParts(
            bus,
            JetStreamJobStore(bus, bucket=names.jobs_bucket, raw_bucket=names.raw_bucket, replicas=3),
            SegmentRegistry(bus, bucket=names.segments_bucket),
            JobQueue(bus, names.queue()),
        )
        copies = {"num_replicas": {"stream": 1, "settings": 3}}
        assert later.read_drift() == {
            names.queue().stream: {"max_msgs": {"stream": 100, "settings": QueueSettings().max_jobs}},
            f"KV_{names.jobs_bucket}": copies,
            f"KV_{names.live_bucket}": copies,
            f"OBJ_{names.raw_bucket}": copies,
        }
        assert FleetObserver(later, "front", "front-1").status()["settings_drift"] == later.drift
        warned = [record for record in caplog.records if record.getMessage().startswith("a fleet stream keeps")]
        assert {record.__dict__["stream"] for record in warned} == set(later.drift)
        assert all("nats stream edit" in record.__dict__["recovery"] for record in warned)
    finally:
        bus.close()
        first.close()
