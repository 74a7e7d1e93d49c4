"""Streamable HTTP transport: the SDK's Starlette app (its bearer auth, our session quota), for uvicorn."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator

import uvicorn
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types import INTERNAL_ERROR
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from appliance.auth import TokenSource
from appliance.compat import session_owners
from appliance.config import Settings
from appliance.errors import ConfigError, ExecutionError, ResourceExhaustedError
from appliance.identity.oauth import OAuthResource, metadata_routes
from appliance.identity.refusals import AuthRefusals
from appliance.server import ScannerServer

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


class SessionQuota:
    """Refuse a new MCP session when all principals, or this one, already hold their share.

    The limits (policy `limits.concurrency.global.sessions`, `...per_principal.sessions`) are read on
    every opening request, so a reload applies to the next session. Only handshake-era requests
    open sessions (the 2026-07-28 era has none). The principal is the verified token's, set on
    the ASGI `user` by the SDK's auth middleware, which runs before this one.

    Not covered: two opening requests of one principal that race each other may both pass
    (the SDK registers a session only once its opening request is admitted).
    """

    def __init__(self, app: ASGIApp, scanner: ScannerServer) -> None:
        self._app = app
        self._scanner = scanner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not _opens_session(Headers(scope=scope)):
            await self._app(scope, receive, send)
            return
        user = scope.get("user")
        if not isinstance(user, AuthenticatedUser) and self._scanner.mcp.settings.auth is not None:
            await self._app(scope, receive, send)  # the SDK answers 401 with its Bearer challenge
            return
        principal = user.access_token.client_id if isinstance(user, AuthenticatedUser) else None
        refusal = self._refusal(principal)
        if refusal is None:
            await self._app(scope, receive, send)
            return
        log.warning("new MCP session refused", extra={"rule": refusal.rule, "principal": principal})
        with contextlib.suppress(ExecutionError):  # an unwritable audit shows in readiness; the refusal stands
            self._scanner.service.audit.write(
                {"event": "session_refused", "principal": principal, "verdict": "refused", "rule": refusal.rule}
            )
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": None,
                "error": {"code": INTERNAL_ERROR, "message": refusal.message, "data": refusal.to_dict()},
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _refusal(self, principal: str | None) -> ResourceExhaustedError | None:
        """The first session limit a new session of `principal` would break: global, then per principal."""
        limits = self._scanner.service.store.current.policy.limits.concurrency
        owners = session_owners(self._scanner.mcp)
        if len(owners) >= limits.global_.sessions:
            return ResourceExhaustedError(
                f"{len(owners)} MCP sessions are open, the most this appliance allows",
                rule="sessions_full",
                recovery_suggestion="Close sessions you no longer use (HTTP DELETE) or retry later.",
            )
        held = sum(1 for owner in owners if owner == principal)
        if principal is not None and held >= limits.per_principal.sessions:
            return ResourceExhaustedError(
                f"principal {principal} already holds {held} open MCP sessions, its limit",
                rule="principal_sessions_full",
                recovery_suggestion="Reuse an open session or close one (HTTP DELETE) before opening another.",
            )
        return None


def _opens_session(headers: Headers) -> bool:
    """A POST without a session ID in the handshake era: the one request that creates a session."""
    version = headers.get(MCP_PROTOCOL_VERSION_HEADER)
    return MCP_SESSION_ID_HEADER not in headers and (version is None or version in HANDSHAKE_PROTOCOL_VERSIONS)


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


def build_http_app(
    scanner: ScannerServer, settings: Settings, tokens: TokenSource, oauth: OAuthResource | None = None
) -> ActiveRequests:
    """The SDK's app for `scanner`, whose MCPServer verifies the tokens (`BearerTokenVerifier`);
    with an OAuth issuer, also its protected resource metadata."""
    server = scanner.mcp
    protected = len(tokens.table) > 0 or oauth is not None
    if not protected and not (settings.insecure_http_no_auth and _is_loopback(settings.host)):
        raise ConfigError(
            "the HTTP transport needs a bearer token (APPLIANCE_AUTH_TOKEN, /run/secrets/appliance_auth_token "
            "or an APPLIANCE_AUTH_TOKENS_FILE) or an OAuth issuer (APPLIANCE_OAUTH_ISSUER)",
            rule="http_requires_token",
            recovery_suggestion="Provide a token or an issuer; only a loopback test server may set "
            "APPLIANCE_INSECURE_HTTP_NO_AUTH.",
        )
    if protected and server.settings.auth is None:
        # Tokens without the verifier would mean an open server that looks protected.
        raise ConfigError(
            "the MCP server was built without its token verifier",
            rule="http_auth_not_wired",
            recovery_suggestion="Build ScannerServer with token_verifier=BearerTokenVerifier(tokens).",
        )
    app = server.streamable_http_app(
        streamable_http_path=settings.http_path,
        max_request_body_size=MAX_REQUEST_BODY_BYTES,
        session_idle_timeout=SESSION_IDLE_TIMEOUT_SECONDS,
        max_sessions=MAX_SESSIONS,
        # A fleet front keeps no session (README "Fleet"): any front answers any request, of either
        # protocol era (2026-07-28 requests are stateless on every role).
        stateless_http=settings.role == "front",
        transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=settings.allowed_hosts,
            allowed_origins=settings.allowed_origins,
        ),
        host=settings.host,
    )
    if server.settings.auth is None:
        log.warning("INSECURE: HTTP transport without authentication (loopback test mode)")
    # Innermost middleware: after the SDK's auth middleware (the verified `user` is set), in front
    # of its routes. `add_middleware` would put it outermost, before authentication.
    app.user_middleware.append(Middleware(SessionQuota, scanner=scanner))
    if oauth is not None and server.settings.auth is not None:
        # Before the SDK's own metadata route, which lists only the endpoint's required scope.
        app.router.routes[0:0] = metadata_routes(server.settings.auth)
    metrics = scanner.service.metrics
    refusals = AuthRefusals(app, scanner.service.audit, None if metrics is None else metrics.registry)
    return ActiveRequests(refusals)


class QuietUvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: the appliance decides when to stop. `on_started`
    is called once the sockets listen (the start-up clock's `transport_ready`)."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self._on_started = on_started

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_started is not None:
            self._on_started()


def uvicorn_config(app: ASGIApp, settings: Settings, tls: ssl.SSLContext | None = None) -> uvicorn.Config:
    """uvicorn's settings; with `tls`, it serves that context (the appliance's reloadable one,
    appliance.tls) instead of building its own from file names."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        lifespan="on",
        ssl_context_factory=None if tls is None else (lambda _config, _default: tls),
    )
