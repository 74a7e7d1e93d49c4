"""Session fixtures for the container tests: the images, the test lab, compose.yaml's settings
and a compose deployment.

The lab is an `internal` Docker network this session creates (no route off its subnet) with
one lab target container on it; the appliance's policy in these tests allows exactly that
network's subnet. Ryuk cannot be pulled here (TESTCONTAINERS_RYUK_DISABLED=true), so every
container, network and compose project is removed in `finally` blocks, and what a killed session
left is removed by the next (support/leftovers.py).
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from dockerlab import (
    IMAGE,
    LAB_ALIAS,
    LAB_IMAGE,
    REPO,
    ComposeStack,
    FleetStack,
    Lab,
    free_port,
    wait_healthy,
    write_pinned_policy,
)
from support.bus_security import create_nats_secrets
from support.certs import Certs, create_certs
from support.leftovers import SessionBusy, reap, session_lock
from support.waiting import wait_until
from testcontainers.core.network import Network

from appliance.testing import LabTargetContainer
from bench.compose import ServiceSpec, compose_env, compose_services

# A first build (base image, wheels, both images) takes a few minutes here; a rebuild less.
BUILD_TIMEOUT_SECONDS = 1800
COMPOSE_DOWN_TIMEOUT_SECONDS = 120
# The compose lab subnet (compose.yaml): one deployment of the file at a time can hold it.
COMPOSE_LAB_SUBNET = "10.77.0.0/24"
# This run's bearer token: 16+ URL-safe characters, as the appliance requires.
TEST_TOKEN = "integration-" + uuid.uuid4().hex
# The sidecar's token for /healthz and /metrics in the compose deployment (Prometheus sends it).
TEST_HEALTH_TOKEN = "integration-health-" + uuid.uuid4().hex

MEASUREMENTS: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MEASUREMENTS:
        terminalreporter.section("container measurements")
        for line in MEASUREMENTS:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def record() -> Callable[[str], None]:
    """Add a line to the 'container measurements' section at the end of the run."""
    return MEASUREMENTS.append


@pytest.fixture(scope="session")
def docker_client(record: Any) -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(
            f"no Docker engine answers ({exc}): start one (scripts/setup-docker) or deselect -m 'not integration'"
        )
    try:
        # One session at a time (they share compose.yaml's fixed subnets); what a killed one left
        # is removed first, else its networks would fail this session's compose fixtures.
        with session_lock():
            for line in reap(client):
                record(f"removed a killed session's {line}")
            yield client
    except SessionBusy as exc:
        pytest.fail(str(exc))
    finally:
        client.close()


@pytest.fixture(scope="session")
def images(docker_client: docker.DockerClient, record: Any) -> tuple[str, str]:
    """Both images, built with scripts/build-image when one is missing. An image that exists is
    used as it is: rebuild after changing the package (scripts/build-image)."""
    missing = []
    for image in (IMAGE, LAB_IMAGE):
        try:
            docker_client.images.get(image)
        except docker.errors.ImageNotFound:
            missing.append(image)
    if missing:
        started = time.monotonic()
        subprocess.run([str(REPO / "scripts" / "build-image")], check=True, timeout=BUILD_TIMEOUT_SECONDS)
        record(f"scripts/build-image (missing: {', '.join(missing)}): {time.monotonic() - started:.0f} s")
    return IMAGE, LAB_IMAGE


@pytest.fixture(scope="session")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A token file, a health token and an audit key as scripts/create-token makes them (0444 in a
    0700 folder), the TLS files of scripts/create-cert and the fleet bus's of scripts/create-nats-secrets,
    for the tests only."""
    folder = tmp_path_factory.mktemp("secrets")
    folder.chmod(0o700)
    token_file = folder / "appliance_auth_token"
    token_file.write_text(TEST_TOKEN)
    token_file.chmod(0o444)
    health_token = folder / "appliance_health_token"
    health_token.write_text(TEST_HEALTH_TOKEN)
    health_token.chmod(0o444)
    create_certs(folder)
    create_nats_secrets(folder)  # profile `fleet`: the bus's certificate, users and passwords
    key_file = folder / "appliance_audit_key"
    key_file.write_text(secrets.token_urlsafe(32))
    key_file.chmod(0o444)
    # The fleet fronts' shared request-state key (approval on fronts), made like scripts/up makes it.
    state_key = folder / "appliance_request_state_key"
    state_key.write_text(secrets.token_urlsafe(32))
    state_key.chmod(0o444)
    return folder


