"""The aiohttp sidecar: /livez, /readyz, /healthz, /metrics and the status page (/, appliance.status)
on their own port, in the same loop."""

from __future__ import annotations

import hmac
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from appliance.health import Health
from appliance.status.web import StatusPage, StatusSources

log = logging.getLogger(__name__)

# aiohttp waits 60 s for open connections on shutdown by default; health checks hold none for long.
SHUTDOWN_TIMEOUT_SECONDS = 0.5

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")


def host_allowed(host: str | None, allowed: Sequence[str]) -> bool:
    """Whether a Host header value is one of `allowed` ('name:port', or 'name:*' for any port).

    A rebinding page's requests carry its own domain as Host, which no entry names. Not covered:
    a client that sends no Host at all (HTTP/1.0) is refused too.
    """
    if not host:
        return False
    host = host.lower()
    name, _, _port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    return any(host == entry.lower() or (entry.endswith(":*") and name == entry[:-2].lower()) for entry in allowed)


def build_sidecar(
    health: Health,
    registry: CollectorRegistry,
    token: str | None = None,
    allowed_hosts: Sequence[str] = ("127.0.0.1:*", "localhost:*", "[::1]:*"),
    status: StatusSources | None = None,
) -> web.Application:
    def guarded(handler: Handler) -> Handler:
        """Host check first (DNS rebinding), then the bearer token when one is configured."""

        async def check(request: web.Request) -> web.StreamResponse:
            if not host_allowed(request.headers.get("Host"), allowed_hosts):
                log.warning("sidecar request refused: Host not allowed", extra={"rule": "health_host_not_allowed"})
                return _json(
                    {
                        "error": "misdirected_request",
                        "rule": "health_host_not_allowed",
                        "recovery_suggestion": "Use an allowed host name or add it to APPLIANCE_HEALTH_ALLOWED_HOSTS.",
                    },
                    421,
                )
            if token is None:
                return await handler(request)
            scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode()):
                return await handler(request)
            return web.Response(
                status=401,
                text='{"error": "unauthorized", "rule": "health_token_invalid"}',
                content_type="application/json",
                headers={"WWW-Authenticate": 'Bearer realm="mcp-scanner-appliance-health"'},
            )

        return check

    # /livez and /readyz answer any probe (kubelet and Docker send the pod IP or nothing useful
    # as Host) and so say nothing beyond yes or no.
    async def livez(request: web.Request) -> web.StreamResponse:
        return _json({"status": "alive"})

    async def readyz(request: web.Request) -> web.StreamResponse:
        ready, _reasons = health.readiness()
        return _json({"ready": ready}, 200 if ready else 503)

    async def healthz(request: web.Request) -> web.StreamResponse:
        report = health.report()
        return _json(report, 503 if report["status"] == "unhealthy" else 200)

    app = web.Application()
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/healthz", guarded(healthz))
    app.router.add_get("/metrics", guarded(make_aiohttp_handler(registry)))
    StatusPage(
        health,
        registry,
        token,
        status if status is not None else StatusSources(),
        host_ok=lambda request: host_allowed(request.headers.get("Host"), allowed_hosts),
    ).add_routes(app)
    return app


async def start_sidecar(
    app: web.Application, host: str, port: int, tls: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    """Serve `app` (over TLS with `tls`); returns the runner (for cleanup) and the bound port
    (port 0 picks one)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    await site.start()
    bound = int(runner.addresses[0][1])
    log.info("health sidecar listening", extra={"host": host, "port": bound, "tls": tls is not None})
    return runner, bound
