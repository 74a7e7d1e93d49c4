"""The appliance doing its job in a container: real scans of the lab target over stdio
(`docker run -i`) and over HTTP through the compose deployment, the demo service, raw mode.

Every scan targets the lab target: by its exact IP on the test lab network, or as
web.lab.internal on the compose lab network (10.77.0.0/24), which the appliance resolves itself.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import docker
import httpx2
import pytest
from dockerlab import (
    LAB_ALIAS,
    LAB_PORT,
    ComposeStack,
    Lab,
    ServiceSpec,
    http_client,
    open_ports,
    remove_container,
    stdio_client,
    unique_name,
)

from appliance.server import JOB_TOOLS
from appliance.tools import TOOLS

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

COMPOSE_LAB = ipaddress.ip_network("10.77.0.0/24")
# The lab target's site (lab/site): what gobuster's bundled `common` list must find there.
LAB_PATHS = {"/admin", "/login", "/robots.txt"}
# The demo's connect scan takes seconds; the margin covers a version scan (-sV), which takes
# about 90 s against the busybox lab target (nmap has no match for it and waits out each probe).
DEMO_TIMEOUT_SECONDS = 300


def findings(result: Any) -> list[dict[str, Any]]:
    assert not result.is_error, result.content
    found: list[dict[str, Any]] = result.structured_content["findings"]
    return found


async def test_stdio_scans_lab_target_by_ip(lab: Lab, services: dict[str, ServiceSpec]) -> None:
    name = unique_name("stdio")
    try:
        async with stdio_client(services["appliance"], lab, name) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            nmap = await client.call_tool("nmap_scan", {"target": lab.target_ip, "ports": f"22,{LAB_PORT}"})
            gobuster = await client.call_tool(
                "gobuster_scan", {"mode": "dir", "target": f"http://{lab.target_ip}:{LAB_PORT}/", "wordlist": "common"}
            )
    finally:
        remove_container(name)
    assert tools == set(TOOLS) | set(JOB_TOOLS)  # three scanners, four job tools
    assert not nmap.is_error, nmap.content
    assert nmap.structured_content is not None
    assert nmap.structured_content["scanned_address"] == lab.target_ip
    assert open_ports(nmap.structured_content) == {LAB_PORT}
    assert {f["value"] for f in findings(gobuster)} >= LAB_PATHS


@pytest.mark.parametrize("tool", ["nmap_syn", "masscan"])
async def test_raw_mode_scans_with_net_raw_only(lab: Lab, services: dict[str, ServiceSpec], tool: str) -> None:
    """compose.yaml's appliance-raw settings (setpriv, NET_RAW alone) over stdio."""
    name = unique_name(f"raw-{tool}")
    try:
        async with stdio_client(services["appliance-raw"], lab, name) as client:
            if tool == "nmap_syn":
                result = await client.call_tool(
                    "nmap_scan", {"target": lab.target_ip, "ports": str(LAB_PORT), "scan_type": "syn"}
                )
            else:
                result = await client.call_tool("masscan_scan", {"target": lab.target_ip, "ports": str(LAB_PORT)})
    finally:
        remove_container(name)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    if tool == "nmap_syn":
        assert "-sS" in result.structured_content["argv"]
        assert open_ports(result.structured_content) == {LAB_PORT}
    else:
        found = {(f["ip"], f["port"], f["status"]) for f in findings(result)}
        assert found == {(lab.target_ip, LAB_PORT, "open")}


async def test_http_scan_through_compose(compose_stack: ComposeStack) -> None:
    async with http_client(compose_stack.url, compose_stack.token, verify=compose_stack.verify) as client:
        result = await client.call_tool("nmap_scan", {"target": LAB_ALIAS, "ports": str(LAB_PORT)})
    assert not result.is_error, result.content
    assert result.structured_content is not None
    assert ipaddress.ip_address(result.structured_content["scanned_address"]) in COMPOSE_LAB
    assert open_ports(result.structured_content) == {LAB_PORT}


async def test_http_without_valid_token_gets_401(compose_stack: ComposeStack) -> None:
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    async with httpx2.AsyncClient(verify=compose_stack.verify) as http:
        missing = await http.post(compose_stack.url, json=ping)
        wrong = await http.post(compose_stack.url, json=ping, headers={"Authorization": "Bearer not-the-token"})
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_compose_serves_both_ports_over_tls_only(compose_stack: ComposeStack) -> None:
    async with httpx2.AsyncClient() as http:
        for port in (compose_stack.http_port, compose_stack.health_port):
            # Cleartext to a TLS port: the connection closes without an HTTP answer.
            with pytest.raises(httpx2.HTTPError):
                await http.get(f"http://127.0.0.1:{port}/livez")
    async with httpx2.AsyncClient() as http:
        # And a client that does not trust the deployment's CA refuses the handshake.
        with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await http.get(f"{compose_stack.health_url}/livez")