def secrets_env(secrets_dir: Path) -> dict[str, str]:
    """compose.yaml's secret files, moved to the test's folder."""
    certs = Certs(secrets_dir)
    return {
        "APPLIANCE_TOKEN_FILE": str(secrets_dir / "appliance_auth_token"),
        "APPLIANCE_HEALTH_TOKEN_FILE": str(secrets_dir / "appliance_health_token"),
        "APPLIANCE_AUDIT_KEY_HOST_FILE": str(secrets_dir / "appliance_audit_key"),
        "APPLIANCE_REQUEST_STATE_KEY_HOST_FILE": str(secrets_dir / "appliance_request_state_key"),
        "APPLIANCE_TLS_CERT": str(certs.cert),
        "APPLIANCE_TLS_KEY": str(certs.key),
        "APPLIANCE_TLS_CA": str(certs.ca),
        "NATS_SECRETS_DIR": str(secrets_dir),
    }


@pytest.fixture(scope="session")
def services(secrets_dir: Path) -> dict[str, ServiceSpec]:
    """compose.yaml's services as ServiceSpecs (appliance, appliance-raw, web, demo)."""
    env = compose_env(**secrets_env(secrets_dir))
    return {name: ServiceSpec.from_compose(name, data) for name, data in compose_services(env).items()}


@pytest.fixture(scope="session")
def lab(
    docker_client: docker.DockerClient,
    images: tuple[str, str],
    services: dict[str, ServiceSpec],
    secrets_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    record: Any,
) -> Iterator[Lab]:
    """An internal network with the lab target on it (alias web.lab.internal), as compose runs it."""
    web_spec = services["web"]
    network = Network(docker_network_kw={"internal": True})
    network.create()
    try:
        # The users' module (appliance.testing) with compose.yaml's own settings for `web` over its
        # defaults: compose stays what is tested, the module starts it and waits for its server.
        target = LabTargetContainer(LAB_IMAGE, network=network, alias=LAB_ALIAS, **web_spec.create_kwargs())
        target.start()
        try:
            record(f"lab target healthy after {wait_healthy(target):.1f} s")
            ipam = docker_client.networks.get(network.name).attrs["IPAM"]["Config"][0]
            wrapped = target.get_wrapped_container()
            wrapped.reload()
            target_ip = wrapped.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
            policy_dir = tmp_path_factory.mktemp("policies")
            policy_name = Path(services["appliance"].environment["APPLIANCE_POLICY_PATH"]).name
            write_pinned_policy(policy_dir, policy_name, target_ip)
            yield Lab(
                network=network.name,
                subnet=ipam["Subnet"],
                gateway=ipam["Gateway"],
                target_ip=target_ip,
                policy_dir=policy_dir,
                token_file=secrets_dir / "appliance_auth_token",
                token=TEST_TOKEN,
            )
        finally:
            target.stop()
    finally:
        network.remove()


def lab_subnet_overlaps(subnet: str) -> list[str]:
    """The host's routes that overlap `subnet`, as scripts/lab_subnet_check.py (scripts/up) sees them."""
    routes = subprocess.run(
        ["ip", "-j", "-4", "route", "show"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "lab_subnet_check.py"), subnet],
        input=routes,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.stdout.splitlines()


def compose_lab_subnet_in_use(docker_client: docker.DockerClient) -> str | None:
    for network in docker_client.networks.list():
        for config in (network.attrs.get("IPAM") or {}).get("Config") or []:
            if config.get("Subnet") == COMPOSE_LAB_SUBNET:
                return str(network.name)
    return None


