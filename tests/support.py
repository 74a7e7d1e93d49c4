"""Helpers shared by the tests: policies in tmp dirs, loopback listeners, waiting on conditions."""

from __future__ import annotations

import contextlib
import copy
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_POLICY = yaml.safe_load((REPO / "policies" / "scope.yaml").read_text())
# Tests scan only listeners they start on 127.0.0.1, so their policy opens loopback.
LOOPBACK_POLICY: dict[str, Any] = {"scope": {"insecure_allow_loopback": True}}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def write_policy(directory: Path, *overrides: dict[str, Any], name: str = "scope.yaml") -> Path:
    """The repository's default policy with `overrides` merged in, written to `directory`."""
    data = DEFAULT_POLICY
    for extra in overrides:
        data = _merge(data, extra)
    path = directory / name
    path.write_text(yaml.safe_dump(data))
    return path


@contextlib.contextmanager
def tcp_listener(banner: bytes = b"") -> Iterator[int]:
    """A TCP listener on 127.0.0.1 that accepts, optionally sends a banner, and closes."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                if banner:
                    with contextlib.suppress(OSError):
                        conn.sendall(banner)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=2)
        server.close()


def closed_port() -> int:
    """A loopback port with nothing listening (bound then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {condition}")
        time.sleep(interval)


def scanner_processes(marker: str) -> list[psutil.Process]:
    """Live (non-zombie) processes whose command line contains `marker`."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(marker in part for part in cmdline):
            found.append(proc)
    return found


# --- raw MCP over streamable HTTP (handshake era), for tests that need the session ID itself ---
HANDSHAKE_VERSION = "2025-11-25"


def mcp_headers(token: str, session: str | None = None) -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    if session is not None:
        headers.update({"Mcp-Session-Id": session, "MCP-Protocol-Version": HANDSHAKE_VERSION})
    return headers


def rpc_messages(text: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a response body, plain JSON or an SSE stream of `data:` lines."""
    if text.lstrip().startswith("{"):
        return [json.loads(text)]
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and line[5:].strip()]


def initialize_request() -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": HANDSHAKE_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "tests", "version": "0"},
        },
    }


async def open_session(http: Any, url: str, token: str) -> str:
    """Initialize a handshake-era session with `token` (an httpx2.AsyncClient); returns its ID."""
    response = await http.post(url, json=initialize_request(), headers=mcp_headers(token))
    assert response.status_code == 200, response.text
    session = str(response.headers["mcp-session-id"])
    done = await http.post(
        url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=mcp_headers(token, session)
    )
    assert done.status_code == 202, done.text
    return session
