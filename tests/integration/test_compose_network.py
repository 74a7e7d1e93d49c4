"""compose.yaml's listeners: the MCP port and the sidecar answer on the `front` network only.

A scanned lab host must not reach either (it could otherwise call tools with a stolen token or
read /metrics). The "lab host" is the compose deployment's own lab target (busybox wget), and
it connects only to the appliance container of this deployment, addressed exactly.
"""

from __future__ import annotations

from typing import Any

import docker
import pytest
from dockerlab import ComposeStack

from bench.compose import compose_env, compose_services

pytestmark = pytest.mark.integration

PORTS = (8080, 9090)  # MCP, sidecar (inside the container)
# busybox's own `wget -T` crashes (SIGSEGV, busybox-static 1.35 here); its `timeout` applet works,
# and a packet the lab drops would otherwise hold wget for minutes.
WGET_TIMEOUT_SECONDS = "4"
BUSYBOX = "/usr/bin/busybox"


def _addresses(compose_stack: ComposeStack, docker_client: docker.DockerClient, service: str) -> dict[str, str]:
    attrs = docker_client.containers.get(compose_stack.container_id(service)).attrs
    networks = attrs["NetworkSettings"]["Networks"]
    return {name: networks[f"{compose_stack.project}_{name}"]["IPAddress"] for name in ("front", "lab")}


def _wget(container: Any, url: str) -> tuple[int, str]:
    code, output = container.exec_run(
        [BUSYBOX, "timeout", WGET_TIMEOUT_SECONDS, BUSYBOX, "wget", "-O", "/dev/null", url]
    )
    return int(code), output.decode(errors="replace")


def test_lab_host_cannot_reach_mcp_port_or_sidecar(
    compose_stack: ComposeStack, docker_client: docker.DockerClient
) -> None:
    web = docker_client.containers.get(compose_stack.container_id("web"))
    appliance = _addresses(compose_stack, docker_client, "appliance")
    # Control: the lab host's wget works (its own site).
    assert _wget(web, "http://127.0.0.1:8080/")[0] == 0
    for port in PORTS:
        # Its lab address: reached, but nothing listens there.
        code, output = _wget(web, f"http://{appliance['lab']}:{port}/livez")
        assert code != 0 and "refused" in output.lower(), (port, output)
        # Its front address: the internal lab network drops the packets (no answer at all).
        code, output = _wget(web, f"http://{appliance['front']}:{port}/livez")
        assert code != 0 and "saved" not in output, (port, output)


def test_listeners_bind_the_fixed_front_address() -> None:
    services = compose_services(compose_env(APPLIANCE_TOKEN_FILE="/dev/null"))
    for name in ("appliance", "appliance-raw"):
        service = services[name]
        front = service["networks"]["front"]["ipv4_address"]
        assert service["environment"]["APPLIANCE_HOST"] == front
        assert service["environment"]["APPLIANCE_HEALTH_HOST"] == front


def test_front_subnet_and_address_are_configurable() -> None:
    env = compose_env(
        APPLIANCE_TOKEN_FILE="/dev/null",
        APPLIANCE_FRONT_SUBNET="10.99.3.0/28",
        APPLIANCE_FRONT_ADDRESS="10.99.3.4",
        RAW_APPLIANCE_FRONT_ADDRESS="10.99.3.5",
    )
    services = compose_services(env)
    assert services["appliance"]["networks"]["front"]["ipv4_address"] == "10.99.3.4"
    assert services["appliance"]["environment"]["APPLIANCE_HOST"] == "10.99.3.4"
    assert services["appliance-raw"]["environment"]["APPLIANCE_HEALTH_HOST"] == "10.99.3.5"
