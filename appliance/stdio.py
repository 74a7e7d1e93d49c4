"""stdin for the stdio transport, read by the event loop so that shutdown can interrupt it.

The SDK reads stdin in a worker thread; a thread blocked in read() cannot be cancelled, so a
SIGTERM while the client is idle would wait for the client's next byte. A pipe registered with
the loop has no such wait. Anything that is not a pipe (a file, a tty) falls back to the SDK.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server

# One JSON-RPC message per line; tool calls are small, and a line past this is refused.
MAX_LINE_BYTES = 4 * 1024 * 1024


class PipeLines:
    """Async iteration over the lines of a pipe, as the SDK's stdio transport consumes stdin."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
        pipe = os.fdopen(os.dup(self._fd), "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        try:
            while line := await reader.readline():
                yield line.decode("utf-8", errors="replace")
        finally:
            transport.close()


def _is_pipe(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


async def run_stdio(server: MCPServer[Any]) -> None:
    """Serve `server` over stdin/stdout until stdin closes (or the task is cancelled)."""
    if not _is_pipe(0):
        await server.run_stdio_async()
        return
    lowlevel = server._lowlevel_server  # SDK 2.3: run_stdio_async takes no stdin; tests cover this path
    async with stdio_server(stdin=PipeLines(0)) as (read_stream, write_stream):  # type: ignore[arg-type]
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
