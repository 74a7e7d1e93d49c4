"""Helpers for the container tests: the test lab's facts and policy, containers started the way
compose.yaml starts them, MCP clients for containers, and small waits.

The appliance is started the way compose.yaml starts it: bench/compose.py (the translator the
benchmark uses too) reads the settings from `docker compose config`, so a change to compose.yaml
is what gets tested.

Network safety: every scan in these tests goes to the lab target container the fixtures start,
on an internal network they create, by its exact IP or its alias. Nothing else is ever scanned.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from support import wait_until
from testcontainers.core.container import DockerContainer

from appliance.compat import mcp_http_client
from bench.compose import COMPOSE_FILE, REPO, ServiceSpec

IMAGE = "mcp-scanner-appliance:latest"
LAB_IMAGE = "mcp-scanner-lab-target:latest"
APP_UID = 65532
CAP_NET_RAW = 1 << 13
LAB_ALIAS = "web.lab.internal"
LAB_PORT = 8080
# Where compose.yaml mounts the policy folder and the token; the tests mount theirs there too.
CONTAINER_POLICY_DIR = "/etc/appliance/policies"
CONTAINER_TOKEN_PATH = "/run/secrets/appliance_auth_token"
# `up --wait` waits for the appliance's and the lab target's health checks.
COMPOSE_UP_TIMEOUT_SECONDS = 180
# Healthy means the image's health check passed once: the first check runs one interval
# (compose: 10 s for the appliance, 5 s for the lab target) after start.
HEALTHY_TIMEOUT_SECONDS = 90


@dataclass(frozen=True)
class Lab:
    """The test lab: an internal network and the lab target on it."""

    network: str
    subnet: str
    gateway: str
    target_ip: str
    policy_dir: Path
    token_file: Path
    token: str


def write_pinned_policy(folder: Path, filename: str, target_ip: str) -> Path:
    """compose-scope.yaml with the allow list pinned to one address (the lab target's /32).

    No other address is ever in scope, so whatever else the lab network holds (the gateway,
    the appliance itself, a bystander a test starts) is refused as out of scope or denied. The
    gateway is left to the appliance's own default-gateway rule (the isolation tests check that
    rule); compose.yaml's policy names its gateway explicitly.
    """
    policy = yaml.safe_load((REPO / "policies" / "compose-scope.yaml").read_text())
    policy["scope"]["allow_networks"] = [f"{ipaddress.ip_address(target_ip)}/32"]
    policy["scope"]["deny_networks"] = []
    folder.chmod(0o755)  # a bind mount: the container's UID 65532 reads it
    path = folder / filename
    path.write_text(yaml.safe_dump(policy))
    path.chmod(0o644)
    return path


def free_port() -> int:
    """A loopback port nothing listens on (bound and released: a small race we accept)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def docker_run_args(
    spec: ServiceSpec,
    lab: Lab,
    name: str,
    env: Mapping[str, str],
    *extra: str,
    network: str | None = None,
) -> list[str]:
    """`docker run -i` arguments for the appliance as compose runs it, on the test lab only
    (or on `network`, e.g. "none"); `extra` flags go last, before the image."""
    args = ["run", "-i", "--name", name, "--network", network or lab.network, *spec.run_args()]
    args += ["--volume", f"{lab.policy_dir}:{CONTAINER_POLICY_DIR}:ro"]
    args += ["--volume", f"{lab.token_file}:{CONTAINER_TOKEN_PATH}:ro"]
    for key, value in {**spec.environment, **env}.items():
        args += ["--env", f"{key}={value}"]
    return [*args, *extra, IMAGE, *spec.run_command()]


def remove_container(name: str) -> None:
    """Force-remove a container started with `docker run --name` (gone already is fine)."""
    subprocess.run(["docker", "rm", "--force", name], capture_output=True, timeout=60, check=False)


def container_logs(name: str) -> str:
    """A container's stderr: JSON logs and the audit trail (stdout is the stdio wire)."""
    done = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=60, check=False)
    return done.stderr


