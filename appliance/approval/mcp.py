"""Approval over MCP, in both protocol eras: which way this call's client can be asked, the
2025-11-25 form elicitation, and the 2026-07-28 input-required result and its retry's answer.

The same primitives MCPServer's own resolvers use (mcp/server/mcpserver/resolve.py): the era from
the request's protocol version, form support from the client's declared capabilities, the
elicitation schema rendered by the SDK. The SDK's request-state boundary seals the state we mint
(bound to the tool, the arguments' digest and the principal) and hands a retry's state back plain.
"""

from __future__ import annotations

from typing import Any

from mcp.server.context import ServerRequestContext
from mcp.server.elicitation import AcceptedElicitation, elicit_with_validation, render_elicitation_schema
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CallToolRequestParams,
    ClientCapabilities,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    InputRequiredResult,
    InputResponses,
)
from mcp_types.version import is_version_at_least
from pydantic import ValidationError

from appliance.approval.model import (
    ApprovalForm,
    ApprovalRequest,
    Approver,
    Decision,
    Resumed,
    decision_of,
    parse_state,
)

# The input_requests key of the approval question (one question per call).
APPROVAL_KEY = "scan_approval"
# First protocol revision whose tools/call asks through an input-required result.
INPUT_REQUIRED_VERSION = "2026-07-28"
# An answer's error text kept in the audit line and the job's error, at most.
DETAIL_CHARS = 200


def can_show_form(capabilities: ClientCapabilities | None) -> bool:
    """Form elicitation declared: a bare `elicitation: {}` (the shape before modes) counts, url-only does not."""
    elicitation = capabilities.elicitation if capabilities is not None else None
    return elicitation is not None and (elicitation.form is not None or elicitation.url is None)


def approver_for(ctx: ServerRequestContext[Any, Any], params: CallToolRequestParams, principal: str) -> Approver:
    """How this call's client can answer: asked now (2025-11-25), by an input-required result and
    a retry (2026-07-28; `resumed` on the retry), or not at all."""
    if not can_show_form(ctx.session.client_capabilities):
        return Approver("unavailable", principal)
    if is_version_at_least(ctx.protocol_version, INPUT_REQUIRED_VERSION):
        state = None if params.request_state is None else parse_state(params.request_state)
        resumed = None if state is None else Resumed(state, answer_of(params.input_responses, principal))
        return Approver("input_required", principal, resumed=resumed)
    if not ctx.session.can_send_request:
        # A handshake-era request without a back channel (a JSON-response HTTP post) cannot ask mid-call.
        return Approver("unavailable", principal)

    async def ask(request: ApprovalRequest) -> Decision:
        try:
            result = await elicit_with_validation(
                ctx.session, request.message(), ApprovalForm, related_request_id=ctx.request_id
            )
        except (MCPError, ValueError) as exc:  # the client's error, or an answer outside the form
            return Decision("unanswerable", principal, detail=str(exc)[:DETAIL_CHARS])
        form = result.data if isinstance(result, AcceptedElicitation) else None
        return decision_of(result.action, form, principal)

    return Approver("ask", principal, ask=ask)


def answer_of(responses: InputResponses | None, principal: str) -> Decision | None:
    """The decision a 2026-07-28 retry brings; None when it brings no answer to our question."""
    answer = (responses or {}).get(APPROVAL_KEY)
    if not isinstance(answer, ElicitResult):
        return None
    form = None
    if answer.action == "accept":
        try:
            form = ApprovalForm.model_validate(answer.content or {})
        except ValidationError:
            return Decision("unanswerable", principal, detail="the answer does not match the approval form")
    return decision_of(answer.action, form, principal)


def input_required(request: ApprovalRequest) -> InputRequiredResult:
    """The 2026-07-28 answer of a call awaiting approval: the question, and the state naming the job."""
    question = ElicitRequest(
        params=ElicitRequestFormParams(
            message=request.message(), requested_schema=render_elicitation_schema(ApprovalForm)
        )
    )
    return InputRequiredResult(input_requests={APPROVAL_KEY: question}, request_state=request.state())
