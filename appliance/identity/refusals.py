"""HTTP 401 and 403 answers, audited and counted in one place, without the token.

The SDK's auth middleware writes those answers (with its `WWW-Authenticate` challenge); this
wrapper sits outside it and records each one. Why a token was refused is known only inside the
token verifier, which notes the rule here (`note_refusal`) for the request being handled.
"""

from __future__ import annotations

import contextlib
import logging
from contextvars import ContextVar
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.audit import AuditSink
from appliance.errors import ExecutionError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

# The rule of the current request's refused token; a dict, so the verifier's note reaches the
# wrapper whatever context the verifier runs in.
_noted: ContextVar[dict[str, str] | None] = ContextVar("auth_refusal", default=None)
AUTH_STATUSES = (401, 403)


class TokenRefusal(Exception):
    """Why a token was refused: `rule` goes to the audit line and the metric, never the token."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(f"{rule}: {reason}")
        self.rule = rule
        self.reason = reason


def note_refusal(rule: str) -> None:
    """Say why the token of the request being handled was refused (first note wins)."""
    holder = _noted.get()
    if holder is not None:
        holder.setdefault("rule", rule)


def _rule(status: int, scope: Scope, noted: dict[str, str]) -> str:
    if status == 403:
        return "insufficient_scope"  # the SDK's only 403 with a Bearer challenge
    if "rule" in noted:
        return noted["rule"]
    headers = dict(scope.get("headers") or [])
    return "bearer_token_invalid" if b"authorization" in headers else "bearer_token_missing"


class AuthRefusals:
    """Outermost ASGI wrapper: an audit line (`event: http_auth_refused`) and a count
    (`appliance_http_auth_refusals_total{status,rule}`) for every 401 and 403."""

    def __init__(self, app: ASGIApp, audit: AuditSink, registry: CollectorRegistry | None) -> None:
        from prometheus_client import Counter  # HTTP only: stdio starts without prometheus_client

        self._app = app
        self._audit = audit
        self.refusals = Counter(
            "appliance_http_auth_refusals",
            "HTTP requests answered 401 (no valid token) or 403 (a scope missing), by rule.",
            ["status", "rule"],
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        noted: dict[str, str] = {}
        reset = _noted.set(noted)

        async def watch(message: Message) -> None:
            # Only the auth middleware's answers carry a Bearer challenge (a 403 for a bad Origin
            # header does not).
            if (
                message["type"] == "http.response.start"
                and message["status"] in AUTH_STATUSES
                and any(name.lower() == b"www-authenticate" for name, _ in message.get("headers", []))
            ):
                self._record(message["status"], scope, noted)
            await send(message)

        try:
            await self._app(scope, receive, watch)
        finally:
            _noted.reset(reset)

    def _record(self, status: int, scope: Scope, noted: dict[str, str]) -> None:
        rule = _rule(status, scope, noted)
        self.refusals.labels(str(status), rule).inc()
        record = {
            "event": "http_auth_refused",
            "verdict": "refused",
            "status": status,
            "rule": rule,
            "method": scope.get("method"),
            "path": scope.get("path"),
            "client": (scope.get("client") or [None])[0],
        }
        log.warning("HTTP request refused", extra={"rule": rule, "status": status})
        with contextlib.suppress(ExecutionError):  # an unwritable audit shows in readiness; the refusal stands
            self._audit.write(record)
