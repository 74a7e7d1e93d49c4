"""Every private attribute of the MCP SDK the appliance relies on, in one place.

The SDK is pinned (`mcp==2.3.0`); tests/test_compat.py fails loudly when an upgrade moves any of
these, so an upgrade is a deliberate change here and nowhere else.
"""

from __future__ import annotations

from typing import Any

from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer
from mcp.shared._httpx_utils import create_mcp_http_client

SDK_VERSION = "2.3.0"

__all__ = ["SDK_VERSION", "create_mcp_http_client", "lowlevel_server", "session_connection"]


def lowlevel_server(server: MCPServer[Any]) -> Server[Any]:
    """The low-level server inside MCPServer: the appliance registers its own tools/list and
    tools/call handlers there (one validation path) and runs stdio over its own stdin reader."""
    lowlevel: Server[Any] = server._lowlevel_server
    return lowlevel


def session_connection(session: Any) -> Any | None:
    """The long-lived connection behind a per-request ServerSession (None when it has none).

    SDK 2.3 builds a new ServerSession per request and offers middleware no public accessor
    for the connection that lives as long as the client does; tool-list announcements need it.
    """
    return getattr(session, "_connection", None)
