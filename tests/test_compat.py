"""The SDK's private attributes the appliance uses (appliance/compat.py) still exist and work.

These fail loudly on an SDK upgrade that moves them: fix compat.py, then bump SDK_VERSION.
"""

from __future__ import annotations

import io
from importlib.metadata import version
from pathlib import Path

import pytest
from mcp import Client
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer
from support import LOOPBACK_POLICY, write_policy

from appliance.audit import AuditSink
from appliance.compat import SDK_VERSION, create_mcp_http_client, lowlevel_server, session_owners
from appliance.config import Settings
from appliance.policy.netinfo import NetworkFacts
from appliance.policy.store import PolicyStore
from appliance.server import ScannerServer
from appliance.service import ScanService


def test_installed_sdk_is_the_version_compat_was_written_for() -> None:
    assert version("mcp") == SDK_VERSION


def test_lowlevel_server_is_the_one_mcpserver_runs() -> None:
    server = MCPServer(name="t")
    lowlevel = lowlevel_server(server)
    assert isinstance(lowlevel, Server)
    assert lowlevel.get_request_handler("tools/call") is not None


@pytest.mark.anyio
async def test_session_connection_is_found_for_a_live_client(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    service = ScanService(
        Settings(policy_path=policy), PolicyStore(policy, facts=NetworkFacts), AuditSink(stream=io.StringIO())
    )
    server = ScannerServer(service)
    async with Client(server.mcp, mode="legacy") as client:
        await client.list_tools()
        assert len(server.sessions.connections) == 1
        assert all(hasattr(c, "send_tool_list_changed") for c in server.sessions.connections)


def test_http_client_factory_still_exists() -> None:
    assert callable(create_mcp_http_client)


def test_session_owners_reads_the_session_manager_tables() -> None:
    server = MCPServer(name="t")
    server.streamable_http_app()  # creates the session manager
    assert session_owners(server) == []
