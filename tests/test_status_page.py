"""The status page (`/`, `/login`, `/logout`) through aiohttp's test client, on a real health
model, a real in-memory job store and the appliance's own token verifier."""

from __future__ import annotations

import contextlib
import re
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import ClientResponse, ClientSession
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest
from support import TOKEN, served, write_policy
from support.audit import records
from support.certs import create_certs
from support.jobs import stored_job
from support.sidecars import HEALTH_TOKEN, STATUS_TOKENS, StatusTokens, make_health, status_verifier

from appliance.health import Health, ScannerStatus
from appliance.jobs.sqlite import SqliteJobStore
from appliance.sidecar import build_sidecar, start_sidecar
from appliance.status.sessions import SessionStore
from appliance.status.web import COOKIE, CSP, StatusSources
from appliance.tls import server_tls

pytestmark = pytest.mark.anyio
READER, _ = STATUS_TOKENS["reader"]
ADMIN, _ = STATUS_TOKENS["admin"]
RUNNER, _ = STATUS_TOKENS["runner"]
XSS = "<script>alert(1)</script>"


@dataclass
class Page:
    client: TestClient
    health: Health
    jobs: SqliteJobStore
    tokens: StatusTokens
    registry: CollectorRegistry
    clock: list[float]

    @property
    def origin(self) -> str:
        return f"http://{self.client.host}:{self.client.port}"

    async def get(self, token: str | None = None) -> tuple[int, str]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        response = await self.client.get("/", headers=headers)
        return response.status, await response.text()

    async def login(self, token: str, **headers: str) -> ClientResponse:
        return await self.client.post(
            "/login", data={"token": token}, headers={"Origin": self.origin, **headers}, allow_redirects=False
        )

    def audit(self, event: str) -> list[dict[str, object]]:
        return [r for r in records(self.health.settings.audit_path) if r.get("event") == event]  # type: ignore[arg-type]

    def metric(self, rule: str) -> float:
        text = generate_latest(self.registry).decode()
        found = re.search(rf'^appliance_status_refusals_total{{rule="{rule}"}} (\S+)$', text, re.MULTILINE)
        assert found is not None, text
        return float(found.group(1))


@contextlib.asynccontextmanager
async def status_page(
    tmp_path: Path, health_token: str | None = HEALTH_TOKEN, **sidecar: object
) -> AsyncIterator[Page]:
    health, _ = make_health(tmp_path)
    jobs = SqliteJobStore(None)
    tokens = status_verifier(tmp_path)
    registry = CollectorRegistry()
    clock = [1_000_000.0]
    sources = StatusSources(verifier=tokens.verifier, jobs=jobs, sessions=SessionStore(clock=lambda: clock[0]))
    client = TestClient(TestServer(build_sidecar(health, registry, health_token, status=sources)))
    await client.start_server()
    try:
        yield Page(client, health, jobs, tokens, registry, clock)
    finally:
        await client.close()
        jobs.close()
        health.audit.close()


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    async with status_page(tmp_path) as opened:
        yield opened


def section(html: str, section_id: str) -> str:
    found = re.search(rf'<section id="{section_id}".*?</section>', html, re.DOTALL)
    return "" if found is None else found.group(0)


