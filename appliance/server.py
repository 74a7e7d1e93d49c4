"""The MCP front door: registers the three tools and translates errors at one boundary.

Tool parameters come from each tool's request model (one source for the input schema, the
validation and the docs); results are the tool's report model (its `outputSchema`).
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from appliance import __version__
from appliance.errors import ApplianceError
from appliance.logs import new_request_id, request_id_var
from appliance.service import ScanService
from appliance.tools import TOOLS, ToolSpec

log = logging.getLogger(__name__)

INSTRUCTIONS = """Network scanners for an authorised lab, behind a server-side scope policy.
Start with nmap_scan (connect) on one lab host or small block; use gobuster_scan on web ports it
finds; masscan_scan sweeps blocks fast when the deployment runs in raw mode. Every refusal names
the broken rule and what to do instead; dry_run shows the exact command without running it."""


def error_result(error: ApplianceError, spec: ToolSpec, target: str | None, request_id: str) -> CallToolResult:
    """A refusal or failure as a tool result: one whole JSON object in the text, and structured."""
    body = error.to_dict(tool=spec.name, target=target, request_id=request_id)
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(body))],
        structured_content=body,
        is_error=True,
    )


def _tool_function(spec: ToolSpec, service: ScanService) -> Any:
    """Build the async function the SDK registers, its signature taken from the request model."""

    async def call_tool(ctx: Context, **arguments: Any) -> CallToolResult:
        request_id = new_request_id()
        token = request_id_var.set(request_id)
        target = arguments.get("target")
        try:
            request = spec.request_model.model_validate(arguments)

            async def progress(done: float, total: float | None, message: str | None) -> None:
                await ctx.report_progress(done, total, message)

            log.info("tool call", extra={"tool": spec.name, "target": target})
            report = await service.call(spec, request, request_id, progress)
        except ApplianceError as exc:
            log.info(
                "tool call refused or failed", extra={"tool": spec.name, "rule": exc.rule, "error_type": exc.error_type}
            )
            return error_result(exc, spec, target, request_id)
        finally:
            request_id_var.reset(token)
        return CallToolResult(
            content=[TextContent(type="text", text=spec.summarize(report))],
            structured_content=report.model_dump(mode="json"),
        )

    parameters = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)]
    for name, field in spec.request_model.model_fields.items():
        # A required field has no default to carry its FieldInfo, so its constraints and
        # description ride in the annotation instead.
        if field.is_required():
            annotation: Any = Annotated[(field.annotation, *field.metadata, Field(description=field.description))]
            default: Any = inspect.Parameter.empty
        else:
            annotation, default = field.annotation, field
        parameters.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
        )
    return_type = Annotated[CallToolResult, spec.result_model]
    call_tool.__signature__ = inspect.Signature(parameters, return_annotation=return_type)  # type: ignore[attr-defined]
    call_tool.__annotations__ = {"ctx": Context, "return": return_type}
    call_tool.__name__ = spec.name
    return call_tool


def build_server(service: ScanService) -> MCPServer[Any]:
    @asynccontextmanager
    async def lifespan(_: MCPServer[Any]) -> AsyncIterator[dict[str, Any]]:
        yield {}

    server: MCPServer[Any] = MCPServer(
        name="mcp-scanner-appliance",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
    )
    for spec in TOOLS.values():
        server.add_tool(
            _tool_function(spec, service),
            name=spec.name,
            description=spec.description,
            annotations=ToolAnnotations(
                read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=True
            ),
        )
    return server
