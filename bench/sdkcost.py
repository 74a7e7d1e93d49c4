"""What the SDK's own per-call steps cost on real results, timed in this process.

The server-side stages ("call timings") end when the appliance's handler returns; the client's
clock also covers what the SDK does around that. Three of those steps are measured here on the
`CallToolResult`s the run received (the same pydantic models and SDK version as in the image:
one lock), each a median of REPEATS runs per result, with time.perf_counter:

- serialise (server side, after the handler): the result's dump
  (`model_dump(by_alias=True, mode="json", exclude_none=True)`, as mcp.server.runner does), the
  per-version wire sieve (`mcp_types.methods.serialize_server_result`) and the JSON-RPC response
  line (`JSONRPCResponse.model_dump_json(by_alias=True, exclude_unset=True)`, as the stdio
  writer does);
- client parse: the client's check of the raw result against the negotiated version
  (`mcp_types.methods.validate_server_result`) and its parse into `CallToolResult`;
- client validation: the 2.x client's output-schema check, `ClientSession.validate_tool_result`
  on the live session (its compiled validator is cached after the first call, as in a run).

JSON text parsing on the client (json.loads of the line) is not separated: it stays in dispatch.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

from mcp import Client
from mcp_types import CallToolResult, JSONRPCResponse
from mcp_types.methods import serialize_server_result, validate_server_result

from bench.stats import percentile

METHOD = "tools/call"
REPEATS = 50


def _median_ms(step: Callable[[], object], repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    return percentile(seconds, 50) * 1000


def serialise(result: CallToolResult, version: str) -> str:
    """The response line the server's SDK writes for `result` (the steps it takes)."""
    dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    wire = serialize_server_result(METHOD, version, dumped)
    return JSONRPCResponse(jsonrpc="2.0", id=1, result=wire).model_dump_json(by_alias=True, exclude_unset=True)


def client_parse(raw: dict[str, Any], version: str) -> CallToolResult:
    """What the client does with the raw result before the schema check."""
    validate_server_result(METHOD, version, raw)
    return CallToolResult.model_validate(raw, by_name=False)


async def measure(
    client: Client, tool: str, results: Sequence[CallToolResult], repeats: int = REPEATS
) -> dict[str, Any]:
    """Medians (ms) over `results` of each step's per-result median."""
    version = client.protocol_version
    if not results or version is None:
        return {"serialise_ms": None, "client_parse_ms": None, "client_validation_ms": None, "results": 0}
    serialise_ms, parse_ms, validation_ms = [], [], []
    for result in results:
        serialise_ms.append(_median_ms(functools.partial(serialise, result, version), repeats))
        raw = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        parse_ms.append(_median_ms(functools.partial(client_parse, raw, version), repeats))
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            await client.session.validate_tool_result(tool, result)
            seconds.append(time.perf_counter() - started)
        validation_ms.append(percentile(seconds, 50) * 1000)
    return {
        "serialise_ms": round(percentile(serialise_ms, 50), 3),
        "client_parse_ms": round(percentile(parse_ms, 50), 3),
        "client_validation_ms": round(percentile(validation_ms, 50), 3),
        "results": len(results),
        "repeats": repeats,
        "protocol_version": version,
    }
