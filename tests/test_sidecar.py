"""The aiohttp sidecar, through aiohttp's test client, on a real appliance's health model."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from support import APPLIANCE, server_env, write_policy
from support.sidecars import HEALTH_TOKEN, State, make_health

from appliance.audit import AuditSink
from appliance.config import load_settings
from appliance.errors import ConfigError
from appliance.health import Health, ScannerStatus
from appliance.metrics import Metrics
from appliance.sidecar import build_sidecar
from appliance.tools import TOOLS

pytestmark = pytest.mark.anyio


@pytest.fixture
async def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Metrics(registry, TOOLS)
    return registry


async def client_for(health: Health, registry: CollectorRegistry, token: str | None = None) -> TestClient:
    client = TestClient(TestServer(build_sidecar(health, registry, token)))
    await client.start_server()
    return client


@contextlib.asynccontextmanager
async def sidecar_of(health: Health, registry: CollectorRegistry) -> AsyncIterator[TestClient]:
    """A test client for `health`'s sidecar; the client and the health's audit sink closed after."""
    client = await client_for(health, registry)
    try:
        yield client
    finally:
        await client.close()
        health.audit.close()


@pytest.fixture
async def open_client(tmp_path: Path, registry: CollectorRegistry) -> AsyncIterator[tuple[TestClient, State]]:
    health, state = make_health(tmp_path)
    async with sidecar_of(health, registry) as client:
        yield client, state


async def test_livez_answers(open_client: tuple[TestClient, State]) -> None:
    client, _ = open_client
    response = await client.get("/livez")
    assert response.status == 200


async def test_readyz_goes_503_while_draining(open_client: tuple[TestClient, State]) -> None:
    client, state = open_client
    assert (await client.get("/readyz")).status == 200
    state.draining = True
    response = await client.get("/readyz")
    assert response.status == 503
    assert await response.json() == {"ready": False}  # open to any probe: says nothing more
    report = await (await client.get("/healthz")).json()
    assert "shutting down" in report["checks"]["ready"]["reasons"]


async def test_healthz_reports_checks_without_secrets(open_client: tuple[TestClient, State]) -> None:
    client, _ = open_client
    response = await client.get("/healthz")
    body = await response.text()
    report = await response.json()
    assert response.status == 200
    assert report["status"] in ("healthy", "degraded")
    assert set(report["checks"]) >= {"cpu", "memory", "disk", "scanners", "breakers", "audit", "privileges"}
    assert report["checks"]["tools_unavailable"]["masscan_scan"].startswith("needs raw mode")
    assert "never-shown-secret-123" not in body


async def test_metrics_exposes_prometheus_text(open_client: tuple[TestClient, State]) -> None:
    client, _ = open_client
    response = await client.get("/metrics")
    text = await response.text()
    assert response.status == 200
    for name in (
        "appliance_tool_calls_total",
        "appliance_tool_duration_seconds_bucket",
        "appliance_tool_in_flight",
        "appliance_tool_queue_depth",
        "appliance_circuit_state",
        "appliance_policy_reloads_total",
        "appliance_build_info",
        "process_resident_memory_bytes",
    ):
        assert name in text


async def test_unready_when_no_scanner_is_usable(tmp_path: Path, registry: CollectorRegistry) -> None:
    health, _ = make_health(tmp_path, scanners_present=False)
    async with sidecar_of(health, registry) as client:
        ready = await client.get("/readyz")
        report = await (await client.get("/healthz")).json()
    assert ready.status == 503
    assert report["status"] == "unhealthy"


async def test_missing_audit_folder_makes_it_unready_not_a_server_error(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    health, _ = make_health(tmp_path, audit_dir=tmp_path / "no-such-dir")
    async with sidecar_of(health, registry) as client:
        ready = await client.get("/readyz")
        healthz = await client.get("/healthz")
        reasons = (await healthz.json())["checks"]["ready"]["reasons"]
        readyz_body = await ready.text()
    assert ready.status == 503
    assert reasons == ["audit sink is not writable"]
    assert healthz.status == 503  # unhealthy, not a 500 from the missing folder
    assert str(tmp_path) not in readyz_body


async def test_token_guards_metrics_and_healthz_but_not_livez(tmp_path: Path, registry: CollectorRegistry) -> None:
    health, _ = make_health(tmp_path)
    client = await client_for(health, registry, HEALTH_TOKEN)
    try:
        assert (await client.get("/livez")).status == 200
        assert (await client.get("/readyz")).status == 200
        for path in ("/metrics", "/healthz"):
            denied = await client.get(path)
            wrong = await client.get(path, headers={"Authorization": "Bearer wrong"})
            allowed = await client.get(path, headers={"Authorization": f"Bearer {HEALTH_TOKEN}"})
            assert (denied.status, wrong.status, allowed.status) == (401, 401, 200)
            assert denied.headers["WWW-Authenticate"].startswith("Bearer")
    finally:
        await client.close()
        health.audit.close()


async def test_healthy_in_connect_mode_although_masscan_is_unavailable_by_design(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    health, _ = make_health(tmp_path)
    # Load on the test machine must not decide the verdict: no resource threshold can trip at 100 %.
    health.settings = health.settings.model_copy(
        update={"health_cpu_percent": 100.0, "health_memory_percent": 100.0, "health_disk_percent": 100.0}
    )
    async with sidecar_of(health, registry) as client:
        report = await (await client.get("/healthz")).json()
    assert report["mode"] == "connect"
    assert report["checks"]["tools_unavailable"]["masscan_scan"].startswith("needs raw mode")
    assert report["checks"]["tools_unexpectedly_unavailable"] == {}
    assert report["status"] == "healthy"


async def test_missing_scanner_of_an_enabled_tool_degrades_health(tmp_path: Path, registry: CollectorRegistry) -> None:
    health, _ = make_health(tmp_path)
    health.scanners = {**health.scanners, "gobuster_scan": ScannerStatus("/usr/bin/gobuster", False, None, "missing")}
    async with sidecar_of(health, registry) as client:
        report = await (await client.get("/healthz")).json()
    assert report["status"] == "degraded"
    assert set(report["checks"]["tools_unexpectedly_unavailable"]) == {"gobuster_scan"}


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
async def test_sidecar_rejects_dns_rebinding_host(open_client: tuple[TestClient, State], path: str) -> None:
    client, _ = open_client
    rebound = await client.get(path, headers={"Host": "attacker.example:9090"})
    allowed = await client.get(path, headers={"Host": "localhost:9090"})
    assert rebound.status == 421
    assert (await rebound.json())["rule"] == "health_host_not_allowed"
    assert allowed.status == 200


async def test_sidecar_accepts_configured_hosts_and_leaves_probes_open(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    health, _ = make_health(tmp_path)
    client = TestClient(TestServer(build_sidecar(health, registry, None, ["appliance:9090", "prometheus:*"])))
    await client.start_server()
    try:
        exact = await client.get("/metrics", headers={"Host": "appliance:9090"})
        other_port = await client.get("/metrics", headers={"Host": "appliance:9091"})
        any_port = await client.get("/metrics", headers={"Host": "Prometheus:1234"})
        loopback = await client.get("/metrics")  # 127.0.0.1:<port>, not configured here
        probes = [await client.get(p, headers={"Host": "10.0.0.9:9090"}) for p in ("/livez", "/readyz")]
    finally:
        await client.close()
        health.audit.close()
    assert (exact.status, other_port.status, any_port.status, loopback.status) == (200, 421, 200, 421)
    assert [p.status for p in probes] == [200, 200]


@pytest.mark.parametrize("value", ["", "short-token", "has space in it 0123456789"])
def test_empty_or_weak_health_token_refuses_start(value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(health_token=value)
    assert "APPLIANCE_HEALTH_TOKEN" in refused.value.message
    assert "weak" in refused.value.message
    if value:
        assert value not in refused.value.message


def test_serve_refuses_to_start_with_an_empty_health_token(tmp_path: Path) -> None:
    env = server_env(write_policy(tmp_path), APPLIANCE_HEALTH_TOKEN="")
    done = subprocess.run([APPLIANCE, "serve"], env=env, capture_output=True, timeout=30, check=False)
    assert done.returncode == 2
    refusal = json.loads(done.stderr.decode().strip().splitlines()[-1])
    assert refusal["rule"] == "settings_invalid"
    assert "APPLIANCE_HEALTH_TOKEN" in refusal["message"]


async def test_healthz_shows_the_audit_chain_and_a_failed_rotation_degrades(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    health, _ = make_health(tmp_path)
    health.audit.close()
    audit_path = tmp_path / "audit.log"
    (tmp_path / "audit.log.1").mkdir()  # rename(FILE, FILE.1) onto a directory fails
    (tmp_path / "audit.log.1" / "occupied").touch()
    health.audit = AuditSink(audit_path, max_bytes=4096, keep_files=1)
    async with sidecar_of(health, registry) as client:
        before = await (await client.get("/healthz")).json()
        for index in range(60):
            health.audit.write({"event": "call", "i": index})
        after = await (await client.get("/healthz")).json()
    assert before["checks"]["audit"]["rotation"]["problem"] is None  # (status: CPU on a busy host may degrade it)
    assert before["checks"]["audit"]["chain"].startswith("sha256 (no key: not tamper-evident")
    assert after["status"] == "degraded"
    audit = after["checks"]["audit"]
    assert audit["head"]["seq"] == 61 and audit["writable"] is True
    assert "rotation of" in audit["rotation"]["problem"]