async def test_sidecar_published_on_loopback(compose_stack: ComposeStack) -> None:
    base = compose_stack.health_url
    guard = {"Authorization": f"Bearer {compose_stack.health_token}"}
    async with httpx2.AsyncClient(verify=compose_stack.verify) as http:
        live = await http.get(f"{base}/livez")
        ready = await http.get(f"{base}/readyz")
        health = await http.get(f"{base}/healthz", headers=guard)
        metrics = await http.get(f"{base}/metrics", headers=guard)
        unguarded = await http.get(f"{base}/metrics")
    assert (live.status_code, ready.status_code, metrics.status_code) == (200, 200, 200)
    assert unguarded.status_code == 401  # compose sets the health token
    report = health.json()
    # masscan is unavailable by design in connect mode: that alone no longer degrades health.
    assert report["checks"]["tools_unexpectedly_unavailable"] == {}, report
    overloaded = any(
        report["checks"][r]["percent"] > report["checks"][r]["threshold"] for r in ("cpu", "memory", "disk")
    )
    assert report["status"] == "healthy" or (report["status"] == "degraded" and overloaded), report
    assert report["mode"] == "connect"
    assert "privileges" in report["checks"]
    assert "# TYPE" in metrics.text


def lab_address(compose_stack: ComposeStack, docker_client: docker.DockerClient) -> str:
    """The lab target's address on the stack's lab network (compose's APPLIANCE_LAB_SUBNET)."""
    web = docker_client.containers.get(compose_stack.container_id("web")).attrs
    return str(web["NetworkSettings"]["Networks"][f"{compose_stack.project}_lab"]["IPAddress"])


def test_demo_service_scans_lab_target(
    compose_stack: ComposeStack, docker_client: docker.DockerClient, record: Any
) -> None:
    up = compose_stack.compose("--profile", "demo", "up", "--detach", "demo")
    assert up.returncode == 0, up.stderr
    waited = compose_stack.compose("--profile", "demo", "wait", "demo", timeout=DEMO_TIMEOUT_SECONDS)
    logs = compose_stack.compose(
        "--profile", "demo", "--ansi", "never", "logs", "--no-color", "--no-log-prefix", "demo"
    ).stdout
    record(f"demo output: {len(logs.splitlines())} lines")
    assert waited.returncode == 0, f"demo exited {waited.returncode}:\n{logs}"
    # The summary names the lab target's address on the compose lab network and its open port.
    assert lab_address(compose_stack, docker_client) in logs and str(LAB_PORT) in logs and "open" in logs, logs


@pytest.fixture
def raw_profile_url(compose_stack: ComposeStack) -> str:
    """compose.yaml's `raw` profile (appliance-raw) up and healthy beside the stack's appliance."""
    up = compose_stack.compose("--profile", "raw", "up", "--detach", "--wait", "--wait-timeout", "150", "appliance-raw")
    assert up.returncode == 0, up.stderr + compose_stack.compose("logs", "--no-color", "appliance-raw").stdout
    return f"https://localhost:{compose_stack.env['RAW_APPLIANCE_PUBLISH_PORT']}/mcp"


async def test_raw_profile_syn_scan_over_http(compose_stack: ComposeStack, raw_profile_url: str) -> None:
    async with http_client(raw_profile_url, compose_stack.token, verify=compose_stack.verify) as client:
        result = await client.call_tool("nmap_scan", {"target": LAB_ALIAS, "ports": str(LAB_PORT), "scan_type": "syn"})
    assert not result.is_error, result.content
    assert open_ports(result.structured_content) == {LAB_PORT}


async def test_raw_profile_masscan_over_http(
    compose_stack: ComposeStack, raw_profile_url: str, docker_client: docker.DockerClient
) -> None:
    """masscan from a container whose default route is the front network's, not the lab's."""
    web_ip = lab_address(compose_stack, docker_client)
    async with http_client(raw_profile_url, compose_stack.token, verify=compose_stack.verify) as client:
        result = await client.call_tool("masscan_scan", {"target": web_ip, "ports": str(LAB_PORT)})
    found = {(f["ip"], f["port"], f["status"]) for f in findings(result)}
    assert found == {(web_ip, LAB_PORT, "open")}