@pytest.fixture(scope="session")
def compose_stack(
    docker_client: docker.DockerClient,
    images: tuple[str, str],
    secrets_dir: Path,
    record: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ComposeStack]:
    """compose.yaml's appliance and web services, up and healthy, on free loopback ports."""
    holder = compose_lab_subnet_in_use(docker_client)
    if holder is not None:
        pytest.fail(f"network {holder} already holds {COMPOSE_LAB_SUBNET}: stop that deployment first (scripts/down)")
    # The check scripts/up runs: a host route over the lab subnet would put real hosts in scope.
    overlaps = lab_subnet_overlaps(COMPOSE_LAB_SUBNET)
    if overlaps:
        pytest.fail(f"{COMPOSE_LAB_SUBNET} overlaps routes of this host: {overlaps}; the compose lab cannot use it")
    http_port, health_port = free_port(), free_port()
    # A copy of the repository's policies: tests edit it (hot reload), never the repository's.
    policy_dir = tmp_path_factory.mktemp("compose-policies")
    shutil.copytree(REPO / "policies", policy_dir, dirs_exist_ok=True)
    policy_dir.chmod(0o755)  # the appliance (UID 65532) reads the mounted folder
    stack = ComposeStack(
        project=f"mcp-it-{uuid.uuid4().hex[:8]}",
        env=compose_env(
            **secrets_env(secrets_dir),
            APPLIANCE_POLICY_DIR=str(policy_dir),
            PROMETHEUS_PUBLISH_PORT=str(free_port()),
            APPLIANCE_PUBLISH_PORT=str(http_port),
            APPLIANCE_HEALTH_PUBLISH_PORT=str(health_port),
            RAW_APPLIANCE_PUBLISH_PORT=str(free_port()),
            RAW_APPLIANCE_HEALTH_PUBLISH_PORT=str(free_port()),
        ),
        http_port=http_port,
        health_port=health_port,
        token=TEST_TOKEN,
        ca_file=Certs(secrets_dir).ca,
        health_token=TEST_HEALTH_TOKEN,
        policy_dir=policy_dir,
    )
    try:
        started = time.monotonic()
        up = stack.compose("up", "--detach", "--wait", "--wait-timeout", "150", "appliance", "web")
        if up.returncode != 0:
            logs = stack.compose("logs", "--no-color", "--tail", "60").stdout
            pytest.fail(f"docker compose up failed:\n{up.stderr[-3000:]}\n--- logs ---\n{logs[-6000:]}")
        record(f"docker compose up --wait (appliance + web healthy): {time.monotonic() - started:.1f} s")
        yield stack
    finally:
        stack.compose(
            "--profile",
            "raw",
            "--profile",
            "demo",
            "--profile",
            "observability",
            "down",
            "--volumes",
            "--remove-orphans",
            timeout=COMPOSE_DOWN_TIMEOUT_SECONDS,
        )


# The compose fleet (profile `fleet`) beside the session's compose deployment: its own project,
# its own front subnet and lab subnets (compose.yaml's defaults hold for one deployment at a
# time), short ack_wait so a takeover happens within the test.
FLEET_SUBNETS = {
    "APPLIANCE_FRONT_SUBNET": "10.77.11.0/28",
    "FRONT_1_ADDRESS": "10.77.11.12",
    "FRONT_2_ADDRESS": "10.77.11.13",
    "APPLIANCE_LAB_SUBNET": "10.77.16.0/24",
    "APPLIANCE_LAB_GATEWAY": "10.77.16.1",
    "FLEET_SEG_A_SUBNET": "10.77.12.0/24",
    "FLEET_SEG_B_SUBNET": "10.77.13.0/24",
    "FLEET_BUS_SUBNET": "10.77.14.0/24",
}
FLEET_SERVICES = (
    "nats-1", "nats-2", "nats-3", "seg-a-1", "seg-a-2", "seg-b-1", "front-1", "front-2", "web-seg-a", "web-seg-b",
)  # fmt: skip
FLEET_ACK_WAIT_SECONDS = 5


