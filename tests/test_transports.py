"""The `appliance serve` process over stdio and streamable HTTP, driven by the SDK client.

Every scan goes to a listener this test started on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from support import (
    APPLIANCE,
    LOOPBACK_POLICY,
    TOKEN,
    closed_port,
    http_client,
    http_server,
    scanner_processes,
    server_env,
    stdio_client,
    tcp_listener,
    wait_until,
    write_policy,
)

from appliance.server import JOB_TOOLS
from appliance.tools import TOOLS

pytestmark = pytest.mark.anyio
ERAS = ["legacy", "2026-07-28"]


@contextlib.asynccontextmanager
async def connected(kind: str, policy: Path, mode: str) -> AsyncIterator[Client]:
    if kind == "stdio":
        async with stdio_client(policy, mode) as client:
            yield client
        return
    with http_server(policy, APPLIANCE_AUTH_TOKEN=TOKEN) as url:
        async with http_client(url, mode) as client:
            yield client


@pytest.mark.parametrize("mode", ERAS)
@pytest.mark.parametrize("kind", ["stdio", "http"])
async def test_real_scan_over_transport(tmp_path: Path, kind: str, mode: str) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    closed = closed_port()
    with tcp_listener() as port:
        async with connected(kind, policy, mode) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            result = await client.call_tool("nmap_scan", {"target": "127.0.0.1", "ports": f"{port},{closed}"})
            refused = await client.call_tool("nmap_scan", {"target": "0x7f000001", "dry_run": True})
    assert names == set(TOOLS) | set(JOB_TOOLS)  # three scanners, four job tools
    assert not result.is_error
    [host] = result.structured_content["hosts"]  # type: ignore[index]
    # Open ports are listed in full; the closed one is only counted.
    assert [(p["port"], p["state"]) for p in host["ports"]] == [(port, "open")]
    assert host["port_counts"] == {"open": 1, "closed": 1}
    assert refused.is_error
    assert refused.structured_content["rule"] == "target_noncanonical_ipv4"  # type: ignore[index]


@pytest.mark.parametrize(
    ("kind", "mode"),
    [("stdio", "legacy"), ("http", "legacy"), ("http", "2026-07-28")],
)
async def test_cancel_mid_scan_leaves_no_scanner_process(tmp_path: Path, kind: str, mode: str) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    with tcp_listener() as port:
        marker = f"{port},22000-22200"  # unique to this scan: identifies its nmap process
        async with connected(kind, policy, mode) as client:
            async with anyio.create_task_group() as group:

                async def slow_scan() -> None:
                    arguments: dict[str, Any] = {
                        "target": "127.0.0.1",
                        "ports": marker,
                        "extra_args": ["--scan-delay", "1s"],
                    }
                    with contextlib.suppress(Exception):
                        await client.call_tool("nmap_scan", arguments)

                group.start_soon(slow_scan)
                await anyio.to_thread.run_sync(lambda: wait_until(lambda: scanner_processes(marker), timeout=20))
                group.cancel_scope.cancel()
            await anyio.to_thread.run_sync(lambda: wait_until(lambda: not scanner_processes(marker), timeout=10))
            # The server is still healthy after the cancel.
            after = await client.call_tool("nmap_scan", {"target": "127.0.0.1", "ports": str(port)})
            assert not after.is_error


async def test_http_without_token_gets_401(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    with http_server(policy, APPLIANCE_AUTH_TOKEN=TOKEN) as url:
        async with httpx2.AsyncClient() as http:
            missing = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
            wrong = await http.post(
                url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers={"Authorization": "Bearer nope"}
            )
        async with http_client(url, "legacy") as client:
            assert len((await client.list_tools()).tools) == 7  # three scanners, four job tools
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_http_refuses_to_start_without_token(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    env = server_env(policy, APPLIANCE_TRANSPORT="http", APPLIANCE_PORT=str(closed_port()))
    done = subprocess.run([APPLIANCE, "serve"], env=env, capture_output=True, timeout=30, check=False)
    assert done.returncode == 2
    assert b"http_requires_token" in done.stderr


def test_stdio_exits_cleanly_on_stdin_eof(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    done = subprocess.run([APPLIANCE, "serve"], env=server_env(policy), input=b"", capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b""  # nothing but protocol messages ever goes to stdout
