"""The MCP front door: publishes the tools the policy enables and turns each call into one service call.

`tools/list` and `tools/call` are the appliance's own low-level handlers, not MCPServer's tool
manager: the raw `arguments` go straight to the service, which validates them once with the
tool's request model (unknown arguments refused, nothing re-parsed, nothing dropped), and the
report goes back as built (no second validation of our own result). MCPServer still provides
the transports, sessions, auth and subscriptions around them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.subscriptions import InMemorySubscriptionBus, ToolsListChanged
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CallToolRequestParams,
    CallToolResult,
    InputRequiredResult,
    ListToolsResult,
    PaginatedRequestParams,
    ResourceLink,
    TextContent,
    Tool,
    ToolAnnotations,
)
from pydantic import BaseModel

from appliance import __version__
from appliance.approval.keys import load_keys, request_state_security
from appliance.approval.mcp import approver_for, input_required
from appliance.auth import STATIC_TOKENS_AUTH
from appliance.catalog import CANCEL_JOB, READ_JOBS, tool_definition, without_argument
from appliance.compat import lowlevel_server, session_connection
from appliance.errors import ApplianceError, NotFoundError, UnexpectedError
from appliance.identity.scopes import check_scopes, may_list
from appliance.jobs.diff import ScanDiff
from appliance.jobs.model import UNFINISHED, Job
from appliance.jobs.queries import (
    CancelScanRequest,
    DiffScansRequest,
    GetScanRequest,
    JobQueries,
    ListScansRequest,
    ScanList,
)
from appliance.jobs.views import error_of, report_of
from appliance.logs import new_request_id, request_id_var
from appliance.policy.engagement_checks import Caller, engagements_of
from appliance.resources import ScanResources, resource_link
from appliance.results import AnyScanResult, ScanReport
from appliance.service import ScanService
from appliance.tools import TOOLS, ToolSpec
from appliance.tools.arguments import parse_arguments

log = logging.getLogger(__name__)

INSTRUCTIONS = """Network scanners for an authorised lab, behind a server-side scope policy.
Start with nmap_scan (connect) on one lab host or small block; use gobuster_scan on web ports it
finds; masscan_scan sweeps blocks fast when the deployment runs in raw mode. Every refusal names
the broken rule and what to do instead; dry_run shows the exact command without running it."""


@dataclass(frozen=True)
class JobTool:
    """A tool that follows scans (no scanner of its own): always listed, whatever the policy."""

    description: str
    request_model: type[BaseModel]
    result_model: type[BaseModel] | None
    annotations: ToolAnnotations


JOB_TOOLS: dict[str, JobTool] = {
    "get_scan": JobTool(
        "A scan's status and findings (so far, while it runs); wait_seconds waits for it to finish. "
        "Cancelling this call never stops the scan.",
        GetScanRequest,
        AnyScanResult,
        READ_JOBS,
    ),
    "cancel_scan": JobTool(
        "Stop a running scan by scan_id; what it found so far is kept and returned (get_scan's shape).",
        CancelScanRequest,
        None,  # get_scan's shape; one copy of that schema in tools/list is enough
        CANCEL_JOB,
    ),
    "list_scans": JobTool(
        "Your scans, newest first, filtered by tool, target or status; paged with cursor.",
        ListScansRequest,
        ScanList,
        READ_JOBS,
    ),
    "diff_scans": JobTool(
        "What changed between two scans of one tool and target: hosts, open ports, services, products, versions.",
        DiffScansRequest,
        ScanDiff,
        READ_JOBS,
    ),
}


def error_result(error: ApplianceError, tool: str, target: str | None, request_id: str) -> CallToolResult:
    """A refusal or failure as a tool result: one whole JSON object in the text, and structured."""
    return error_body_result(error.to_dict(tool=tool, target=target, request_id=request_id))


def error_body_result(body: dict[str, Any]) -> CallToolResult:
    """An error object as a tool result; a failed scan's (it has a scan_id) links to its resource."""
    content: list[TextContent | ResourceLink] = [TextContent(type="text", text=json.dumps(body))]
    if isinstance(body.get("scan_id"), str):
        content.append(resource_link(body["scan_id"], f"{body.get('tool')} {body.get('target')}"))
    return CallToolResult(content=content, structured_content=body, is_error=True)