def fleet_segments_seen(stack: FleetStack) -> dict[str, int]:
    """The segments front-1's /healthz lists, with how many appliances advertise each."""
    request = urllib.request.Request(  # noqa: S310 (https, built here)
        f"{stack.health_url}/healthz", headers={"Authorization": f"Bearer {stack.health_token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5, context=stack.verify) as response:  # noqa: S310 (https)
            body = json.loads(response.read())
    except (OSError, ValueError):
        return {}
    segments = body["checks"].get("fleet", {}).get("segments", {})
    return {name: int(seen["appliances"]) for name, seen in segments.items()}


@pytest.fixture(scope="session")
def fleet_stack(
    docker_client: docker.DockerClient,
    images: tuple[str, str],
    secrets_dir: Path,
    record: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FleetStack]:
    """compose.yaml's profile `fleet`, up and healthy: three NATS nodes, seg-a x2, seg-b x1, two
    fronts published on free loopback ports, the two lab targets. The segments' and the front's
    policies are the repository's, with their subnets moved to this deployment's."""
    for name in ("FLEET_SEG_A_SUBNET", "FLEET_SEG_B_SUBNET", "FLEET_BUS_SUBNET", "APPLIANCE_FRONT_SUBNET"):
        overlaps = lab_subnet_overlaps(FLEET_SUBNETS[name])
        if overlaps:
            pytest.fail(f"{FLEET_SUBNETS[name]} ({name}) overlaps routes of this host: {overlaps}")
    policy_dir = tmp_path_factory.mktemp("fleet-policies")
    shutil.copytree(REPO / "policies", policy_dir, dirs_exist_ok=True)
    for path in policy_dir.glob("fleet-*.yaml"):
        text = path.read_text().replace("10.77.2.", "10.77.12.").replace("10.77.3.", "10.77.13.")
        path.write_text(text)
    policy_dir.chmod(0o755)
    ports = {name: free_port() for name in ("front-1", "front-2", "front-1-health", "front-2-health")}
    stack = FleetStack(
        project=f"mcp-fleet-{uuid.uuid4().hex[:8]}",
        env=compose_env(
            **secrets_env(secrets_dir),
            **FLEET_SUBNETS,
            APPLIANCE_POLICY_DIR=str(policy_dir),
            FRONT_1_PUBLISH_PORT=str(ports["front-1"]),
            FRONT_2_PUBLISH_PORT=str(ports["front-2"]),
            FRONT_1_HEALTH_PUBLISH_PORT=str(ports["front-1-health"]),
            FRONT_2_HEALTH_PUBLISH_PORT=str(ports["front-2-health"]),
            FLEET_ACK_WAIT_SECONDS=str(FLEET_ACK_WAIT_SECONDS),
        ),
        http_port=ports["front-1"],
        health_port=ports["front-1-health"],
        token=TEST_TOKEN,
        ca_file=Certs(secrets_dir).ca,
        health_token=TEST_HEALTH_TOKEN,
        policy_dir=policy_dir,
        second_http_port=ports["front-2"],
    )
    try:
        started = time.monotonic()
        up = stack.compose(
            "--profile", "fleet", "up", "--detach", "--wait", "--wait-timeout", "150", *FLEET_SERVICES
        )  # fmt: skip
        if up.returncode != 0:
            logs = stack.compose("--profile", "fleet", "logs", "--no-color", "--tail", "40").stdout
            pytest.fail(f"docker compose --profile fleet up failed:\n{up.stderr[-3000:]}\n--- logs ---\n{logs[-8000:]}")
        record(f"docker compose --profile fleet up --wait (10 services healthy): {time.monotonic() - started:.1f} s")
        # Healthy is the sidecar's /livez; a front routes only to segments it has seen advertise.
        wait_until(lambda: fleet_segments_seen(stack) == {"seg-a": 2, "seg-b": 1}, timeout=60, interval=0.5)
        record(f"the fronts see both segments after {time.monotonic() - started:.1f} s")
        yield stack
    finally:
        stack.compose(
            "--profile", "fleet", "down", "--volumes", "--remove-orphans", timeout=COMPOSE_DOWN_TIMEOUT_SECONDS
        )  # fmt: skip