# --- what each credential sees ---------------------------------------------------------------
async def test_health_token_sees_everything_and_every_principals_scans(page: Page) -> None:
    page.jobs.put(stored_job("completed", principal="alice", target="10.20.0.5"))
    page.jobs.put(stored_job("failed", principal="bob", target="web.lab.internal", at=1_000_010.0))
    status, html = await page.get(HEALTH_TOKEN)
    assert status == 200
    assert 'data-status="healthy"' in section(html, "health") or 'data-status="degraded"' in section(html, "health")
    assert 'data-mode="connect"' in html and 'data-transport="stdio"' in html
    tools = section(html, "tools")
    assert 'data-tool="nmap_scan" data-available="true"' in tools
    assert 'data-tool="masscan_scan" data-available="false"' in tools
    assert "needs raw mode" in tools
    assert 'data-tool="gobuster_scan" data-state="closed"' in section(html, "breakers")
    jobs = section(html, "jobs")
    assert re.search(r'data-state="completed"><td>completed</td><td>1<', jobs)
    assert re.search(r'data-state="failed"><td>failed</td><td>1<', jobs)
    assert re.search(r'data-state="running"><td>running</td><td>0<', jobs)
    scans = section(html, "recent-scans")
    assert "alice" in scans and "bob" in scans and "web.lab.internal" in scans
    assert scans.index("bob") < scans.index("alice")  # newest first
    policy = section(html, "policy")
    assert str(page.health.store.current.source) in policy
    assert 'data-kind="health_token"' in html


async def test_access_token_with_scan_admin_sees_recent_scans(page: Page) -> None:
    page.jobs.put(stored_job("completed", principal="alice"))
    status, html = await page.get(ADMIN)
    assert status == 200
    assert "Logged in as admin" in section(html, "viewer") and "scan:admin" in section(html, "viewer")
    assert "alice" in section(html, "recent-scans")


async def test_access_token_without_scan_admin_sees_counts_only(page: Page) -> None:
    page.jobs.put(stored_job("completed", principal="alice", target="10.20.0.77"))
    status, html = await page.get(READER)
    assert status == 200
    assert re.search(r'data-state="completed"><td>completed</td><td>1<', section(html, "jobs"))
    assert 'id="recent-scans"' not in html
    assert "10.20.0.77" not in html and "alice" not in html
    assert "counts only" in section(html, "viewer")


async def test_access_token_without_scan_read_is_refused(page: Page) -> None:
    status, html = await page.get(RUNNER)
    assert status == 403
    assert 'data-rule="insufficient_scope"' in html
    assert page.metric("insufficient_scope") == 1


async def test_without_credentials_a_configured_health_token_shows_only_the_login_form(page: Page) -> None:
    page.jobs.put(stored_job("completed", principal="alice"))
    status, html = await page.get()
    assert status == 200
    assert 'id="login-form" method="post" action="/login"' in html
    assert 'name="token"' in html and 'type="password"' in html
    for hidden in ('id="tools"', 'id="jobs"', 'id="health"', "alice", "nmap_scan"):
        assert hidden not in html


async def test_without_any_health_token_the_summary_is_open_but_scans_are_not(tmp_path: Path) -> None:
    async with status_page(tmp_path, health_token=None) as page:
        page.jobs.put(stored_job("completed", principal="alice", target="10.20.0.77"))
        status, html = await page.get()
        assert status == 200
        assert 'data-kind="open"' in html
        assert 'id="tools"' in html and 'id="jobs"' in html and 'id="policy"' in html
        assert 'id="recent-scans"' not in html and "10.20.0.77" not in html
        assert 'id="login-form"' in html  # a credential shows the scans
        admin_status, admin_html = await page.get(ADMIN)
        assert admin_status == 200 and "10.20.0.77" in section(admin_html, "recent-scans")


async def test_a_wrong_bearer_token_on_the_page_is_refused_named_counted_and_audited(page: Page) -> None:
    status, html = await page.get("wrong-token-0123456789")
    assert status == 401
    assert 'data-rule="status_token_invalid"' in html
    assert "APPLIANCE_HEALTH_TOKEN" in html  # what to do
    assert page.metric("status_token_invalid") == 1
    [line] = page.audit("status_page_refused")
    assert line["rule"] == "status_token_invalid" and line["status"] == 401 and line["path"] == "/"
    assert "wrong-token-0123456789" not in page.health.settings.audit_path.read_text()


