"""MCP clients of the appliance (stdio through `docker run -i`, streamable HTTP) and what a
`tools/call` result says."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

# No single call in the benchmark should take longer (the slowest is a shutdown scan cut short).
READ_TIMEOUT_SECONDS = 120
# Compose allows "appliance:*" Host headers; the container's IP is not on its list.
HOST_HEADER = "appliance:8080"


@contextlib.asynccontextmanager
async def stdio_session(
    command: Sequence[str], errlog: Path, env: Mapping[str, str] | None = None, cwd: str | None = None
) -> AsyncIterator[Client]:
    """An MCP session with the server `command` starts (e.g. `docker run -i ...`) in `cwd`; its
    stderr (JSON logs and the audit trail) goes to `errlog`. `env` defaults to ours (the docker
    CLI needs DOCKER_HOST and friends when they are set)."""
    params = StdioServerParameters(
        command=command[0], args=list(command[1:]), env=dict(env if env is not None else os.environ), cwd=cwd
    )
    with errlog.open("a") as sink:
        transport = stdio_client(params, errlog=sink)
        async with Client(transport, read_timeout_seconds=READ_TIMEOUT_SECONDS) as client:
            yield client


@contextlib.asynccontextmanager
async def http_session(url: str, token: str, connections: int) -> AsyncIterator[Client]:
    """An MCP session over streamable HTTP with the bearer token and a pool of `connections`
    (httpx's default of 100 would queue a larger burst in the client). trust_env=False: no proxy
    from the environment may sit between the benchmark and the lab."""
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}", "Host": HOST_HEADER},
        timeout=httpx2.Timeout(30.0, read=READ_TIMEOUT_SECONDS),
        limits=httpx2.Limits(max_connections=connections, max_keepalive_connections=connections),
        trust_env=False,
    )
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        yield client


def error_type(result: CallToolResult) -> str | None:
    """None for a successful call, else the appliance's `error_type` (or "unknown")."""
    if not result.is_error:
        return None
    structured: dict[str, Any] = result.structured_content or {}
    return str(structured.get("error_type", "unknown"))


def port_open(result: CallToolResult, port: int) -> bool:
    """True when an nmap_scan result reports `port` open on some host."""
    structured: dict[str, Any] = result.structured_content or {}
    return any(
        p.get("port") == port and p.get("state") == "open"
        for host in structured.get("hosts", [])
        for p in host.get("ports", [])
    )
