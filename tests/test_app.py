"""The assembled appliance: reload (good, bad, during a call), tool list changes, metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from mcp import Client
from prometheus_client import CollectorRegistry
from support import LOOPBACK_POLICY, tcp_listener, write_policy

from appliance.app import Appliance
from appliance.config import Settings
from appliance.server import JOB_TOOLS
from appliance.tools import TOOLS
from appliance.tools.nmap import NmapRequest

pytestmark = pytest.mark.anyio


def appliance_for(tmp_path: Path, *overrides: dict[str, Any]) -> Appliance:
    policy = write_policy(tmp_path, LOOPBACK_POLICY, *overrides)
    return Appliance(Settings(policy_path=policy, health_port=0), CollectorRegistry())


def sample(app: Appliance, name: str, **labels: str) -> float:
    value = app.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def rewrite_policy(app: Appliance, *overrides: dict[str, Any]) -> None:
    write_policy(app.settings.policy_path.parent, LOOPBACK_POLICY, *overrides)


async def test_metrics_count_real_calls_and_refusals(tmp_path: Path) -> None:
    app = appliance_for(tmp_path)
    with tcp_listener() as port:
        async with Client(app.server.mcp, mode="legacy") as client:
            await client.call_tool("nmap_scan", {"target": "127.0.0.1", "ports": str(port)})
            # A dry run: should the link-local check fail, still nothing is scanned.
            await client.call_tool("nmap_scan", {"target": "169.254.169.254", "dry_run": True})
    assert sample(app, "appliance_tool_calls_total", tool="nmap_scan", outcome="ok") == 1
    assert sample(app, "appliance_tool_calls_total", tool="nmap_scan", outcome="refused") == 1
    rule = "target_denied_link_local"
    assert sample(app, "appliance_scope_refusals_total", tool="nmap_scan", rule=rule) == 1
    assert sample(app, "appliance_tool_duration_seconds_count", tool="nmap_scan") == 1
    assert sample(app, "appliance_tool_in_flight", tool="nmap_scan") == 0
    # Children exist before any call: dashboards see zeros, not gaps.
    assert app.registry.get_sample_value("appliance_tool_calls_total", {"tool": "gobuster_scan", "outcome": "ok"}) == 0
    assert sample(app, "appliance_build_info", version="0.1.0") == 1


async def test_good_reload_takes_effect(tmp_path: Path) -> None:
    app = appliance_for(tmp_path)
    rewrite_policy(app, {"scope": {"deny_networks": ["10.20.0.0/16"]}})
    assert await app.reload_policy()
    async with Client(app.server.mcp, mode="legacy") as client:
        refused = await client.call_tool("nmap_scan", {"target": "10.20.0.5", "dry_run": True})
    assert refused.structured_content["rule"] == "target_denied_policy"  # type: ignore[index]
    assert sample(app, "appliance_policy_reloads_total", result="ok") == 1


async def test_bad_reload_keeps_last_good_policy(tmp_path: Path) -> None:
    app = appliance_for(tmp_path)
    before = app.store.current
    app.settings.policy_path.write_text("version: 2\nscope:\n  allow_networks: [0.0.0.0/0\n")
    assert not await app.reload_policy()
    assert app.store.current is before
    app.settings.policy_path.write_text(yaml.safe_dump({"version": 2, "scope": {"typo_key": True}}))
    assert not await app.reload_policy()
    assert app.store.current is before
    assert sample(app, "appliance_policy_reloads_total", result="rejected") == 2


async def test_call_in_flight_finishes_under_the_policy_it_started_with(tmp_path: Path) -> None:
    app = appliance_for(tmp_path)
    spec = TOOLS["nmap_scan"]
    with tcp_listener() as port:
        request = NmapRequest(target="127.0.0.1", ports=f"{port},23000-23005", extra_args=["--scan-delay", "300ms"])
        call = asyncio.create_task(app.service.call(spec, request, "rid"))
        # Wait until the call holds its slot, then close loopback in the policy.
        while app.service.limiter.in_flight("nmap_scan") == 0:  # noqa: ASYNC110 - polls a counter, no event exists
            await asyncio.sleep(0.01)
        rewrite_policy(app, {"scope": {"insecure_allow_loopback": False}})
        assert await app.reload_policy()
        report = await call
    assert report.hosts[0].address == "127.0.0.1"  # type: ignore[attr-defined]
    async with Client(app.server.mcp, mode="legacy") as client:
        refused = await client.call_tool("nmap_scan", {"target": "127.0.0.1", "dry_run": True})
    assert refused.structured_content["rule"] == "target_denied_loopback"  # type: ignore[index]


async def test_disabling_a_tool_updates_the_list_and_notifies_clients(tmp_path: Path) -> None:
    app = appliance_for(tmp_path)
    notified = asyncio.Event()

    async def on_message(message: Any) -> None:
        if getattr(getattr(message, "root", message), "method", None) == "notifications/tools/list_changed":
            notified.set()

    async with Client(app.server.mcp, mode="legacy", message_handler=on_message) as client:
        before = {t.name for t in (await client.list_tools()).tools}
        rewrite_policy(app, {"tools": {"gobuster_scan": {"enabled": False}}})
        assert await app.reload_policy()
        await asyncio.wait_for(notified.wait(), timeout=5)
        after = {t.name for t in (await client.list_tools()).tools}
    assert before == set(TOOLS) | set(JOB_TOOLS)
    assert after == {"nmap_scan", "masscan_scan"} | set(JOB_TOOLS)  # job tools never leave the list


async def test_breaker_force_open_from_policy_refuses_at_once(tmp_path: Path) -> None:
    app = appliance_for(tmp_path, {"tools": {"nmap_scan": {"breaker_force": "open"}}})
    async with Client(app.server.mcp, mode="legacy") as client:
        result = await client.call_tool("nmap_scan", {"target": "127.0.0.1", "ports": "1"})
    assert result.is_error
    assert result.structured_content["error_type"] == "circuit_breaker_open"  # type: ignore[index]
    rewrite_policy(app)
    assert await app.reload_policy()
    assert app.service.breakers["nmap_scan"].snapshot()["forced"] in (None, False)