# --- escaping --------------------------------------------------------------------------------
async def test_a_target_with_markup_is_escaped(page: Page) -> None:
    page.jobs.put(stored_job("completed", target=XSS, principal='a"b'))
    _, html = await page.get(HEALTH_TOKEN)
    assert XSS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in section(html, "recent-scans")
    assert "a&quot;b" in html


async def test_a_reason_with_markup_is_escaped(page: Page) -> None:
    page.health.scanners = {**page.health.scanners, "gobuster_scan": ScannerStatus("/x", False, None, XSS)}
    _, html = await page.get(HEALTH_TOKEN)
    assert XSS not in html
    assert "scanner unavailable: &lt;script&gt;" in section(html, "tools")


# --- login, cookie, logout -------------------------------------------------------------------
async def test_login_sets_a_strict_httponly_session_cookie_that_is_not_the_token(page: Page) -> None:
    response = await page.login(HEALTH_TOKEN)
    assert response.status == 303 and response.headers["Location"] == "/"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    flags = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= set(flags)
    assert flags["samesite"] == "SameSite=Strict" and flags["path"] == "Path=/"
    assert flags["max-age"] == "Max-Age=28800"
    assert "secure" not in flags  # plain HTTP here; the TLS test below sees Secure
    session_id = cookie.split(";")[0].split("=", 1)[1]
    assert HEALTH_TOKEN not in cookie and len(session_id) >= 40
    status, html = await page.get()  # the client's cookie jar sends it
    assert status == 200 and 'data-kind="health_token"' in html and 'id="logout-form"' in html
    [line] = page.audit("status_page_login")
    assert line["credential"] == "health_token"


async def test_login_with_an_access_token_shows_its_principal(page: Page) -> None:
    response = await page.login(READER)
    assert response.status == 303
    _, html = await page.get()
    assert "Logged in as reader" in section(html, "viewer")
    assert 'id="recent-scans"' not in html


async def test_logout_ends_the_session_server_side(page: Page) -> None:
    response = await page.login(HEALTH_TOKEN)
    session_id = response.cookies[COOKIE].value
    out = await page.client.post("/logout", headers={"Origin": page.origin}, allow_redirects=False)
    assert out.status == 303
    assert out.cookies[COOKIE]["max-age"] == "0"  # the browser drops it
    replayed = await page.client.get("/", cookies={COOKIE: session_id})  # a copy kept elsewhere
    html = await replayed.text()
    assert 'id="login-form"' in html and 'id="tools"' not in html


async def test_bad_login_is_refused_named_counted_and_audited_without_a_cookie(page: Page) -> None:
    response = await page.login("not-the-token-0123456789")
    html = await response.text()
    assert response.status == 401
    assert "Set-Cookie" not in response.headers
    assert 'data-rule="status_token_invalid"' in html and "Log in with APPLIANCE_HEALTH_TOKEN" in html
    assert page.metric("status_token_invalid") == 1
    [line] = page.audit("status_page_refused")
    assert line["rule"] == "status_token_invalid" and line["path"] == "/login"
    assert "not-the-token-0123456789" not in page.health.settings.audit_path.read_text()


async def test_empty_login_is_refused(page: Page) -> None:
    response = await page.login("")
    assert response.status == 401


@pytest.mark.parametrize(
    "headers",
    [
        {},  # no Origin, no Referer
        {"Origin": "http://attacker.example"},
        {"Origin": "null"},
        {"Referer": "http://attacker.example/page"},
    ],
    ids=["none", "foreign-origin", "null-origin", "foreign-referer"],
)
async def test_login_from_another_origin_is_refused_csrf(page: Page, headers: dict[str, str]) -> None:
    response = await page.client.post("/login", data={"token": HEALTH_TOKEN}, headers=headers, allow_redirects=False)
    assert response.status == 403
    assert 'data-rule="status_origin_mismatch"' in await response.text()
    assert "Set-Cookie" not in response.headers
    assert page.metric("status_origin_mismatch") == 1
    assert page.audit("status_page_refused")[0]["rule"] == "status_origin_mismatch"


