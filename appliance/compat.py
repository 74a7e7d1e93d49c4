"""Every private attribute of the MCP SDK the appliance relies on, in one place.

The SDK is pinned (`mcp==2.3.0`); tests/test_compat.py fails loudly when an upgrade moves any of
these, so an upgrade is a deliberate change here and nowhere else.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx2
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer
from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, MCP_DEFAULT_TIMEOUT, create_mcp_http_client

SDK_VERSION = "2.3.0"

__all__ = [
    "SDK_VERSION",
    "create_mcp_http_client",
    "lowlevel_server",
    "mcp_http_client",
    "session_connection",
    "session_owners",
]


def mcp_http_client(headers: dict[str, str] | None = None, verify: ssl.SSLContext | None = None) -> httpx2.AsyncClient:
    """The SDK's MCP HTTP client, with a trust store for https (the SDK's factory takes none):
    its timeouts, `verify` as the only trust anchors when given."""
    if verify is None:
        return create_mcp_http_client(headers=headers)
    timeout = httpx2.Timeout(MCP_DEFAULT_TIMEOUT, read=MCP_DEFAULT_SSE_READ_TIMEOUT)
    return httpx2.AsyncClient(headers=headers, timeout=timeout, verify=verify)


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


def session_owners(server: MCPServer[Any]) -> list[str | None]:
    """The principal (token client_id) of every open HTTP session, None for one opened without auth.

    SDK 2.3 has no public view of its sessions: this reads the session manager's private tables
    (per-principal session limits need it).
    """
    manager = server.session_manager
    owners: dict[str, Any] = manager._session_owners
    return [owners[sid]["client_id"] if sid in owners else None for sid in list(manager._server_instances)]
