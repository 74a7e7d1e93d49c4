"""The status page's routes on the sidecar: `GET /`, `POST /login`, `POST /logout`.

Who sees what: the health token sees everything, recent scans of every principal included; an
MCP access token (checked by the verifier the MCP transport uses) with scan:read sees the summary
and job counts, and with scan:admin the recent scans too. Without any health token configured the
summary is open on the allowed hosts, like /healthz; recent scans still need a credential.

A credential comes as `Authorization: Bearer` or through the login form, which sets a cookie with
a random session id (appliance.status.sessions). Every page load verifies the credential again.
POSTs must come from the page's own origin (Origin, else Referer): with SameSite=Strict that is
the CSRF defence, and a form on another site cannot log a browser in or out. Every refusal names
its rule and what to do, is counted (`appliance_status_refusals_total{rule}`) and audited.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from appliance.errors import ExecutionError, PermissionDeniedError
from appliance.health import Health
from appliance.identity.scopes import SCAN_ADMIN, SCAN_READ
from appliance.jobs.model import STATES, Job
from appliance.jobs.store import JobFilter
from appliance.status import render
from appliance.status.sessions import Session, SessionStore

if TYPE_CHECKING:
    from mcp.server.auth.provider import TokenVerifier

    from appliance.jobs.store import JobStore

log = logging.getLogger(__name__)

COOKIE = "appliance_status_session"
# Nothing but this document and its inline style loads; forms post only here; no framing.
CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: under it a browser sends `Origin: null` with the login form's POST, and the
    # same-origin check below could not tell the page's own form from a foreign one. Nothing on
    # the page links elsewhere, so same-origin leaks nothing.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
# The figures /healthz compares against their thresholds (over one: degraded).
RESOURCES = ("cpu", "memory", "disk")
# The refusals of these routes and their HTTP status; metric children are created up front
# (dashboards see zeros, not gaps).
STATUS = {
    "health_host_not_allowed": 421,
    "status_origin_mismatch": 403,
    "status_token_invalid": 401,
    "insufficient_scope": 403,
}
RECOVERY = {
    "health_host_not_allowed": "Use an allowed host name or add it to APPLIANCE_HEALTH_ALLOWED_HOSTS.",
    "status_origin_mismatch": "Submit the form from the status page itself (this host and port), not another site.",
    "status_token_invalid": "Log in with APPLIANCE_HEALTH_TOKEN or a valid MCP access token (scan:read; "
    "scan:admin to see recent scans).",
    "insufficient_scope": "Use a token with scan:read (scan:admin to see recent scans), or the health token.",
}


@dataclass
class StatusSources:
    """What the page shows beyond the health model; the app passes its own (appliance.app)."""

    verifier: TokenVerifier | None = None  # the MCP transport's; None: only the health token logs in
    jobs: JobStore | None = None
    sessions: SessionStore = field(default_factory=SessionStore)


def refused(rule: str, message: str) -> PermissionDeniedError:
    """A refusal of these routes: the project's one error type for it, with the rule's advice."""
    return PermissionDeniedError(message, rule=rule, recovery_suggestion=RECOVERY[rule])


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8", headers=HEADERS)


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={**HEADERS, "Location": location})


class StatusPage:
    def __init__(
        self,
        health: Health,
        registry: CollectorRegistry,
        health_token: str | None,
        sources: StatusSources,
        host_ok: Callable[[web.Request], bool],
    ) -> None:
        self._health = health
        self._token = health_token
        self._sources = sources
        self._host_ok = host_ok
        self.refusals = Counter(
            "appliance_status_refusals",
            "Status page requests refused (Host, Origin, token, scope), by rule.",
            ["rule"],
            registry=registry,
        )
        for rule in STATUS:
            self.refusals.labels(rule)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.index)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)

    @property
    def _can_log_in(self) -> bool:
        return self._token is not None or self._sources.verifier is not None

    # --- who is asking ------------------------------------------------------------------------
    async def _identify(self, token: str) -> render.Viewer:
        """The viewer a presented credential makes; raises PermissionDeniedError when it makes none."""
        token = token.strip()
        if self._token is not None and hmac.compare_digest(token.encode(), self._token.encode()):
            return render.Viewer("health_token", sees_scans=True)
        verifier = self._sources.verifier
        access = None if verifier is None or not token else await verifier.verify_token(token)
        if access is None:
            raise refused("status_token_invalid", "That token is neither the health token nor a valid MCP token.")
        if SCAN_READ not in access.scopes:
            raise refused("insufficient_scope", f"The token of {access.client_id} does not carry {SCAN_READ}.")
        return render.Viewer("access_token", access.client_id, tuple(access.scopes), SCAN_ADMIN in access.scopes)

    def _check_host(self, request: web.Request) -> None:
        if not self._host_ok(request):
            raise refused("health_host_not_allowed", "This Host name is not one the sidecar answers to.")

    @staticmethod
    def _check_origin(request: web.Request) -> None:
        """Same origin or refused: Origin when the browser sends it (every POST from a current
        browser does), else the Referer's origin. Neither: refused (no page of ours posts so)."""
        expected = f"{request.scheme}://{request.host}".lower()
        origin = request.headers.get("Origin")
        if origin is None and (referer := request.headers.get("Referer")):
            parts = urlsplit(referer)
            origin = f"{parts.scheme}://{parts.netloc}"
        if origin is None or origin.lower() != expected:
            raise refused("status_origin_mismatch", "This form was not sent from the status page's own origin.")

    def _refuse(self, request: web.Request, error: PermissionDeniedError) -> web.Response:
        status = STATUS[error.rule]
        self.refusals.labels(error.rule).inc()
        log.warning("status page request refused", extra={"rule": error.rule, "status": status})
        record = {
            "event": "status_page_refused",
            "verdict": "refused",
            "status": status,
            "rule": error.rule,
            "method": request.method,
            "path": request.path,
            "client": request.remote,
        }
        with contextlib.suppress(ExecutionError):  # an unwritable audit shows in readiness; the refusal stands
            self._health.audit.write(record)
        return _html(render.refusal_page(error.rule, error.message, error.recovery_suggestion), status)

    # --- routes -----------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.StreamResponse:
        try:
            self._check_host(request)
            scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == "bearer":
                return _html(self._page(await self._identify(presented)))
        except PermissionDeniedError as error:
            return self._refuse(request, error)
        session_id = request.cookies.get(COOKIE)
        if session_id:
            return await self._from_session(session_id)
        if self._token is not None:
            return _html(render.login_page())
        return _html(self._page(render.Viewer("open")))

    async def _from_session(self, session_id: str) -> web.StreamResponse:
        session = self._sources.sessions.get(session_id)
        note = "Your session has ended; log in again."
        if session is not None:
            try:
                viewer = await self._identify(session.token)
            except PermissionDeniedError:
                # Revoked or expired since the login: the session ends with the token.
                self._sources.sessions.drop(session_id)
                note = "The token of your session is no longer valid; log in again."
            else:
                return _html(self._page(self._with_session(viewer, session)))
        response = _html(render.login_page(note))
        response.del_cookie(COOKIE, path="/")
        return response

    @staticmethod
    def _with_session(viewer: render.Viewer, session: Session) -> render.Viewer:
        return render.Viewer(viewer.kind, viewer.principal, viewer.scopes, viewer.sees_scans, session.expires_at)

    async def login(self, request: web.Request) -> web.StreamResponse:
        try:
            self._check_host(request)
            self._check_origin(request)
            posted = (await request.post()).get("token")
            token = posted.strip() if isinstance(posted, str) else ""
            viewer = await self._identify(token)
        except PermissionDeniedError as error:
            return self._refuse(request, error)
        session_id, _ = self._sources.sessions.create(token)
        self._audit_login(request, viewer)
        response = _see_other("/")
        response.set_cookie(
            COOKIE,
            session_id,
            max_age=int(self._sources.sessions.lifetime),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        try:
            self._check_host(request)
            self._check_origin(request)
        except PermissionDeniedError as error:
            return self._refuse(request, error)
        session_id = request.cookies.get(COOKIE)
        if session_id:
            self._sources.sessions.drop(session_id)
        response = _see_other("/")
        response.del_cookie(COOKIE, path="/")
        return response

    def _audit_login(self, request: web.Request, viewer: render.Viewer) -> None:
        record = {
            "event": "status_page_login",
            "verdict": "allowed",
            "credential": viewer.kind,
            "principal": viewer.principal,
            "client": request.remote,
        }
        with contextlib.suppress(ExecutionError):
            self._health.audit.write(record)

    # --- what it shows ----------------------------------------------------------------------
    def _page(self, viewer: render.Viewer) -> str:
        report = self._health.report()
        checks = report["checks"]
        snapshot = self._health.store.current
        unavailable = checks["tools_unavailable"]
        tools = [
            render.ToolRow(name, getattr(snapshot.policy.tools, name).enabled, unavailable.get(name))
            for name in self._health.scanners
        ]
        jobs = self._sources.jobs
        recent = None
        if viewer.sees_scans:
            newest = [] if jobs is None else jobs.page(JobFilter(), render.RECENT_SCANS_SHOWN).jobs
            recent = [_scan_row(job) for job in newest]
        view = render.StatusView(
            status=report["status"],
            ready_reasons=checks["ready"]["reasons"],
            resources={name: (checks[name]["percent"], checks[name]["threshold"]) for name in RESOURCES},
            mode=report["mode"],
            transport=self._health.settings.transport,
            tools=tools,
            breakers=checks["breakers"],
            job_counts=None if jobs is None else jobs.counts(),
            recent=recent,
            policy_source=str(snapshot.source),
            policy_loaded_at=snapshot.loaded_at,
            policy_refused=self._health.store.refused,
            viewer=viewer,
            can_log_in=self._can_log_in,
            generated_at=time.time(),
        )
        return render.status_page(view, STATES)


def _scan_row(job: Job) -> render.ScanRow:
    return render.ScanRow(job.scan_id, job.tool, job.target, job.principal, job.state, job.created_at, job.finished_at)