async def test_login_with_a_same_origin_referer_and_no_origin_works(page: Page) -> None:
    response = await page.client.post(
        "/login", data={"token": HEALTH_TOKEN}, headers={"Referer": f"{page.origin}/"}, allow_redirects=False
    )
    assert response.status == 303


async def test_logout_from_another_origin_is_refused_and_keeps_the_session(page: Page) -> None:
    await page.login(HEALTH_TOKEN)
    response = await page.client.post("/logout", headers={"Origin": "http://attacker.example"})
    assert response.status == 403
    _, html = await page.get()
    assert 'data-kind="health_token"' in html


async def test_a_session_expires_after_its_lifetime(page: Page) -> None:
    await page.login(HEALTH_TOKEN)
    page.clock[0] += 8 * 3600 - 1
    assert 'data-kind="health_token"' in (await page.get())[1]
    page.clock[0] += 1
    status, html = await page.get()
    assert status == 200
    assert 'id="login-form"' in html and "session has ended" in html and 'id="tools"' not in html


async def test_a_revoked_token_ends_its_session_at_the_next_load(page: Page) -> None:
    await page.login(ADMIN)
    assert "Logged in as admin" in (await page.get())[1]
    page.tokens.revoke("admin")
    _, html = await page.get()
    assert 'id="login-form"' in html and "no longer valid" in html and "Logged in" not in html


async def test_an_unknown_session_cookie_shows_the_login_form(page: Page) -> None:
    response = await page.client.get("/", cookies={COOKIE: "forged-session-id"})
    html = await response.text()
    assert response.status == 200 and 'id="login-form"' in html and 'id="tools"' not in html


def test_sessions_are_bounded_dropping_the_one_that_ends_first() -> None:
    now = [0.0]
    store = SessionStore(lifetime=100, cap=3, clock=lambda: now[0])
    ids = []
    for _ in range(3):
        ids.append(store.create("t" * 20)[0])
        now[0] += 1
    newest, _ = store.create("u" * 20)
    assert len(store) == 3
    assert store.get(ids[0]) is None and store.get(ids[1]) is not None and store.get(newest) is not None


def test_session_ids_are_random_and_never_the_token() -> None:
    store = SessionStore()
    first, session = store.create(HEALTH_TOKEN)
    second, _ = store.create(HEALTH_TOKEN)
    assert first != second and HEALTH_TOKEN not in first
    assert HEALTH_TOKEN not in repr(session)


# --- headers and hosts -----------------------------------------------------------------------
@pytest.mark.parametrize("token", [HEALTH_TOKEN, None, "wrong-token-0123456789"])
async def test_every_page_answer_carries_the_security_headers(page: Page, token: str | None) -> None:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    response = await page.client.get("/", headers=headers)
    assert response.headers["Content-Security-Policy"] == CSP
    assert "default-src 'none'" in CSP and "frame-ancestors 'none'" in CSP and "form-action 'self'" in CSP
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"  # no-referrer would make the form's Origin null
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"


async def test_the_page_has_no_script_and_no_external_asset(page: Page) -> None:
    _, html = await page.get(HEALTH_TOKEN)
    assert "<script" not in html.lower()
    assert not re.search(r'(src|href)="(?!/")', html)  # the only link is back to "/"
    assert "http://" not in html and "https://" not in html


@pytest.mark.parametrize(("method", "path"), [("GET", "/"), ("POST", "/login"), ("POST", "/logout")])
async def test_status_routes_reject_dns_rebinding_host(page: Page, method: str, path: str) -> None:
    response = await page.client.request(
        method, path, headers={"Host": "attacker.example:9090", "Authorization": f"Bearer {HEALTH_TOKEN}"}
    )
    assert response.status == 421
    assert 'data-rule="health_host_not_allowed"' in await response.text()
    assert page.metric("health_host_not_allowed") == 1


