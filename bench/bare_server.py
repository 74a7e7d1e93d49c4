"""A bare SDK 2.3 server for the host comparison: the floor of what the SDK itself costs.

The SDK's MCPServer over stdio with one tool, `nmap`, that runs the argv given in BENCH_BARE_ARGV
(JSON: the appliance's own argv for the benchmark's call) through an asyncio subprocess and
returns its stdout. No validation, policy, audit, job store or parsing: whatever the appliance
takes beyond this server's start-up and per-call time is the appliance's own.

Run as `python bench/bare_server.py` (a script, so that nothing of bench/ is imported).
"""

from __future__ import annotations

import asyncio
import json
import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("bare-sdk-server")
ARGV: list[str] = json.loads(os.environ["BENCH_BARE_ARGV"])


@server.tool()
async def nmap() -> str:
    """Run the benchmark's nmap argv once and return its standard output."""
    process = await asyncio.create_subprocess_exec(
        *ARGV, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    stdout, _ = await process.communicate()
    return stdout.decode(errors="replace")


if __name__ == "__main__":
    server.run("stdio")
