"""The status page in a real browser: Debian's headless Chromium (playwright-core) against a real
sidecar on 127.0.0.1, inside the unit suite's empty network namespace. A person's path: a wrong
token is refused by name, the login form logs in, the full view shows, logging out ends it."""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry
from support.browser import run_browser_script
from support.jobs import stored_job
from support.sidecars import HEALTH_TOKEN, make_health, status_verifier

from appliance.jobs.sqlite import SqliteJobStore
from appliance.sidecar import build_sidecar, start_sidecar
from appliance.status.sessions import SESSION_LIFETIME_SECONDS
from appliance.status.web import CSP, StatusSources

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TARGET_WITH_MARKUP = "<b>web.lab.internal</b>"


@dataclass(frozen=True)
class BrowserRun:
    origin: str
    scan_ids: tuple[str, ...]
    screenshot: Path
    report: dict[str, Any]


async def browse_status_page(scratch: Path) -> BrowserRun:
    """A real sidecar on 127.0.0.1 (port 0) with two stored scans, and one browser run against it."""
    health, _ = make_health(scratch)
    jobs = SqliteJobStore(None)
    scans = (
        stored_job("completed", principal="alice", target="10.20.0.5", at=time.time() - 60),
        stored_job("failed", principal="bob", target=TARGET_WITH_MARKUP, at=time.time() - 30),
    )
    for job in scans:
        jobs.put(job)
    sources = StatusSources(verifier=status_verifier(scratch).verifier, jobs=jobs)
    runner, port = await start_sidecar(
        build_sidecar(health, CollectorRegistry(), HEALTH_TOKEN, status=sources), "127.0.0.1", 0
    )
    origin = f"http://127.0.0.1:{port}"
    screenshot = scratch / "status.png"
    try:
        report = await run_browser_script(
            "status_page.mjs",
            origin,
            HEALTH_TOKEN,
            "wrong-token-0123456789",
            str(screenshot),
            str(scratch / "chromium-profile"),
            home=scratch,
        )
    finally:
        await runner.cleanup()
        jobs.close()
        health.audit.close()
    return BrowserRun(origin, tuple(job.scan_id for job in scans), screenshot, report)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> BrowserRun:
    """One browser run for the module's checks (Chromium's start is the slow part)."""
    return anyio.run(browse_status_page, tmp_path_factory.mktemp("browser"))


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk (after the signature and the chunk header)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_browser_logs_in_and_sees_the_full_view_without_errors(run: BrowserRun) -> None:
    login = run.report["steps"]["login"]
    assert login["console_errors"] == [] and login["page_errors"] == []
    assert login["before"]["status"] == 200
    assert login["before"]["login_form_visible"] and not login["before"]["tools_present"]
    assert login["before"]["csp"] == CSP
    assert login["title"] == "mcp-scanner-appliance status"
    assert all(login["visible"].values()), login["visible"]
    assert login["viewer_kind"] == "health_token"
    assert login["health_status"] in ("healthy", "degraded")  # the test machine's load may degrade it
    assert login["mode"] == "connect"
    tools = {row["tool"]: row for row in login["tools"]}
    assert set(tools) == {"nmap_scan", "masscan_scan", "gobuster_scan"}
    assert tools["nmap_scan"]["available"] == "true"
    assert tools["masscan_scan"]["available"] == "false" and "needs raw mode" in tools["masscan_scan"]["reason"]
    assert login["scans"] == list(reversed(run.scan_ids))  # newest first
    assert TARGET_WITH_MARKUP in login["scan_text"]  # shown as text, not parsed as markup
    assert login["script_elements"] == 0


def test_the_session_cookie_is_httponly_strict_and_not_the_token(run: BrowserRun) -> None:
    login = run.report["steps"]["login"]
    [cookie] = login["cookies"]
    assert cookie["name"] == "appliance_status_session"
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert cookie["secure"] is False  # plain HTTP on loopback; over TLS it is Secure (unit test)
    assert not cookie["value_is_token"] and cookie["value_length"] >= 40
    assert abs(cookie["expires"] - login["now"] - SESSION_LIFETIME_SECONDS) < 120
    assert login["document_cookie"] == ""  # no script on the page could read it


def test_logging_out_ends_the_session(run: BrowserRun) -> None:
    after = run.report["steps"]["login"]["after_logout"]
    assert after == {"login_form_visible": True, "tools_present": False, "cookies": 0}


def test_a_wrong_token_is_refused_by_name_in_the_browser(run: BrowserRun) -> None:
    wrong = run.report["steps"]["wrong_token"]
    assert wrong["status"] == 401
    assert wrong["rule"] == "status_token_invalid"
    assert "APPLIANCE_HEALTH_TOKEN" in wrong["recovery"]
    assert wrong["cookies"] == 0
    assert wrong["page_errors"] == []
    # Chromium reports the 401 document itself as a failed resource, and nothing else.
    assert all("401" in message for message in wrong["console_errors"]), wrong["console_errors"]


def test_the_browser_loaded_nothing_but_the_sidecar(run: BrowserRun) -> None:
    requests = run.report["requests"]
    assert requests, "the browser made no request"
    assert all(url.startswith(f"{run.origin}/") for url in requests), requests


def test_the_screenshot_is_a_png_of_the_page(run: BrowserRun) -> None:
    width, height = png_size(run.screenshot)
    assert width == 1200 and height >= 600  # full page: every section, not an empty viewport
    assert run.screenshot.stat().st_size > 20_000  # text and tables, not a blank image