async def test_healthz_and_metrics_keep_their_guard(page: Page) -> None:
    # Logging in to the page does not open /healthz to the cookie: it stays bearer-only.
    await page.login(HEALTH_TOKEN)
    assert (await page.client.get("/healthz")).status == 401
    assert (await page.client.get("/metrics")).status == 401
    assert (await page.client.get("/healthz", headers={"Authorization": f"Bearer {HEALTH_TOKEN}"})).status == 200


async def test_policy_reload_time_and_a_refused_reload_show(page: Page) -> None:
    store = page.health.store
    loaded = store.current.loaded_at
    _, html = await page.get(HEALTH_TOKEN)
    assert 'id="policy-refused"' not in html
    store.current.source.write_text("version: 2\nnot: [valid\n")
    assert store.reload() is False
    _, html = await page.get(HEALTH_TOKEN)
    assert store.current.loaded_at == loaded
    refused = section(html, "policy")
    assert 'id="policy-refused"' in refused and store.refused is not None and store.refused[1] in refused


async def test_over_tls_the_session_cookie_is_secure(tmp_path: Path) -> None:
    certs = create_certs(tmp_path / "secrets")
    tls = server_tls(certs.cert, certs.key)
    assert tls is not None
    health, _ = make_health(tmp_path)
    app = build_sidecar(health, CollectorRegistry(), HEALTH_TOKEN)
    runner, port = await start_sidecar(app, "127.0.0.1", 0, tls.context)
    origin = f"https://localhost:{port}"
    try:
        async with ClientSession() as session:
            response = await session.post(
                f"{origin}/login",
                data={"token": HEALTH_TOKEN},
                headers={"Origin": origin},
                ssl=certs.client_context(),
                allow_redirects=False,
            )
    finally:
        await runner.cleanup()
        health.audit.close()
    assert response.status == 303
    flags = [part.strip() for part in response.headers["Set-Cookie"].split(";")]
    assert "Secure" in flags and "HttpOnly" in flags and "SameSite=Strict" in flags


async def test_resource_figures_show_and_one_over_its_threshold_is_marked(page: Page) -> None:
    page.health.settings = page.health.settings.model_copy(update={"health_memory_percent": 0.001})
    _, html = await page.get(HEALTH_TOKEN)
    health = section(html, "health")
    assert 'data-status="degraded"' in health or 'data-status="unhealthy"' in health
    assert re.search(r'class="resource over" data-resource="memory">memory \d+ % \(degraded above 0 %\)', health)
    assert 'data-resource="cpu"' in health and 'data-resource="disk"' in health


def page_of(port: int, token: str | None) -> tuple[int, str]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - the loopback sidecar
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def test_the_running_appliance_serves_the_page_with_its_own_verifier_and_job_store(tmp_path: Path) -> None:
    # `appliance serve` over HTTP: the MCP bearer token (APPLIANCE_AUTH_TOKEN: scan:read, no
    # scan:admin) sees counts, the health token the full view, nothing at all only the form.
    with served(write_policy(tmp_path), APPLIANCE_HEALTH_TOKEN=HEALTH_TOKEN) as server:
        anonymous = page_of(server.health_port, None)
        mcp_token = page_of(server.health_port, TOKEN)
        health_token = page_of(server.health_port, HEALTH_TOKEN)
        wrong = page_of(server.health_port, "wrong-token-0123456789")
    assert anonymous[0] == 200 and 'id="login-form"' in anonymous[1] and 'id="tools"' not in anonymous[1]
    assert mcp_token[0] == 200 and "Logged in as default" in mcp_token[1]
    assert 'data-transport="http"' in mcp_token[1] and 'id="jobs"' in mcp_token[1]
    assert 'id="recent-scans"' not in mcp_token[1]
    assert health_token[0] == 200 and 'id="recent-scans"' in health_token[1]
    assert wrong[0] == 401 and 'data-rule="status_token_invalid"' in wrong[1]
