"""stdin for the stdio transport, read by the event loop so that shutdown can interrupt it.

The SDK reads stdin in a worker thread; a thread blocked in read() cannot be cancelled, so a
SIGTERM while the client is idle would wait for the client's next byte. A pipe registered with
the loop has no such wait. Anything that is not a pipe (a file, a tty) falls back to the SDK.

Two start-up signals (appliance.startup): `on_ready` once the pipe is registered (the transport
can read its first message), `on_answer` once the first answer to anything but the handshake is
handed to the writer (the client has what it starts with; deferred work may now run).

A line over MAX_LINE_BYTES is not buffered: it is skipped to its newline and answered with a
JSON-RPC error (the request id read from its first bytes, when there is one), audited and
counted. The server lives on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp_types import INVALID_REQUEST, ErrorData, JSONRPCError, JSONRPCResponse

from appliance.compat import lowlevel_server
from appliance.errors import ApplianceError, ResourceExhaustedError

log = logging.getLogger(__name__)

# One JSON-RPC message per line; tool calls are small, and a line past this is refused.
MAX_LINE_BYTES = 4 * 1024 * 1024
READ_CHUNK_BYTES = 64 * 1024
# Where to look for the id of an oversized request: it is near the start in every client seen.
ID_SEARCH_BYTES = 4096
REQUEST_ID = re.compile(rb'"id"\s*:\s*(-?[0-9]{1,18}|"(?:[^"\\]|\\.){0,256}")')

OversizeHook = Callable[[str | int | None], Awaitable[None]]
Signal = Callable[[], None]


def request_id_of(head: bytes) -> str | int | None:
    """The JSON-RPC id in the first bytes of a message, if one can be read there."""
    found = REQUEST_ID.search(head[:ID_SEARCH_BYTES])
    if found is None:
        return None
    try:
        value: str | int = json.loads(found.group(1))
        if isinstance(value, str):
            value.encode("utf-8")  # a lone surrogate escape would fail when the reply is written
    except ValueError:  # an invalid escape, or an unencodable one: answer with a null id
        return None
    return value


class PipeLines:
    """Async iteration over the lines of a pipe, as the SDK's stdio transport consumes stdin."""

    def __init__(self, fd: int, on_ready: Signal | None = None) -> None:
        self._fd = fd
        self._on_ready = on_ready
        self.on_oversize: OversizeHook | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _refuse(self, head: bytes) -> None:
        if self.on_oversize is not None:
            await self.on_oversize(request_id_of(head))

    async def _lines(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_CHUNK_BYTES)
        pipe = os.fdopen(os.dup(self._fd), "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        if self._on_ready is not None:
            self._on_ready()
        pending = bytearray()
        discarding: bytes | None = None  # the head of an oversized line being skipped
        try:
            while chunk := await reader.read(READ_CHUNK_BYTES):
                start = 0
                while (newline := chunk.find(b"\n", start)) != -1:
                    piece = chunk[start : newline + 1]
                    start = newline + 1
                    if discarding is not None:
                        await self._refuse(discarding)
                        discarding = None
                    elif len(pending) + len(piece) > MAX_LINE_BYTES:
                        await self._refuse(bytes(pending[:ID_SEARCH_BYTES]) or piece[:ID_SEARCH_BYTES])
                        pending.clear()
                    else:
                        pending += piece
                        yield pending.decode("utf-8", errors="replace")
                        pending.clear()
                if discarding is None:
                    pending += chunk[start:]
                    if len(pending) > MAX_LINE_BYTES:
                        discarding = bytes(pending[:ID_SEARCH_BYTES])
                        pending.clear()
            if discarding is not None:
                await self._refuse(discarding)
            elif pending:
                yield pending.decode("utf-8", errors="replace")
        finally:
            transport.close()


def is_handshake_answer(message: SessionMessage) -> bool:
    """The answer to `initialize` (or 2026-07-28's `server/discover`): the only results that
    carry the server's `capabilities` at the top."""
    answer = message.message
    return isinstance(answer, JSONRPCResponse) and "capabilities" in answer.result


class AnswerWatch:
    """The SDK's write stream, telling `on_answer` once, when the first answer that is not the
    handshake's has been handed to the stdout writer. Everything else passes through as it is."""

    def __init__(self, inner: Any, on_answer: Signal) -> None:
        self._inner = inner
        self._on_answer: Signal | None = on_answer

    async def send(self, item: SessionMessage, /) -> None:
        await self._inner.send(item)
        if self._on_answer is None or not isinstance(item.message, JSONRPCResponse | JSONRPCError):
            return  # told already, or a request or notification of the server's own
        if not is_handshake_answer(item):
            on_answer, self._on_answer = self._on_answer, None
            on_answer()

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> AnswerWatch:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _is_pipe(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def oversize_error() -> ResourceExhaustedError:
    return ResourceExhaustedError(
        f"the message is larger than {MAX_LINE_BYTES // (1024 * 1024)} MiB and was not read",
        rule="message_too_large",
        recovery_suggestion="Send smaller requests: tool arguments are a few hundred bytes.",
    )


async def run_stdio(
    server: MCPServer[Any],
    refused: Callable[[ApplianceError, dict[str, Any]], None] | None = None,
    *,
    on_ready: Signal | None = None,
    on_answer: Signal | None = None,
) -> None:
    """Serve `server` over stdin/stdout until stdin closes (or the task is cancelled).

    `refused` records a refusal made here, before any tool is known (audit line and metric).
    `on_ready` and `on_answer`: the start-up signals (module docstring); a stdin that is not a
    pipe (the SDK reads it) gives only `on_ready`, just before the SDK starts reading.
    """
    if not _is_pipe(0):
        if on_ready is not None:
            on_ready()
        await server.run_stdio_async()
        return
    lowlevel = lowlevel_server(server)  # run_stdio_async takes no stdin of ours
    lines = PipeLines(0, on_ready)
    async with stdio_server(stdin=lines) as (read_stream, write_stream):  # type: ignore[arg-type]

        async def answer_oversize(request_id: str | int | None) -> None:
            error = oversize_error()
            log.warning("stdio message over the size limit refused", extra={"rule": error.rule})
            if refused is not None:
                refused(error, {"request_id": None, "jsonrpc_id": request_id, "tool": None})
            reply = JSONRPCError(
                jsonrpc="2.0",
                id=request_id,
                error=ErrorData(code=INVALID_REQUEST, message=error.message, data=error.to_dict()),
            )
            await write_stream.send(SessionMessage(reply))

        lines.on_oversize = answer_oversize
        answers = write_stream if on_answer is None else AnswerWatch(write_stream, on_answer)
        await lowlevel.run(read_stream, answers, lowlevel.create_initialization_options())
