"""The MCP 1.x Python client side of bench/mcp1.py: runs in .venv-mcp1 (mcp 1.30.0, made by
scripts/setup-bench-mcp1), never in the project's venv, and imports nothing of bench/ (whose
clients are the 2.x SDK's).

`python bench/mcp1_client.py CONFIG_JSON`: CONFIG has the server's `command` and `env`, the
`tool`, its `arguments`, the `port` that must be reported open and `errlog` (the server's stderr).
It opens one stdio session (the 1.x ClientSession), makes one `dry_run` call and prints
{"ready": true, "protocol_version", "argv"}; then for every line "N" on stdin it makes N calls,
each timed with time.perf_counter, and prints {"seconds": [...], "failures": k} (the protocol of
bench/overhead.py's BatchProcess). stdin EOF ends the session.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def port_open(result: Any, port: int) -> bool:
    """bench/clients.py's port_open on a 1.x CallToolResult (that module imports the 2.x SDK)."""
    structured: dict[str, Any] = result.structuredContent or {}
    return not result.isError and any(
        p.get("port") == port and p.get("state") == "open"
        for host in structured.get("hosts", [])
        for p in host.get("ports", [])
    )


def _say(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


async def serve(config: dict[str, Any]) -> None:
    command = config["command"]
    params = StdioServerParameters(command=command[0], args=command[1:], env=config["env"])
    tool, arguments, port = config["tool"], config["arguments"], int(config["port"])
    loop = asyncio.get_running_loop()
    with open(config["errlog"], "a") as errlog:  # noqa: ASYNC230 - opened once, before the session
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            initialized = await session.initialize()
            dry = await session.call_tool(tool, {**arguments, "dry_run": True})
            if dry.isError or not dry.structuredContent:
                raise SystemExit(f"the dry run was refused: {dry.content}")
            _say(
                {"ready": True, "protocol_version": initialized.protocolVersion, "argv": dry.structuredContent["argv"]}
            )
            while line := await loop.run_in_executor(None, sys.stdin.readline):
                seconds, failures = [], 0
                for _ in range(int(line)):
                    started = time.perf_counter()
                    result = await session.call_tool(tool, arguments)
                    seconds.append(time.perf_counter() - started)
                    failures += 0 if port_open(result, port) else 1
                _say({"seconds": seconds, "failures": failures})


if __name__ == "__main__":
    asyncio.run(serve(json.loads(sys.argv[1])))
