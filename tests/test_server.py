"""The MCP server in process, with the SDK's own client, in both protocol eras."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from support import LOOPBACK_POLICY, SpyRunner, closed_port, tcp_listener, write_policy

from appliance.audit import AuditSink
from appliance.config import Settings
from appliance.policy.netinfo import NetworkFacts
from appliance.policy.store import PolicyStore
from appliance.server import JOB_TOOLS, build_server
from appliance.service import ScanService
from appliance.tools import TOOLS

pytestmark = pytest.mark.anyio
ERAS = ["legacy", "2026-07-28"]


def server_for(tmp_path: Path, *overrides: dict[str, Any], runner: SpyRunner | None = None) -> Any:
    """The MCP server over a ScanService with the loopback policy; `runner` replaces the real
    runner in tests that must start no scanner (refusals, dry runs)."""
    policy = write_policy(tmp_path, LOOPBACK_POLICY, *overrides)
    settings = Settings(policy_path=policy)
    extra: dict[str, Any] = {"runner": runner} if runner is not None else {}
    service = ScanService(settings, PolicyStore(policy, facts=NetworkFacts), AuditSink(stream=io.StringIO()), **extra)
    return build_server(service)


@pytest.mark.parametrize("mode", ERAS)
async def test_tools_list_has_the_scan_and_job_tools_with_schemas(tmp_path: Path, mode: str) -> None:
    async with Client(server_for(tmp_path), mode=mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == set(TOOLS) | set(JOB_TOOLS)  # three scanners, four job tools
    nmap = tools["nmap_scan"]
    assert nmap.input_schema["required"] == ["target"]
    assert "CIDR" in nmap.input_schema["properties"]["target"]["description"]
    assert nmap.output_schema is not None and "hosts" in nmap.output_schema["properties"]
    assert tools["masscan_scan"].input_schema["required"] == ["target", "ports"]
    assert "ctx" not in nmap.input_schema["properties"]


@pytest.mark.parametrize("mode", ERAS)
async def test_connect_scan_returns_structured_ports(tmp_path: Path, mode: str) -> None:
    closed = closed_port()
    with tcp_listener() as port:
        async with Client(server_for(tmp_path), mode=mode) as client:
            result = await client.call_tool("nmap_scan", {"target": "127.0.0.1", "ports": f"{port},{closed}"})
    assert not result.is_error
    structured = result.structured_content
    assert structured is not None
    [host] = structured["hosts"]
    # Open ports are listed in full; the closed one is only counted.
    assert [(p["port"], p["state"]) for p in host["ports"]] == [(port, "open")]
    assert host["port_counts"] == {"open": 1, "closed": 1}
    assert structured["scanned_address"] == "127.0.0.1"
    assert f"127.0.0.1:{port}" in result.content[0].text  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ERAS)
async def test_refusal_is_an_error_result_with_one_json_object(tmp_path: Path, mode: str) -> None:
    # An in-scope target, so that the flag check alone refuses; the spy proves nothing started.
    spy = SpyRunner()
    async with Client(server_for(tmp_path, runner=spy), mode=mode) as client:
        result = await client.call_tool("nmap_scan", {"target": "127.0.0.1", "extra_args": ["-oN", "/tmp/x"]})
    assert spy.calls == []
    assert result.is_error
    text = result.content[0].text  # type: ignore[union-attr]
    body = json.loads(text[text.index("{") :])
    assert body["error_type"] == "validation_error"
    assert body["rule"] == "flag_file_io"
    assert body["recovery_suggestion"]
    assert result.structured_content is not None and result.structured_content["rule"] == "flag_file_io"


@pytest.mark.parametrize("mode", ERAS)
async def test_dry_run_shows_exact_argv(tmp_path: Path, mode: str) -> None:
    spy = SpyRunner()
    async with Client(server_for(tmp_path, runner=spy), mode=mode) as client:
        result = await client.call_tool(
            "gobuster_scan", {"target": "http://127.0.0.1:8080/app/", "dry_run": True, "extensions": ["php"]}
        )
    assert not result.is_error
    argv = result.structured_content["argv"]  # type: ignore[index]
    assert argv[1:4] == ["dir", "-u", "http://127.0.0.1:8080/app/"]
    assert "-x" in argv and "php" in argv
    assert result.structured_content["dry_run"] is True  # type: ignore[index]
    assert spy.calls == []  # a dry run starts nothing


async def test_progress_notifications_arrive_during_a_slow_scan(tmp_path: Path) -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    with tcp_listener() as port:
        async with Client(server_for(tmp_path), mode="legacy") as client:
            result = await client.call_tool(
                "nmap_scan",
                {"target": "127.0.0.1", "ports": f"{port},21000-21012", "extra_args": ["--scan-delay", "400ms"]},
                progress_callback=on_progress,
            )
    assert not result.is_error
    assert len(seen) >= 2  # at least one nmap stats line, then the final 100
    assert seen[-1] == 100.0
