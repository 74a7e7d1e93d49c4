"""`appliance demo`: an MCP client that shows the appliance working against the demo lab.

Used by the compose file's `demo` service, so `docker compose up` prints a real scan at once.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from appliance.compat import mcp_http_client
from appliance.tls import client_context

# Compose starts the demo beside the appliance; the appliance needs a moment to listen.
CONNECT_RETRY_SECONDS = 0.5


async def _connect_and_scan(url: str, token: str, target: str, ports: str, ca_file: Path | None) -> dict[str, Any]:
    verify = None if ca_file is None else client_context(ca_file)
    async with (
        mcp_http_client(headers={"Authorization": f"Bearer {token}"}, verify=verify) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
    ):
        tools = [tool.name for tool in (await client.list_tools()).tools]
        # connect + http-title: a readable result in a second; -sV against an unknown banner takes ~90 s.
        arguments = {"target": target, "ports": ports, "scan_type": "connect", "scripts": ["http-title"]}
        result = await client.call_tool("nmap_scan", arguments)
        refused = await client.call_tool("nmap_scan", {"target": "169.254.169.254"})
        return {
            "tools": tools,
            "summary": result.content[0].text if result.content else "",  # type: ignore[union-attr]
            "result": result.structured_content,
            "is_error": result.is_error,
            "refusal_example": refused.structured_content,
        }


async def run_demo(
    url: str, token: str, target: str, ports: str, wait_seconds: float, ca_file: Path | None = None
) -> int:
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            outcome = await _connect_and_scan(url, token, target, ports, ca_file)
            break
        except (httpx2.HTTPError, OSError) as exc:
            if time.monotonic() > deadline:
                print(f"demo: the appliance at {url} did not answer: {exc}", file=sys.stderr)
                return 1
            await asyncio.sleep(CONNECT_RETRY_SECONDS)
    print(f"tools: {', '.join(outcome['tools'])}")
    print(outcome["summary"])
    hosts = (outcome["result"] or {}).get("hosts", [])
    for host in hosts:
        for port in host["ports"]:
            service = " ".join(filter(None, [port.get("service"), port.get("product"), port.get("version")]))
            print(f"  {host['address']}:{port['port']}/{port['protocol']} {port['state']} {service}")
            for script in port.get("scripts", []):
                print(f"    {script['id']}: {script['output'].strip()}")
    refusal = outcome["refusal_example"] or {}
    print(f"and a refusal: 169.254.169.254 -> {refusal.get('rule')}: {refusal.get('message')}")
    print(json.dumps(outcome["result"], indent=2))
    return 1 if outcome["is_error"] else 0
