"""The MCP boundary: one argument path, the appliance's errors for every refusal, lean schemas.

Every call here goes through an in-process MCP client into the real server, with a spy runner
(nothing may start unless a test says so) and a dict resolver (no DNS query leaves the test).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from support import LabService, replay_output

from appliance.runner import RunLimits, RunResult
from appliance.server import JOB_TOOLS, ScannerServer
from appliance.tools import TOOLS

pytestmark = pytest.mark.anyio
ERAS = ["legacy", "2026-07-28"]
# The three scan tools' tools/list entry, minified, must stay under this (issue: clients that
# validate every structured result pay per schema node).
# The budget: the whole tools/list with its seven tools, minified.
TOOLS_LIST_BUDGET_BYTES = 10 * 1024


@dataclass
class Boundary:
    """The lab service behind the real MCP server, and an in-process client for it."""

    lab: LabService
    server: ScannerServer

    def client(self, mode: str = "legacy") -> Client:
        return Client(self.server.mcp, mode=mode)

    @property
    def runner(self) -> Any:
        return self.lab.runner

    def audit_lines(self) -> list[dict[str, Any]]:
        return self.lab.audit_lines()

    def metric(self, name: str, **labels: str) -> float:
        return self.lab.metric(name, **labels)


@pytest.fixture
def boundary(lab_service: Callable[..., LabService]) -> Callable[..., Boundary]:
    def build(runner: Any = None) -> Boundary:
        lab = lab_service(resolves={"web.lab.internal": ["10.20.0.5"]}, runner=runner)
        return Boundary(lab, ScannerServer(lab.service))

    return build


def body(result: Any) -> dict[str, Any]:
    assert result.is_error
    parsed: dict[str, Any] = json.loads(result.content[0].text)
    assert parsed == result.structured_content
    return parsed


# --- one argument path ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ERAS)
async def test_unknown_argument_exclude_is_refused_not_dropped(boundary: Callable[..., Boundary], mode: str) -> None:
    b = boundary()
    async with b.client(mode) as client:
        result = await client.call_tool("nmap_scan", {"target": "10.20.0.0/29", "exclude": "10.20.0.5"})

    error = body(result)
    assert error["rule"] == "argument_unknown"
    assert "exclude" in error["message"]
    assert "target" in error["recovery_suggestion"]
    assert b.runner.calls == []
    [line] = b.audit_lines()
    assert (line["verdict"], line["rule"], line["arguments"]) == (
        "refused",
        "argument_unknown",
        {"target": "10.20.0.0/29", "exclude": "10.20.0.5"},
    )
    assert b.metric("appliance_scope_refusals_total", tool="nmap_scan", rule="argument_unknown") == 1
    assert b.metric("appliance_tool_calls_total", tool="nmap_scan", outcome="refused") == 1


async def test_input_schema_forbids_unknown_arguments(boundary: Callable[..., Boundary]) -> None:
    async with boundary().client() as client:
        tools = (await client.list_tools()).tools
    for tool in tools:
        assert tool.input_schema["additionalProperties"] is False, tool.name


@pytest.mark.parametrize("mode", ERAS)
async def test_json_looking_string_is_not_reparsed_into_a_list(boundary: Callable[..., Boundary], mode: str) -> None:
    b = boundary()
    async with b.client(mode) as client:
        result = await client.call_tool(
            "nmap_scan", {"target": "10.20.0.5", "extra_args": '["-iL", "/etc/passwd"]', "dry_run": True}
        )

    error = body(result)
    assert error["rule"] == "argument_type"
    assert "extra_args" in error["message"]


@pytest.mark.parametrize(
    ("arguments", "rule"),
    [
        ({}, "argument_missing"),
        ({"target": 167772161}, "argument_type"),
        ({"target": "10.20.0.5", "timing": 9}, "argument_out_of_range"),
        ({"target": "10.20.0.5", "scan_type": "udp"}, "argument_not_a_choice"),
        ({"target": "10.20.0.5", "timeout_seconds": "forever"}, "argument_type"),
    ],
)
async def test_argument_refusal_is_the_appliance_error_audited_and_counted(
    boundary: Callable[..., Boundary], arguments: dict[str, Any], rule: str
) -> None:
    b = boundary()
    async with b.client() as client:
        result = await client.call_tool("nmap_scan", arguments)

    error = body(result)
    assert (error["error_type"], error["rule"], error["tool"]) == ("validation_error", rule, "nmap_scan")
    assert error["recovery_suggestion"] and error["request_id"]
    [line] = b.audit_lines()
    assert line["rule"] == rule and line["request_id"] == error["request_id"]
    assert b.metric("appliance_scope_refusals_total", tool="nmap_scan", rule=rule) == 1


@pytest.mark.parametrize(
    ("tool", "ports", "argv_ports"),
    [
        ("nmap_scan", 8080, "8080"),
        ("nmap_scan", [22, 80], "22,80"),
        ("nmap_scan", "22,80", "22,80"),
        ("masscan_scan", 443, "443"),
    ],
)
async def test_port_number_or_list_is_accepted(
    boundary: Callable[..., Boundary], tool: str, ports: Any, argv_ports: str
) -> None:
    b = boundary()
    async with b.client() as client:
        result = await client.call_tool(tool, {"target": "10.20.0.5", "ports": ports, "dry_run": True})

    assert not result.is_error, result.content
    argv = result.structured_content["argv"]  # type: ignore[index]
    assert argv_ports in argv
    assert b.runner.calls == []


# --- unknown tools and unexpected failures -------------------------------------------------------


@pytest.mark.parametrize("mode", ERAS)
async def test_unknown_tool_is_invalid_params_with_the_appliance_error(
    boundary: Callable[..., Boundary], mode: str
) -> None:
    b = boundary()
    async with b.client(mode) as client:
        with pytest.raises(MCPError) as raised:
            await client.call_tool("shell_exec", {"command": "id"})

    assert raised.value.code == -32602
    data = raised.value.data
    assert (data["error_type"], data["rule"]) == ("not_found", "tool_unknown")
    assert data["recovery_suggestion"]
    [line] = b.audit_lines()
    assert (line["tool"], line["rule"], line["verdict"]) == ("shell_exec", "tool_unknown", "refused")
    assert b.metric("appliance_protocol_refusals_total", rule="tool_unknown") == 1


async def test_unexpected_exception_is_error_type_unknown_without_traceback(
    boundary: Callable[..., Boundary],
) -> None:
    async def broken_runner(argv: Any, limits: RunLimits, **kwargs: Any) -> RunResult:
        raise RuntimeError("internal detail /opt/venv/secret.py line 3")

    b = boundary(runner=broken_runner)
    async with b.client() as client:
        result = await client.call_tool("nmap_scan", {"target": "10.20.0.5", "ports": "80"})

    error = body(result)
    assert (error["error_type"], error["rule"]) == ("unknown", "unexpected_exception")
    text = result.content[0].text  # type: ignore[union-attr]
    assert "Traceback" not in text and "secret" not in text and "RuntimeError" not in text
    assert error["request_id"] in error["message"]
    created, start, end = b.audit_lines()
    assert (created["event"], start["event"], end["event"], end["outcome"]) == ("job", "start", "end", "unknown")
    assert error["scan_id"] == end["scan_id"]  # the failed job can be looked up
    assert b.metric("appliance_tool_calls_total", tool="nmap_scan", outcome="error") == 1


# --- lean schemas --------------------------------------------------------------------------------


async def test_tools_list_of_the_seven_tools_fits_the_budget(boundary: Callable[..., Boundary]) -> None:
    async with boundary().client() as client:
        listed = await client.list_tools()

    assert {tool.name for tool in listed.tools} == set(TOOLS) | set(JOB_TOOLS)
    wire = json.dumps(listed.model_dump(mode="json", by_alias=True, exclude_none=True), separators=(",", ":"))
    assert len(wire.encode()) <= TOOLS_LIST_BUDGET_BYTES, len(wire)


async def test_output_schemas_are_shallow_and_untitled(boundary: Callable[..., Boundary]) -> None:
    async with boundary().client() as client:
        tools = (await client.list_tools()).tools

    for tool in tools:
        schema = tool.output_schema
        if tool.name == "cancel_scan":  # returns get_scan's shape; one copy of it is listed
            assert schema is None
            continue
        assert schema is not None
        text = json.dumps(schema)
        assert "$defs" not in text and "$ref" not in text and '"title"' not in text and "anyOf" not in text
    for tool in (t for t in tools if t.name in TOOLS or t.name == "get_scan"):
        assert tool.output_schema["properties"]["scan_id"]["type"] == ["string", "null"]  # type: ignore[index]
        assert tool.output_schema["properties"]["status"] == {"type": "string"}  # type: ignore[index]
    nmap = next(t for t in tools if t.name == "nmap_scan")
    assert nmap.output_schema["properties"]["hosts"] == {"type": "array", "items": {"type": "object"}}  # type: ignore[index]


async def test_real_result_still_satisfies_its_published_output_schema(
    boundary: Callable[..., Boundary],
) -> None:
    """The SDK client validates structured results against outputSchema: a real-shaped result passes."""

    async def fake_nmap(argv: Any, limits: RunLimits, **kwargs: Any) -> RunResult:
        xml = (Path(__file__).parent / "fixtures" / "nmap" / "version.xml").read_bytes()
        await replay_output(xml, b"", kwargs)
        return RunResult(tuple(argv), 0, xml, b"", False, False, 0.1, pid=0)

    b = boundary(runner=fake_nmap)
    async with b.client() as client:
        result = await client.call_tool("nmap_scan", {"target": "10.20.0.5", "ports": "80"})

    assert not result.is_error, result.content
    assert result.structured_content is not None and result.structured_content["hosts"]
