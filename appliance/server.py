"""The MCP front door: registers the tools, follows the policy's tool list, maps errors once.

Tool parameters come from each tool's request model (one source for the input schema, the
validation and the docs); results are the tool's report model (its `outputSchema`).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import weakref
from typing import Annotated, Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import TokenVerifier
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.subscriptions import InMemorySubscriptionBus, ToolsListChanged
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from appliance import __version__
from appliance.auth import STATIC_TOKENS_AUTH
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


def _principal(ctx: Context) -> str | None:
    """The verified token's principal (set by the SDK's bearer auth as the ASGI `user`); None on stdio."""
    request = ctx.request_context.request
    scope = getattr(request, "scope", None)
    user = scope.get("user") if isinstance(scope, dict) else None
    return user.access_token.client_id if isinstance(user, AuthenticatedUser) else None


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
            report = await service.call(spec, request, request_id, progress, principal=_principal(ctx))
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


class SessionTracker:
    """Remembers live connections so a tool-list change can be announced on each.

    The SDK builds a new ServerSession per request; the connection behind it lives as long as
    the client does. SDK 2.3 offers middleware no public accessor for it, hence `_connection`
    (the SDK is pinned; tests/test_app.py fails if this stops working).
    """

    def __init__(self) -> None:
        self.connections: weakref.WeakSet[Any] = weakref.WeakSet()

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        connection = getattr(ctx.session, "_connection", None)
        if ctx.request_id is not None and connection is not None:
            self.connections.add(connection)
        return await call_next(ctx)


class ScannerServer:
    """The MCP server plus the set of tools the current policy enables."""

    def __init__(self, service: ScanService, token_verifier: TokenVerifier | None = None) -> None:
        self.service = service
        self.bus = InMemorySubscriptionBus()
        self.sessions = SessionTracker()
        self.mcp: MCPServer[Any] = MCPServer(
            name="mcp-scanner-appliance",
            version=__version__,
            instructions=INSTRUCTIONS,
            subscriptions=self.bus,
            middleware=[self.sessions],
            token_verifier=token_verifier,
            auth=None if token_verifier is None else STATIC_TOKENS_AUTH,
        )
        self.registered: dict[str, str] = {}  # tool name -> the description it was registered with
        self.sync_tools()

    def _description(self, spec: ToolSpec) -> str:
        reason = self.service.unavailable.get(spec.name)
        if reason is None and spec.name == "masscan_scan" and self.service.settings.privilege_mode != "raw":
            reason = "connect mode: no raw sockets"
        return spec.description if reason is None else f"UNAVAILABLE in this deployment ({reason}). {spec.description}"

    def sync_tools(self) -> bool:
        """Register exactly the tools the policy enables, each described as it stands now.

        An unusable tool stays listed, saying why, and refuses calls with that reason: an agent
        learns it once instead of guessing from an unknown-tool error.
        """
        policy = self.service.store.current.policy
        wanted = {name: self._description(TOOLS[name]) for name in TOOLS if getattr(policy.tools, name).enabled}
        for name in set(self.registered) - set(wanted):
            self.mcp.remove_tool(name)
        for name in sorted(wanted):
            if self.registered.get(name) == wanted[name]:
                continue
            if name in self.registered:
                self.mcp.remove_tool(name)
            spec = TOOLS[name]
            self.mcp.add_tool(
                _tool_function(spec, self.service),
                name=spec.name,
                description=wanted[name],
                annotations=ToolAnnotations(
                    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=True
                ),
            )
        changed = wanted != self.registered
        self.registered = wanted
        return changed

    async def announce_tools_changed(self) -> None:
        """Tell clients the tool list changed: listen streams (2026-07-28) and handshake sessions."""
        await self.bus.publish(ToolsListChanged())
        for connection in list(self.sessions.connections):
            # A connection whose client went away fails to send; that client needs no notice.
            with contextlib.suppress(Exception):
                await connection.send_tool_list_changed()


def build_server(service: ScanService) -> MCPServer[Any]:
    return ScannerServer(service).mcp