def structured(text: str, body: BaseModel) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content=body.model_dump(mode="json")
    )


def scan_result(report: ScanReport, spec: ToolSpec) -> CallToolResult:
    """A scan's result; an unfinished one says how to follow it instead of what it found."""
    if report.status in UNFINISHED:
        shown = "" if report.progress is None else f" ({report.progress:.0f}% done)"
        text = (
            f"{report.tool} {report.target}: {report.status.upper()}{shown}, scan_id {report.scan_id}. The scan "
            f"goes on; call get_scan with this scan_id (wait_seconds up to the policy's limit) in about "
            f"{report.retry_after_seconds} s."
        )
    else:
        text = spec.summarize(report)
    content: list[TextContent | ResourceLink] = [TextContent(type="text", text=text)]
    if report.scan_id is not None:  # a dry run is no job
        content.append(resource_link(report.scan_id, f"{report.tool} {report.target}"))
    return CallToolResult(content=content, structured_content=report.as_json())


def _user(ctx: ServerRequestContext[Any, Any]) -> AuthenticatedUser | None:
    """The verified token's user (set by the SDK's bearer auth as the ASGI `user`); None on stdio."""
    scope = getattr(ctx.request, "scope", None)
    user = scope.get("user") if isinstance(scope, dict) else None
    return user if isinstance(user, AuthenticatedUser) else None


def _principal(ctx: ServerRequestContext[Any, Any]) -> str | None:
    user = _user(ctx)
    return None if user is None else user.access_token.client_id


def _scopes(ctx: ServerRequestContext[Any, Any]) -> frozenset[str] | None:
    """The verified token's scopes; None without a token (stdio, the loopback no-auth test mode),
    where the one caller is not limited by scopes."""
    user = _user(ctx)
    return None if user is None else frozenset(user.access_token.scopes)


def _caller(ctx: ServerRequestContext[Any, Any], service: ScanService) -> Caller:
    """The caller as engagements see it: the verified token's principal, subject, claims and scopes;
    without a token (stdio, the loopback test mode) the transport's one principal."""
    user = _user(ctx)
    if user is None:
        return service.caller(None)
    token = user.access_token
    return Caller(token.client_id, token.subject, dict(token.claims or {}), tuple(token.scopes))


def _target(arguments: Mapping[str, Any] | None) -> str | None:
    """The target as the caller sent it, for the error object (only if it is a string)."""
    target = arguments.get("target") if isinstance(arguments, Mapping) else None
    return target if isinstance(target, str) else None


class SessionTracker:
    """Remembers live connections so a tool-list change can be announced on each."""

    def __init__(self) -> None:
        self.connections: weakref.WeakSet[Any] = weakref.WeakSet()

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        connection = session_connection(ctx.session)
        if ctx.request_id is not None and connection is not None:
            self.connections.add(connection)
        return await call_next(ctx)


