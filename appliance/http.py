"""Streamable HTTP transport: the SDK's Starlette app behind bearer-token auth, for uvicorn."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from appliance.auth import TokenSource
from appliance.config import Settings
from appliance.errors import ConfigError
from appliance.server import PRINCIPAL_SCOPE_KEY

log = logging.getLogger(__name__)

# uvicorn waits for open streams on shutdown for as long as they last by default; a scanner
# appliance must stop promptly when told to.
GRACEFUL_SHUTDOWN_SECONDS = 1
# MCP requests are small JSON documents; anything larger is refused before it is parsed.
MAX_REQUEST_BODY_BYTES = 256 * 1024
# A session a client abandons without DELETE holds memory until it idles out (SDK default 30 min).
SESSION_IDLE_TIMEOUT_SECONDS = 300
# Live handshake-era sessions at once; a client holding a token cannot grow memory without bound.
MAX_SESSIONS = 256
UNAUTHORIZED = b'{"error": "unauthorized", "message": "a valid bearer token is required"}'


class BearerAuth:
    """Refuse every HTTP request without a valid `Authorization: Bearer <token>` header.

    The matching token's principal is put on the ASGI scope for the audit trail. Tokens are
    looked up in the source's current table on every request, so a reload takes effect at once.
    """

    def __init__(self, app: ASGIApp, tokens: TokenSource) -> None:
        self._app = app
        self._tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        scheme, _, presented = Headers(scope=scope).get("authorization", "").partition(" ")
        principal = self._tokens.table.principal_for(presented.strip()) if scheme.lower() == "bearer" else None
        if principal is not None:
            scope[PRINCIPAL_SCOPE_KEY] = principal
            await self._app(scope, receive, send)
            return
        log.warning("HTTP request refused: missing or wrong bearer token", extra={"path": scope.get("path")})
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b'Bearer realm="mcp-scanner-appliance"'),
                    (b"content-length", str(len(UNAUTHORIZED)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": UNAUTHORIZED})


class ActiveRequests:
    """Counts POST requests whose responses have not finished (a tool result may be one).

    Shutdown waits for this to reach zero, and for a short quiet spell after the last one, before
    telling uvicorn to exit: sse-starlette ends every open event stream the moment uvicorn is told
    to exit, and a result still in one would be lost; and a client that just got a result may ask
    a follow-up at once (the SDK client fetches tools/list to validate a result against its output
    schema), and a refused follow-up makes it cancel its other calls on that connection, results
    in flight included. Long-lived GET listen streams are not counted; they carry no results.
    """

    def __init__(self, app: ASGIApp, clock: Callable[[], float] = time.monotonic) -> None:
        self._app = app
        self._clock = clock
        self.count = 0
        self.last_activity = clock()

    def quiet_for(self, seconds: float) -> bool:
        """No POST open, and none started or finished in the last `seconds`."""
        return self.count == 0 and self._clock() - self.last_activity >= seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self._app(scope, receive, send)
            return
        self.count += 1
        self.last_activity = self._clock()
        try:
            await self._app(scope, receive, send)
        finally:
            self.count -= 1
            self.last_activity = self._clock()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def build_http_app(server: MCPServer[Any], settings: Settings, tokens: TokenSource) -> ActiveRequests:
    if not len(tokens.table) and not (settings.insecure_http_no_auth and _is_loopback(settings.host)):
        raise ConfigError(
            "the HTTP transport needs a bearer token (APPLIANCE_AUTH_TOKEN, /run/secrets/appliance_auth_token "
            "or an APPLIANCE_AUTH_TOKENS_FILE)",
            rule="http_requires_token",
            recovery_suggestion="Provide a token; only a loopback test server may set APPLIANCE_INSECURE_HTTP_NO_AUTH.",
        )
    app = server.streamable_http_app(
        streamable_http_path=settings.http_path,
        max_request_body_size=MAX_REQUEST_BODY_BYTES,
        session_idle_timeout=SESSION_IDLE_TIMEOUT_SECONDS,
        max_sessions=MAX_SESSIONS,
        transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=settings.allowed_hosts,
            allowed_origins=settings.allowed_origins,
        ),
        host=settings.host,
    )
    if not len(tokens.table):
        log.warning("INSECURE: HTTP transport without authentication (loopback test mode)")
        return ActiveRequests(app)
    return ActiveRequests(BearerAuth(app, tokens))


class QuietUvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: the appliance decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def uvicorn_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        lifespan="on",
    )
