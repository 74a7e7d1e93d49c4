"""compose.yaml's profile `fleet` in real containers: two lab segments behind two fronts on a
three-node NATS JetStream cluster (README "Fleet").

Every scan goes to a lab target of this deployment (web.seg-a.lab.internal, web.seg-b.lab.internal
on the internal lab networks the deployment creates), through a front over MCP (streamable HTTPS,
the SDK client). One kill test SIGKILLs the seg-a appliance that runs a scan and checks the job
ends once: finished by the other seg-a appliance or `interrupted`, never `running` forever; the
other SIGKILLs one of the three NATS nodes under eight queued jobs: each completes, once.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import docker
import pytest
from dockerlab import FleetStack
from support.servers import http_client

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

LAB_PORT = 8080  # the lab target's web server


async def call(url: str, stack: FleetStack, tool: str, arguments: dict[str, Any]) -> Any:
    async with http_client(url, "2026-07-28", token=stack.token, verify=stack.verify) as client:
        return await client.call_tool(tool, arguments)


async def test_each_segments_target_is_scanned_through_either_front_and_followed_through_the_other(
    fleet_stack: FleetStack,
) -> None:
    # A generous wait: a freshly started cluster elects its stream and consumer leaders under
    # CI's load (the first job of each segment waited over 20 s in one CI run).
    seg_a = await call(
        fleet_stack.url,
        fleet_stack,
        "nmap_scan",
        {"target": "web.seg-a.lab.internal", "ports": str(LAB_PORT), "wait_seconds": 120},
    )
    seg_b = await call(
        fleet_stack.second_url,
        fleet_stack,
        "nmap_scan",
        {"target": "web.seg-b.lab.internal", "ports": str(LAB_PORT), "wait_seconds": 120},
    )
    for result in (seg_a, seg_b):
        assert not result.is_error, result.structured_content
        body = result.structured_content
        assert body["status"] == "completed"
        assert [(p["port"], p["state"]) for p in body["hosts"][0]["ports"]] == [(LAB_PORT, "open")]
    # Each name was resolved by its own segment, to an address of its own lab network.
    assert seg_a.structured_content["hosts"][0]["address"].startswith("10.77.12.")
    assert seg_b.structured_content["hosts"][0]["address"].startswith("10.77.13.")
    seen = await call(fleet_stack.second_url, fleet_stack, "get_scan", {"scan_id": seg_a.structured_content["scan_id"]})
    assert not seen.is_error
    assert seen.structured_content["status"] == "completed"


async def test_a_target_outside_the_fleet_is_refused_at_the_front(fleet_stack: FleetStack) -> None:
    # Refused by the front's own policy before routing: no segment is asked, nothing is queued.
    refused = await call(fleet_stack.url, fleet_stack, "nmap_scan", {"target": "10.77.15.9", "dry_run": True})
    assert refused.is_error
    assert refused.structured_content["rule"] == "target_out_of_scope"


def record_of(stack: FleetStack, docker_client: docker.DockerClient, scan_id: str) -> dict[str, Any]:
    """The job's record in the fleet's store, through `appliance jobs show` on a front (the
    operator CLI reads the JetStream store on a fleet appliance). A refusal while the cluster
    elects new leaders (`store_unreachable`) is tried again, for up to a minute."""
    front = docker_client.containers.get(stack.container_id("front-1"))
    deadline = time.monotonic() + 60
    while True:
        code, (stdout, stderr) = front.exec_run(["/opt/venv/bin/appliance", "jobs", "show", scan_id], demux=True)
        if code == 0:
            record: dict[str, Any] = json.loads(stdout)
            return record
        problem = (stderr or b"").decode(errors="replace")
        assert any(rule in problem for rule in ("store_unreachable", "store_unwritable", "bus_unavailable")), problem
        assert time.monotonic() < deadline, problem
        time.sleep(1)


async def test_killing_the_appliance_that_runs_a_scan_ends_the_job_once_never_running_forever(
    fleet_stack: FleetStack, docker_client: docker.DockerClient
) -> None:
    slow = {
        "target": "web.seg-a.lab.internal",
        "ports": "8000-8120",
        "extra_args": ["--scan-delay", "200ms", "--max-retries", "0"],
        "wait_seconds": 0,
        "timeout_seconds": 120,
    }
    started = await call(fleet_stack.url, fleet_stack, "nmap_scan", slow)
    assert not started.is_error, started.structured_content
    scan_id = started.structured_content["scan_id"]
    deadline = time.monotonic() + 30
    while (record := record_of(fleet_stack, docker_client, scan_id))["state"] != "running":
        assert time.monotonic() < deadline, f"no seg-a appliance started the job: {record}"
        await asyncio.sleep(0.5)
    runner = record["runner"]
    assert runner in ("seg-a-1", "seg-a-2")
    docker_client.containers.get(fleet_stack.container_id(runner)).kill()  # SIGKILL mid-scan
    survivor = "seg-a-2" if runner == "seg-a-1" else "seg-a-1"
    # Redelivered after ack_wait and run again by the survivor (about 25 s of scan delay), or
    # `interrupted` after ack_wait x max_deliver: either way it ends, once, within the wait.
    ended = await call(fleet_stack.second_url, fleet_stack, "get_scan", {"scan_id": scan_id, "wait_seconds": 110})
    assert ended.structured_content["status"] in ("completed", "interrupted"), ended.structured_content
    final = record_of(fleet_stack, docker_client, scan_id)
    states = [event["state"] for event in final["events"]]
    assert states.count("running") <= 2  # the killed run and at most one more
    assert sum(state in ("completed", "interrupted", "failed", "partial") for state in states) == 1
    if final["state"] == "completed":
        assert final["runner"] == survivor
        assert any(f"taken over from {runner}" in event.get("note", "") for event in final["events"])


async def settled(stack: FleetStack, scan_id: str, seconds: float) -> dict[str, Any]:
    """get_scan through front-2 until the job is finished. While the cluster elects new leaders a
    call may be refused `store_unreachable` (the front says so and to retry): it is retried."""
    deadline = time.monotonic() + seconds
    while True:
        result = await call(stack.second_url, stack, "get_scan", {"scan_id": scan_id, "wait_seconds": 20})
        body: dict[str, Any] = result.structured_content
        if result.is_error:
            assert body["rule"] in ("store_unreachable", "bus_unavailable"), body
        elif body["status"] not in ("queued", "running"):
            return body
        if time.monotonic() >= deadline:
            # The job's own lines first (its segment's and the front's), then the ends of the logs.
            services = ("seg-b-1", "front-2")
            logs = stack.compose("--profile", "fleet", "logs", "--no-color", "--tail", "400", *services).stdout
            own = "\n".join(line for line in logs.splitlines() if scan_id in line)
            raise AssertionError(
                f"{scan_id} still unfinished: {body}\n--- its lines ---\n{own[-8000:]}\n--- logs ---\n{logs[-8000:]}"
            )
        await asyncio.sleep(1)


# Long mode (scripts/test-long): it failed in CI under load while a front's watch made a JetStream
# consumer (fixed: the watch makes none), then passed six runs in a row and failed a seventh (one
# job still `running` at the front 150 s after the node's loss; README "Fleet"); since the
# leader-read fix after it, 18 runs in a row passed (15 on 2026-12-06, 6 of them under CPU load).
# Kept out of CI while that failure is unexplained. Its failure prints the job's own log lines.
@pytest.mark.long
async def test_killing_one_nats_node_loses_no_queued_job_and_none_completes_twice(
    fleet_stack: FleetStack, docker_client: docker.DockerClient
) -> None:
    # seg-b-1 runs at most its policy's concurrency at once: most of these wait in the queue.
    queued = []
    for _ in range(8):
        result = await call(
            fleet_stack.url,
            fleet_stack,
            "nmap_scan",
            {"target": "web.seg-b.lab.internal", "ports": str(LAB_PORT), "wait_seconds": 0},
        )
        assert not result.is_error, result.structured_content
        queued.append(result.structured_content["scan_id"])
    node = docker_client.containers.get(fleet_stack.container_id("nats-2"))
    node.kill()  # SIGKILL: one of three nodes; the buckets and the queue keep three copies
    try:
        ended = [await settled(fleet_stack, scan_id, 150) for scan_id in queued]
        finals = [record_of(fleet_stack, docker_client, scan_id) for scan_id in queued]
    finally:
        node.start()
    assert [body["status"] for body in ended] == ["completed"] * len(queued)
    for final in finals:
        states = [event["state"] for event in final["events"]]
        assert states.count("completed") == 1, final["events"]
        assert final["runner"] == "seg-b-1"


# --- bus security (README "Fleet", bus security) ---------------------------------------------

# Run inside seg-b-1 with its own NATS login (its password and CA secrets; the image has nats-py):
# a job published on its own segment's subject, and a fetch from seg-a's consumer. Prints what
# came back and the server's refusals.
FORGE_AS_SEG_B = r"""
import asyncio, json, ssl
import nats