class ScannerServer:
    """The MCP server plus the set of tools the current policy enables."""

    def __init__(
        self, service: ScanService, token_verifier: TokenVerifier | None = None, auth: AuthSettings | None = None
    ) -> None:
        """`auth` is the OAuth resource server's settings (appliance.identity.oauth); static tokens' by default."""
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
            auth=None if token_verifier is None else auth or STATIC_TOKENS_AUTH,
            # Fleet fronts share one key ring: the state one front seals opens on the front that
            # gets the retry (README "Approval"). Without a key file: the SDK's per-process key.
            request_state_security=request_state_security(load_keys(service.settings.request_state_key_file)),
        )
        self.tools: dict[str, Tool] = {}  # what tools/list shows now, by name
        self.queries = JobQueries(service.jobs, lambda: service.store.current.policy)
        lowlevel = lowlevel_server(self.mcp)
        lowlevel.add_request_handler("tools/list", PaginatedRequestParams, self._list_tools)
        lowlevel.add_request_handler("tools/call", CallToolRequestParams, self._call_tool)
        # The 2026-07-28 HTTP transport checks Mcp-Param headers against the input schema.
        lowlevel.get_tool_input_schema = self._input_schema
        # scan://{id} resources and their update notices (both protocol eras) at each job state change.
        self.resources = ScanResources(service, self.bus, _principal, caller_of=lambda ctx: _caller(ctx, service))
        self.resources.register(lowlevel)
        service.jobs.on_change.append(self.resources.job_changed)
        self.sync_tools()

    def _description(self, spec: ToolSpec) -> str:
        reason = self.service.unavailable.get(spec.name)
        if reason is None and spec.name == "masscan_scan" and self.service.settings.privilege_mode != "raw":
            reason = "connect mode: no raw sockets"
        return spec.description if reason is None else f"UNAVAILABLE in this deployment ({reason}). {spec.description}"

    def sync_tools(self) -> bool:
        """Publish exactly the tools the policy enables, each described as it stands now.

        An unusable tool stays listed, saying why, and refuses calls with that reason: an agent
        learns it once instead of guessing from an unknown-tool error. True when the list changed.
        """
        policy = self.service.store.current.policy
        wanted = {
            name: tool_definition(name, self._description(spec), spec.request_model, spec.result_model)
            for name, spec in TOOLS.items()
            if getattr(policy.tools, name).enabled
        }
        if policy.engagements is None:
            # Without engagements the list is what it always was: no `engagement` argument shown.
            wanted = {name: without_argument(tool, "engagement") for name, tool in wanted.items()}
        for name, tool in JOB_TOOLS.items():
            wanted[name] = tool_definition(
                name, tool.description, tool.request_model, tool.result_model, tool.annotations
            )
        changed = wanted != self.tools
        self.tools = wanted
        return changed

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        tool = self.tools.get(name)
        return None if tool is None else tool.input_schema

    async def _list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        caller = _caller(ctx, self.service)
        scopes = _scopes(ctx)
        return ListToolsResult(tools=[tool for tool in self.tools_for(caller) if may_list(tool.name, scopes)])

    def tools_for(self, caller: Caller) -> list[Tool]:
        """The tools `caller` may use: with engagements, only the scan tools of its engagements
        (whatever their windows: a refusal says when); the job tools always. (Scopes filter further.)"""
        policy = self.service.store.current.policy
        if policy.engagements is None:
            return list(self.tools.values())
        usable = {tool for engagement in engagements_of(policy, caller) for tool in engagement.tools}
        return [tool for name, tool in self.tools.items() if name in JOB_TOOLS or name in usable]

    async def _call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: CallToolRequestParams
    ) -> CallToolResult | InputRequiredResult:
        request_id = new_request_id()
        token = request_id_var.set(request_id)
        try:
            return await self._dispatch(ctx, params, request_id)
        finally:
            request_id_var.reset(token)

    async def _dispatch(
        self, ctx: ServerRequestContext[Any, Any], params: CallToolRequestParams, request_id: str
    ) -> CallToolResult | InputRequiredResult:
        principal = _principal(ctx)
        target = _target(params.arguments)
        if params.name in JOB_TOOLS:
            return await self._job_tool(ctx, params, request_id, principal)
        # A tool the policy disabled is known: the service refuses it with `tool_disabled`.
        if params.name not in TOOLS:
            error = NotFoundError(
                f"no tool named {params.name[:64]!r} here; tools: {', '.join(self.tools) or 'none'}",
                rule="tool_unknown",
                recovery_suggestion="Call tools/list and use one of the tools it shows.",
            )
            self.service.refuse(
                error,
                {"request_id": request_id, "principal": principal, "tool": params.name[:64]},
                tool=None,
            )
            # The protocol's answer to an unknown tool, with the appliance's error object as data.
            raise MCPError(code=INVALID_PARAMS, message=error.message, data=error.to_dict(request_id=request_id))
        spec = TOOLS[params.name]

        async def progress(done: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(done, total, message)

        log.info("tool call", extra={"tool": spec.name, "target": target})
        approver = approver_for(ctx, params, self.service.owner(principal))
        try:
            report = await self.service.call(
                spec,
                params.arguments or {},
                request_id,
                progress,
                principal=principal,
                caller=_caller(ctx, self.service),
                scopes=_scopes(ctx),
                approver=approver,
            )
        except ApplianceError as exc:
            log.info(
                "tool call refused or failed", extra={"tool": spec.name, "rule": exc.rule, "error_type": exc.error_type}
            )
            return error_result(exc, spec.name, target, request_id)
        except Exception:  # a bug must not reach the caller as a traceback; it is logged in full
            log.exception("tool call failed unexpectedly", extra={"tool": spec.name})
            return error_result(UnexpectedError(request_id), spec.name, target, request_id)
        question = self.service.question(report.scan_id) if report.status == "awaiting_approval" else None
        if approver.mode == "input_required" and question is not None:
            # 2026-07-28: the question goes back now; the client's retry brings the answer.
            return input_required(question)
        return scan_result(report, spec)

    async def _job_tool(
        self, ctx: ServerRequestContext[Any, Any], params: CallToolRequestParams, request_id: str, principal: str | None
    ) -> CallToolResult:
        name = params.name
        scopes = _scopes(ctx)
        owner = self.service.viewer(_caller(ctx, self.service))
        record: dict[str, Any] = {"request_id": request_id, "principal": principal, "tool": name}

        async def progress(done: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(done, total, message)

        try:
            request: Any = parse_arguments(JOB_TOOLS[name].request_model, params.arguments or {})
            record["arguments"] = request.model_dump()
            check_scopes(name, request, scopes)
            if name == "get_scan":
                return self.job_result(await self.queries.get_scan(request, owner, progress))
            if name == "cancel_scan":
                job, stopped = await self.queries.cancel_scan(request, owner)
                self.service.audit.write({**record, "event": "cancel", "scan_id": job.scan_id, "stopped": stopped})
                return self.job_result(job)
            if name == "list_scans":
                listing = self.queries.list_scans(request, owner)
                text = f"{len(listing.scans)} scan(s)" + (", more with next_cursor" if listing.next_cursor else "")
                return structured(text, listing)
            diff = self.queries.diff_scans(request, owner)
            return structured(f"{diff.scan_id} against {diff.against_scan_id}: {diff.summary}", diff)
        except ApplianceError as exc:
            record.setdefault("arguments", params.arguments)
            self.service.refuse(exc, record, tool=name)
            return error_result(exc, name, None, request_id)

    def job_result(self, job: Job) -> CallToolResult:
        """A job as a tool result: its error object when it failed, else its (partial) report."""
        error = error_of(job)
        if error is not None:
            return error_body_result(error)
        spec = TOOLS[job.tool]
        return scan_result(report_of(job, spec.result_model, time.time()), spec)

    async def announce_tools_changed(self) -> None:
        """Tell clients the tool list changed: listen streams (2026-07-28) and handshake sessions."""
        await self.bus.publish(ToolsListChanged())
        for connection in list(self.sessions.connections):
            # A connection whose client went away fails to send; that client needs no notice.
            with contextlib.suppress(Exception):
                await connection.send_tool_list_changed()


def build_server(service: ScanService) -> MCPServer[Any]:
    return ScannerServer(service).mcp
