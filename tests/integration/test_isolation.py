"""What an appliance on an internal network can reach, and what it refuses before any scanner
starts: its network's gateway (the host), its own address, and anything outside the scope.

No packet goes to a refused target: each target is first sent as a dry run, and only a target
the dry run refused is sent again for real, to show that the real call is refused as well, that
the audit trail records no scanner start and that no scanner process runs. Every target is an
address of this test lab: the out-of-scope one is a bystander container the test starts beside
the lab target, outside the policy's scope (the lab target's /32).
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from dockerlab import (
    IMAGE,
    LAB_IMAGE,
    Lab,
    ServiceSpec,
    audit_lines,
    container_ip,
    container_logs,
    remove_container,
    stdio_client,
    unique_name,
)
from testcontainers.core.container import DockerContainer

pytestmark = pytest.mark.integration

RUN_TIMEOUT_SECONDS = 60
ROUTE_PROBE = "print(open('/proc/net/route').read())"
SCANNERS = {"nmap", "masscan", "gobuster"}


def ipv4_from_route_hex(text: str) -> ipaddress.IPv4Address:
    """/proc/net/route writes addresses as little-endian hex."""
    return ipaddress.IPv4Address(int(text, 16).to_bytes(4, "little"))


def test_internal_network_has_no_route_off_its_subnet(
    lab: Lab, services: dict[str, ServiceSpec], docker_client: docker.DockerClient
) -> None:
    """The appliance's routing table on the internal lab network, read with the image's Python.

    Engine 20.10 still gives a container on an internal network a default route, via the
    network's gateway: the host's own address on the lab bridge, where Docker's isolation rules
    drop everything that would be forwarded off the subnet. So the table holds the lab subnet
    and at most that gateway; the appliance refuses the gateway itself (next test).
    """
    assert docker_client.networks.get(lab.network).attrs["Internal"] is True
    name = unique_name("routes")
    run = ["docker", "run", "--rm", "--name", name, "--network", lab.network, *services["appliance"].run_args()]
    run += ["--entrypoint", "/opt/venv/bin/python", IMAGE, "-c", ROUTE_PROBE]
    done = subprocess.run(run, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS, check=False)
    assert done.returncode == 0, done.stderr
    subnet = ipaddress.ip_network(lab.subnet)
    routes = [line.split() for line in done.stdout.splitlines()[1:] if line.strip()]
    assert routes, done.stdout
    for fields in routes:
        destination = ipaddress.ip_network(f"{ipv4_from_route_hex(fields[1])}/{ipv4_from_route_hex(fields[7])}")
        gateway = ipv4_from_route_hex(fields[2])
        assert destination == subnet or destination.prefixlen == 0, fields
        assert gateway in (ipaddress.IPv4Address(0), ipaddress.IPv4Address(lab.gateway)), fields


def rule_of(result: Any) -> str:
    return str(result.structured_content["rule"]) if result.is_error else "ALLOWED"


@pytest.fixture
def bystander(lab: Lab, services: dict[str, ServiceSpec]) -> Iterator[str]:
    """A second lab-target container on the lab network, outside the policy's scope; its address."""
    container = DockerContainer(LAB_IMAGE).with_kwargs(network=lab.network, **services["web"].create_kwargs())
    container.start()
    try:
        yield container_ip(container.get_wrapped_container().name, lab.network)
    finally:
        container.stop()


def scanner_commands(name: str) -> set[str]:
    """The scanner processes running in container `name` (docker top: the host's view)."""
    done = subprocess.run(
        # The engine needs the pid column to map the host's ps output to the container.
        ["docker", "top", name, "-eo", "pid,comm"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=True,
    )
    return {line.split()[-1] for line in done.stdout.splitlines()[1:] if line.strip()} & SCANNERS


@pytest.mark.anyio
async def test_gateway_own_address_and_out_of_scope_refused_before_any_scan(
    lab: Lab, services: dict[str, ServiceSpec], bystander: str
) -> None:
    name = unique_name("refusals")
    verdicts: dict[str, list[Any]] = {}
    try:
        async with stdio_client(services["appliance"], lab, name) as client:
            targets = {"gateway": lab.gateway, "own_address": container_ip(name, lab.network), "bystander": bystander}
            for label, target in targets.items():
                arguments = {"target": target, "ports": "80"}
                dry = await client.call_tool("nmap_scan", {**arguments, "dry_run": True})
                verdicts[label] = [dry]
                if dry.is_error:  # refused without running: only then is the real call safe to send
                    verdicts[label].append(await client.call_tool("nmap_scan", arguments))
            running = scanner_commands(name)
        logs = container_logs(name)
    finally:
        remove_container(name)
    assert running == set()
    rules = {
        label: [r.structured_content["rule"] if r.is_error else "ALLOWED" for r in rs] for label, rs in verdicts.items()
    }
    assert rules == {
        "gateway": ["target_denied_gateway"] * 2,
        "own_address": ["target_denied_own_address"] * 2,
        "bystander": ["target_out_of_scope"] * 2,
    }
    records = audit_lines(logs)
    assert [r for r in records if r.get("event") == "start"] == []
    assert sorted(r["rule"] for r in records if r["verdict"] == "refused") == sorted(
        rule for rs in rules.values() for rule in rs
    )
