"""The SDK steps the benchmark times in-process (bench/sdkcost.py) are the real ones: what
`serialise` writes is a JSON-RPC response the client's steps parse back to the same result."""

from __future__ import annotations

import json

import pytest
from mcp_types import CallToolResult, TextContent

from bench import sdkcost

STRUCTURED = {
    "scan_id": "scan_1",
    "request_id": "0123456789abcdef",
    "hosts": [{"address": "10.77.0.2", "ports": [{"port": 8080, "state": "open", "service": "http-proxy"}]}],
    "duration_seconds": 0.104,
}


@pytest.mark.parametrize("version", ["2025-11-25", "2026-07-28"])
def test_serialise_writes_a_response_line_the_client_parses_back(version: str) -> None:
    result = CallToolResult(content=[TextContent(type="text", text="1 host up")], structured_content=STRUCTURED)

    line = sdkcost.serialise(result, version)
    message = json.loads(line)

    assert message["jsonrpc"] == "2.0" and message["id"] == 1
    parsed = sdkcost.client_parse(message["result"], version)
    assert parsed.structured_content == STRUCTURED
    assert parsed.content == result.content
