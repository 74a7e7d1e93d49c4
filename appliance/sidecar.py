"""The aiohttp sidecar: /livez, /readyz, /healthz, /metrics on their own port, in the same loop."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from appliance.health import Health

log = logging.getLogger(__name__)

# aiohttp waits 60 s for open connections on shutdown by default; health checks hold none for long.
SHUTDOWN_TIMEOUT_SECONDS = 0.5

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")


def build_sidecar(health: Health, registry: CollectorRegistry, token: str | None = None) -> web.Application:
    def guarded(handler: Handler) -> Handler:
        if token is None:
            return handler

        async def check(request: web.Request) -> web.StreamResponse:
            scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode()):
                return await handler(request)
            return web.Response(
                status=401,
                text='{"error": "unauthorized"}',
                content_type="application/json",
                headers={"WWW-Authenticate": 'Bearer realm="mcp-scanner-appliance-health"'},
            )

        return check

    async def livez(request: web.Request) -> web.StreamResponse:
        return _json({"status": "alive"})

    async def readyz(request: web.Request) -> web.StreamResponse:
        ready, reasons = health.readiness()
        return _json({"ready": ready, "reasons": reasons}, 200 if ready else 503)

    async def healthz(request: web.Request) -> web.StreamResponse:
        report = health.report()
        return _json(report, 503 if report["status"] == "unhealthy" else 200)

    app = web.Application()
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/healthz", guarded(healthz))
    app.router.add_get("/metrics", guarded(make_aiohttp_handler(registry)))
    return app


async def start_sidecar(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `app`; returns the runner (for cleanup) and the bound port (port 0 picks one)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = int(runner.addresses[0][1])
    log.info("health sidecar listening", extra={"host": host, "port": bound})
    return runner, bound
