"""The aiohttp sidecar, through aiohttp's test client, on a real appliance's health model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from support import write_policy

from appliance.audit import AuditSink
from appliance.config import Settings
from appliance.health import Health, ScannerStatus
from appliance.metrics import Metrics
from appliance.policy.netinfo import NetworkFacts
from appliance.policy.store import PolicyStore
from appliance.sidecar import build_sidecar
from appliance.tools import TOOLS

pytestmark = pytest.mark.anyio
HEALTH_TOKEN = "health-token-0123456789"


class State:
    draining = False


def make_health(tmp_path: Path, scanners_present: bool = True, audit_dir: Path | None = None) -> tuple[Health, State]:
    policy = write_policy(tmp_path)
    audit_path = (audit_dir or tmp_path) / "audit.log"
    settings = Settings(policy_path=policy, audit_path=audit_path, auth_token="never-shown-secret-123")  # type: ignore[arg-type]
    state = State()
    scanners = {t: ScannerStatus(f"/usr/bin/{t}", scanners_present, "v1" if scanners_present else None) for t in TOOLS}
    health = Health(
        settings,
        PolicyStore(policy, facts=NetworkFacts),
        AuditSink(audit_path),
        scanners,
        breakers=lambda: {t: {"state": "closed"} for t in TOOLS},
        draining=lambda: state.draining,
        privilege_check=lambda: {"ok": True, "excess": []},
    )
    return health, state


@pytest.fixture
async def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Metrics(registry, TOOLS)
    return registry


async def client_for(health: Health, registry: CollectorRegistry, token: str | None = None) -> TestClient:
    client = TestClient(TestServer(build_sidecar(health, registry, token)))
    await client.start_server()
    return client


@pytest.fixture
async def open_client(tmp_path: Path, registry: CollectorRegistry) -> AsyncIterator[tuple[TestClient, State]]:
    health, state = make_health(tmp_path)
    client = await client_for(health, registry)
    try:
        yield client, state
    finally:
        await client.close()
        health.audit.close()


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
    assert "shutting down" in (await response.json())["reasons"]


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
    client = await client_for(health, registry)
    try:
        ready = await client.get("/readyz")
        report = await (await client.get("/healthz")).json()
    finally:
        await client.close()
        health.audit.close()
    assert ready.status == 503
    assert report["status"] == "unhealthy"


async def test_unwritable_audit_sink_makes_it_unready(tmp_path: Path, registry: CollectorRegistry) -> None:
    health, _ = make_health(tmp_path, audit_dir=tmp_path / "no-such-dir")
    client = await client_for(health, registry)
    try:
        ready = await client.get("/readyz")
        reasons = (await ready.json())["reasons"]
    finally:
        await client.close()
        health.audit.close()
    assert ready.status == 503
    assert "not writable" in reasons[0]


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
