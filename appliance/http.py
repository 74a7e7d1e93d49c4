"""Streamable HTTP transport: the SDK's Starlette app behind bearer-token auth, served by uvicorn."""

from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from appliance.config import Settings
from appliance.errors import ConfigError

log = logging.getLogger(__name__)

# uvicorn waits for open streams on shutdown for as long as they last by default; a scanner
# appliance must stop promptly when told to.
GRACEFUL_SHUTDOWN_SECONDS = 1
# MCP requests are small JSON documents; anything larger is refused before it is parsed.
MAX_REQUEST_BODY_BYTES = 256 * 1024


class BearerAuth:
    """Refuse every HTTP request without a valid `Authorization: Bearer <token>` header."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        scheme, _, presented = Headers(scope=scope).get("authorization", "").partition(" ")
        # compare_digest: the time taken does not depend on how much of the token matched.
        if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), self._token):
            await self._app(scope, receive, send)
            return
        log.warning("HTTP request refused: missing or wrong bearer token", extra={"path": scope.get("path")})
        body = b'{"error": "unauthorized", "message": "a valid bearer token is required"}'
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b'Bearer realm="mcp-scanner-appliance"'),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def build_http_app(server: MCPServer[Any], settings: Settings) -> ASGIApp:
    token = settings.auth_token.get_secret_value() if settings.auth_token else None
    if token is None and not (settings.insecure_http_no_auth and _is_loopback(settings.host)):
        raise ConfigError(
            "the HTTP transport needs a bearer token (APPLIANCE_AUTH_TOKEN or /run/secrets/appliance_auth_token)",
            rule="http_requires_token",
            recovery_suggestion="Provide a token; only a loopback test server may set APPLIANCE_INSECURE_HTTP_NO_AUTH.",
        )
    app = server.streamable_http_app(
        streamable_http_path=settings.http_path,
        max_request_body_size=MAX_REQUEST_BODY_BYTES,
        transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=True, allowed_hosts=settings.allowed_hosts, allowed_origins=[]
        ),
        host=settings.host,
    )
    if token is None:
        log.warning("INSECURE: HTTP transport without authentication (loopback test mode)")
        return app
    return BearerAuth(app, token)


async def serve_http(server: MCPServer[Any], settings: Settings) -> None:
    app = build_http_app(server, settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        lifespan="on",
    )
    log.info("serving MCP over HTTP", extra={"host": settings.host, "port": settings.port, "path": settings.http_path})
    await uvicorn.Server(config).serve()