def container_ip(name: str, network: str) -> str:
    done = subprocess.run(
        ["docker", "inspect", "--format", f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}', name],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def listening(address: str, port: int) -> bool:
    """True when something accepts TCP connections on address:port (one connect attempt)."""
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((address, port)) == 0


def unique_name(kind: str) -> str:
    return f"mcp-it-{kind}-{uuid.uuid4().hex[:8]}"


def start_appliance(
    spec: ServiceSpec,
    lab: Lab,
    *,
    env: Mapping[str, str] | None = None,
    mounts: Mapping[Path, tuple[str, str]] | None = None,
) -> DockerContainer:
    """The appliance with compose.yaml's settings for `spec`, on the test lab network only;
    `env` added to its environment, `mounts` host path -> (container path, "ro" | "rw")."""
    container = DockerContainer(IMAGE)
    for key, value in {**spec.environment, **(env or {})}.items():
        container.with_env(key, value)
    container.with_volume_mapping(lab.policy_dir, CONTAINER_POLICY_DIR, "ro")
    container.with_volume_mapping(lab.token_file, CONTAINER_TOKEN_PATH, "ro")
    for source, (target, mode) in (mounts or {}).items():
        container.with_volume_mapping(source, target, mode)
    # testcontainers' with_tmpfs_mount() takes a size only; the mount options go in verbatim.
    container.tmpfs.update(spec.tmpfs)
    if spec.command:
        container.with_command(list(spec.command))
    container.with_kwargs(network=lab.network, **spec.create_kwargs())
    return container.start()


def stdio_client(spec: ServiceSpec, lab: Lab, name: str, **env: str) -> Client:
    """An MCP client that starts the appliance with `docker run -i` and talks to it over stdio."""
    run = docker_run_args(spec, lab, name, {"APPLIANCE_TRANSPORT": "stdio", **env})
    # The whole environment: the docker CLI needs DOCKER_HOST and friends when they are set.
    return Client(StdioServerParameters(command="docker", args=run, env=dict(os.environ)))


@contextlib.asynccontextmanager
async def http_client(
    url: str, token: str, host_header: str | None = None, verify: ssl.SSLContext | None = None
) -> AsyncIterator[Client]:
    """An MCP client over streamable HTTP with the bearer token (and a Host header, if given;
    `verify`: the trust anchors of an https URL)."""
    headers = {"Authorization": f"Bearer {token}"}
    if host_header is not None:
        headers["Host"] = host_header
    # The transport leaves a client it was handed open; closing it is ours to do.
    async with (
        mcp_http_client(headers=headers, verify=verify) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


def audit_lines(logs: str) -> list[dict[str, Any]]:
    """The JSON lines of a container's stderr that are audit records (they carry a verdict)."""
    records = []
    for line in logs.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if isinstance(record, dict) and "verdict" in record:
                records.append(record)
    return records


def open_ports(structured: Mapping[str, Any] | None) -> set[int]:
    """The open ports of every host in an nmap_scan result."""
    assert structured is not None
    return {p["port"] for host in structured["hosts"] for p in host["ports"] if p["state"] == "open"}


@dataclass(frozen=True)
class ComposeStack:
    """A running deployment of compose.yaml under its own project name."""

    project: str
    env: dict[str, str]
    http_port: int
    health_port: int
    token: str
    # compose serves both ports over TLS with scripts/create-cert's files; the CA signed them.
    ca_file: Path
    health_token: str
    # The policies folder the deployment mounts (a copy the tests may edit).
    policy_dir: Path

    @property
    def url(self) -> str:
        # A name the certificate carries (the published port is on the host's loopback).
        return f"https://localhost:{self.http_port}/mcp"

    @property
    def health_url(self) -> str:
        return f"https://localhost:{self.health_port}"

    @property
    def verify(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def compose(self, *args: str, timeout: float = COMPOSE_UP_TIMEOUT_SECONDS) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE_FILE), "-p", self.project, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def container_id(self, service: str) -> str:
        done = self.compose("ps", "--all", "--quiet", service)
        assert done.returncode == 0 and done.stdout.strip(), done.stderr
        return done.stdout.split()[0]


@dataclass(frozen=True)
class FleetStack(ComposeStack):
    """compose.yaml's profile `fleet` under its own project: `url` is front-1's, `second_url` front-2's."""

    second_http_port: int = 0

    @property
    def second_url(self) -> str:
        return f"https://localhost:{self.second_http_port}/mcp"


def container_health(container: DockerContainer) -> str:
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    state = wrapped.attrs["State"]
    assert state["Status"] == "running", f"container {state['Status']}: {wrapped.logs().decode()[-4000:]}"
    return str(state.get("Health", {}).get("Status", "none"))


def wait_healthy(container: DockerContainer, timeout: float = HEALTHY_TIMEOUT_SECONDS) -> float:
    """Wait for the health status 'healthy'; returns how long it took."""
    started = time.monotonic()
    wait_until(lambda: container_health(container) == "healthy", timeout=timeout, interval=0.5)
    return time.monotonic() - started


# What compose.yaml lets through its DNS-rebinding checks (APPLIANCE_ALLOWED_HOSTS): a test that
# reaches an appliance by its lab address sends the service name as Host.
APPLIANCE_HOST_HEADER = "appliance"
CONTAINER_MCP_PORT = 8080
CONTAINER_HEALTH_PORT = 9090


@dataclass(frozen=True)
class LabAppliance:
    """An appliance container on the test lab network, reached from this host by its lab address."""

    address: str

    @property
    def url(self) -> str:
        return f"http://{self.address}:{CONTAINER_MCP_PORT}/mcp"

    @property
    def host_header(self) -> str:
        return f"{APPLIANCE_HOST_HEADER}:{CONTAINER_MCP_PORT}"

    def sidecar(self, path: str) -> tuple[int, dict[str, Any]]:
        """GET /healthz, /readyz, ... on its sidecar: (status, JSON body)."""
        return sidecar_at(self.address, CONTAINER_HEALTH_PORT, path)


def lab_appliance(name: str, lab: Lab, *, mcp: bool = True) -> LabAppliance:
    """The appliance container `name` by its lab address, once its sidecar (and, unless `mcp` is
    False for a stdio server, its MCP port) accepts connections."""
    address = container_ip(name, lab.network)
    ports = (CONTAINER_HEALTH_PORT, CONTAINER_MCP_PORT) if mcp else (CONTAINER_HEALTH_PORT,)
    wait_until(
        lambda: all(listening(address, port) for port in ports),
        timeout=HEALTHY_TIMEOUT_SECONDS,
        interval=0.2,
        what=f"the appliance's listeners on {address}",
    )
    return LabAppliance(address)


def sidecar_at(address: str, port: int, path: str) -> tuple[int, dict[str, Any]]:
    """GET a sidecar endpoint with the Host header compose.yaml allows: (status, JSON body)."""
    url = f"http://{address}:{port}{path}"
    request = urllib.request.Request(url, headers={"Host": f"{APPLIANCE_HOST_HEADER}:{port}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def _lab_processes(container_id: str) -> list[tuple[int, str]]:
    done = subprocess.run(
        ["docker", "exec", container_id, "/usr/bin/busybox", "ps", "-o", "pid,args"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = []
    for line in done.stdout.splitlines()[1:]:
        pid, _, args = line.strip().partition(" ")
        rows.append((int(pid), args.strip()))
    return rows


@contextlib.contextmanager
def lab_listener(container_id: str, port: int) -> Iterator[None]:
    """A second web server inside a lab target container (its busybox httpd on `port`), for as
    long as the block runs: the lab target's open ports change and nothing else does."""
    command = ["/usr/bin/busybox", "httpd", "-f", "-p", str(port), "-h", "/srv/www"]
    subprocess.run(["docker", "exec", "--detach", container_id, *command], timeout=60, check=True)
    wanted = " ".join(command)

    def pids() -> list[int]:
        return [pid for pid, args in _lab_processes(container_id) if args == wanted]

    try:
        wait_until(pids, timeout=30, interval=0.2, what=f"httpd on port {port} in {container_id[:12]}")
        yield
    finally:
        for pid in pids():
            subprocess.run(
                ["docker", "exec", container_id, "/usr/bin/busybox", "kill", str(pid)], timeout=60, check=False
            )
        wait_until(lambda: not pids(), timeout=30, interval=0.2, what=f"httpd on port {port} gone")
