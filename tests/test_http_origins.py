"""Browser origins on the HTTP transport (APPLIANCE_ALLOWED_ORIGINS): the setting and real requests.

Every request goes to an `appliance serve --transport http` this test starts on 127.0.0.1.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import harness
import httpx2
import pytest
from support import initialize_request

from appliance.config import load_settings
from appliance.errors import ConfigError

APPLIANCE = Path(sys.executable).with_name("appliance")
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server with the default allowed origins (the SDK's check does not depend on the request)."""
    scratch = tmp_path_factory.mktemp("origins")
    with harness.appliance_server(APPLIANCE, scratch / "audit.jsonl", scratch / "log") as url:
        yield url


def post_initialize(url: str, origin: str | None) -> httpx2.Response:
    headers = dict(MCP_HEADERS, **({"Origin": origin} if origin is not None else {}))
    return httpx2.post(url, json=initialize_request(), headers=headers, timeout=30)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_localhost_origin_is_accepted(server: str, host: str) -> None:
    # What the MCP Inspector's web UI sends from http://localhost:6274, or any loopback page.
    for port in (port_of(server), 6274):
        response = post_initialize(server, f"http://{host}:{port}")
        assert response.status_code == 200, response.text
        assert response.headers["mcp-session-id"]


def test_request_without_origin_is_accepted(server: str) -> None:
    # Agents and CLIs are not browsers: they send no Origin at all.
    assert post_initialize(server, None).status_code == 200


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",  # a DNS-rebinding page: its name now resolves to 127.0.0.1
        "http://evil.example:8080",
        "http://localhost.evil.example:8080",  # a name that merely starts with "localhost"
        "http://127.0.0.1.evil.example:80",
        "https://localhost:6274",  # another scheme is another origin
        "null",  # sandboxed iframes and file:// pages
        "http://localhost",  # no port: the defaults allow loopback with a port only, like allowed_hosts
    ],
)
def test_foreign_origin_is_refused_with_403(server: str, origin: str) -> None:
    response = post_initialize(server, origin)
    assert response.status_code == 403
    assert "mcp-session-id" not in response.headers


def test_configured_origin_replaces_the_defaults(tmp_path: Path) -> None:
    with harness.appliance_server(
        APPLIANCE,
        tmp_path / "audit.jsonl",
        tmp_path / "log",
        APPLIANCE_ALLOWED_ORIGINS='["https://inspector.lab.example"]',
    ) as url:
        allowed = post_initialize(url, "https://inspector.lab.example")
        default_now_refused = post_initialize(url, f"http://127.0.0.1:{port_of(url)}")
    assert allowed.status_code == 200, allowed.text
    assert default_now_refused.status_code == 403


def test_default_allowed_origins_match_the_allowed_hosts() -> None:
    settings = load_settings()
    assert [origin.removeprefix("http://") for origin in settings.allowed_origins] == settings.allowed_hosts


@pytest.mark.parametrize(
    "origin",
    [
        # safe
        "http://localhost:*",
        "http://127.0.0.1:6274",
        "https://inspector.lab.example",
        "http://[::1]:*",
    ],
)
def test_allowed_origin_setting_accepts(origin: str) -> None:
    assert load_settings(allowed_origins=[origin]).allowed_origins == [origin]


@pytest.mark.parametrize(
    "origin",
    [
        # unsafe: each would match nothing (locking browsers out silently) or, as a prefix, too much
        "*",
        "http://localhost:6274/",  # trailing slash: never equal to a browser's Origin
        "http://localhost:6274/mcp",
        "localhost:6274",  # no scheme
        "http://*.lab.example",  # host wildcards are not supported by the SDK
        "http://user@localhost:6274",
        "http://localhost*",
        "ftp://localhost:21",
        "HTTP://LOCALHOST:6274",  # browsers send lower case; this would never match
    ],
)
def test_allowed_origin_setting_refuses(origin: str) -> None:
    with pytest.raises(ConfigError, match="APPLIANCE_ALLOWED_ORIGINS"):
        load_settings(allowed_origins=[origin])
