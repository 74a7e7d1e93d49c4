"""Raw MCP over streamable HTTP (handshake era), for tests that need the session ID itself."""

from __future__ import annotations

import json
from typing import Any

HANDSHAKE_VERSION = "2025-11-25"


def mcp_headers(token: str, session: str | None = None) -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    if session is not None:
        headers.update({"Mcp-Session-Id": session, "MCP-Protocol-Version": HANDSHAKE_VERSION})
    return headers


def rpc_messages(text: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a response body, plain JSON or an SSE stream of `data:` lines."""
    if text.lstrip().startswith("{"):
        return [json.loads(text)]
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and line[5:].strip()]


def initialize_request() -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": HANDSHAKE_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "tests", "version": "0"},
        },
    }


async def open_session(http: Any, url: str, token: str) -> str:
    """Initialize a handshake-era session with `token` (an httpx2.AsyncClient); returns its ID."""
    response = await http.post(url, json=initialize_request(), headers=mcp_headers(token))
    assert response.status_code == 200, response.text
    session = str(response.headers["mcp-session-id"])
    done = await http.post(
        url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=mcp_headers(token, session)
    )
    assert done.status_code == 202, done.text
    return session