async def main():
    refusals = []

    async def on_error(exc):
        refusals.append(str(exc))

    password = open("/run/secrets/appliance_nats_password").read().strip()
    tls = ssl.create_default_context(cafile="/run/secrets/appliance_nats_ca")
    nc = await nats.connect(
        "tls://nats-1:4222", user="segment-seg-b", password=password, tls=tls,
        inbox_prefix="_INBOX.segment-seg-b", error_cb=on_error, allow_reconnect=False,
    )
    outcomes = {}
    try:
        await nc.jetstream(timeout=3).publish("jobs.seg-b", b'{"scan_id": "scan_00000000000000000000"}')
        outcomes["publish"] = "stored"
    except Exception as exc:
        outcomes["publish"] = type(exc).__name__
    try:
        await nc.request("$JS.API.CONSUMER.MSG.NEXT.APPLIANCE_JOBS.segment_seg-a", b'{"batch": 1}', timeout=3)
        outcomes["fetch"] = "answered"
    except Exception as exc:
        outcomes["fetch"] = type(exc).__name__
    await nc.flush()
    await asyncio.sleep(0.5)
    await nc.close()
    print(json.dumps({"outcomes": outcomes, "refusals": refusals}))

asyncio.run(main())
"""


def test_a_segments_own_nats_login_can_neither_queue_a_job_nor_fetch_another_segments(
    fleet_stack: FleetStack, docker_client: docker.DockerClient
) -> None:
    seg_b = docker_client.containers.get(fleet_stack.container_id("seg-b-1"))
    code, (stdout, stderr) = seg_b.exec_run(["/opt/venv/bin/python", "-c", FORGE_AS_SEG_B], demux=True)
    assert code == 0, (stderr or b"").decode(errors="replace")
    seen = json.loads(stdout)
    assert seen["outcomes"] == {"publish": "TimeoutError", "fetch": "TimeoutError"}, seen  # no answer: refused
    refusals = " ".join(seen["refusals"])
    assert 'permissions violation for publish to "jobs.seg-b"' in refusals, seen
    assert 'publish to "$js.api.consumer.msg.next.appliance_jobs.segment_seg-a"' in refusals, seen


def test_the_nats_nodes_require_tls_and_passwords_and_route_over_verified_tls(
    fleet_stack: FleetStack, docker_client: docker.DockerClient
) -> None:
    node = docker_client.containers.get(fleet_stack.container_id("nats-1"))

    def monitor(path: str) -> dict[str, Any]:
        code, output = node.exec_run(["/usr/bin/busybox", "wget", "-q", "-O", "-", f"http://127.0.0.1:8222{path}"])
        assert code == 0, output
        body: dict[str, Any] = json.loads(output)
        return body

    varz = monitor("/varz")
    assert (varz["tls_required"], varz["auth_required"]) == (True, True)
    assert (varz["cluster"]["tls_required"], varz["cluster"]["tls_verify"]) == (True, True)
    assert monitor("/routez")["num_routes"] >= 2  # both other nodes, over those routes
