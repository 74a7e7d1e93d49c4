"""MCP sessions over real HTTP (uvicorn on 127.0.0.1): bound to the principal that opened them.

Two principals with valid tokens: a session opened by alice answers 404 to bob for every
request kind (POST, GET event stream, DELETE, cancel), exactly as an unknown session would,
and keeps working for alice. Scans go only to a listener the test started on 127.0.0.1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from support import (
    LOOPBACK_POLICY,
    http_client,
    http_server,
    initialize_request,
    mcp_headers,
    open_session,
    rpc_messages,
    scanner_processes,
    tcp_listener,
    wait_until,
    write_policy,
)

pytestmark = pytest.mark.anyio
ALICE = "alice-token-aaaaaaaaaaaaaaaa"
BOB = "bob-token-bbbbbbbbbbbbbbbbbbb"
PING = {"jsonrpc": "2.0", "id": 9, "method": "ping"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One appliance for the ownership tests: alice and bob, an audit file; (url, audit path)."""
    folder = tmp_path_factory.mktemp("sessions")
    tokens = folder / "tokens"
    tokens.write_text(f"alice {ALICE}\nbob {BOB}\n")
    audit = folder / "audit.log"
    policy = write_policy(folder, LOOPBACK_POLICY)
    with http_server(policy, APPLIANCE_AUTH_TOKENS_FILE=str(tokens), APPLIANCE_AUDIT_PATH=str(audit)) as url:
        yield url, audit


async def test_session_rejects_post_from_another_principal(served: tuple[str, Path]) -> None:
    url, _ = served
    async with httpx2.AsyncClient() as http:
        session = await open_session(http, url, ALICE)
        hijack = await http.post(url, json=PING, headers=mcp_headers(BOB, session))
        owner = await http.post(url, json=PING, headers=mcp_headers(ALICE, session))
    assert hijack.status_code == 404
    assert owner.status_code == 200
    assert rpc_messages(owner.text)[0]["result"] == {}


async def test_session_rejects_event_stream_from_another_principal(served: tuple[str, Path]) -> None:
    url, _ = served
    async with httpx2.AsyncClient() as http:
        session = await open_session(http, url, ALICE)
        listen = {**mcp_headers(BOB, session), "Accept": "text/event-stream"}
        hijack = await http.get(url, headers=listen)
        async with http.stream("GET", url, headers={**listen, **mcp_headers(ALICE, session)}) as owner:
            owner_status = owner.status_code
            owner_type = owner.headers.get("content-type", "")
    assert hijack.status_code == 404
    assert owner_status == 200
    assert owner_type.startswith("text/event-stream")


async def test_session_rejects_delete_from_another_principal(served: tuple[str, Path]) -> None:
    url, _ = served
    async with httpx2.AsyncClient() as http:
        session = await open_session(http, url, ALICE)
        hijack = await http.delete(url, headers=mcp_headers(BOB, session))
        still_open = await http.post(url, json=PING, headers=mcp_headers(ALICE, session))
        owner = await http.delete(url, headers=mcp_headers(ALICE, session))
        gone = await http.post(url, json=PING, headers=mcp_headers(ALICE, session))
    assert hijack.status_code == 404
    assert still_open.status_code == 200
    assert owner.status_code == 200
    assert gone.status_code == 404


async def _slow_call(http: httpx2.AsyncClient, url: str, session: str, request_id: int, port: int) -> dict[str, Any]:
    """A tools/call of a scan that takes seconds (--scan-delay); returns its JSON-RPC response."""
    call = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {
            "name": "nmap_scan",
            "arguments": {"target": "127.0.0.1", "ports": f"{port},23000-23002", "extra_args": ["--scan-delay", "1s"]},
        },
    }
    response = await http.post(url, json=call, headers=mcp_headers(ALICE, session), timeout=60)
    return next(m for m in rpc_messages(response.text) if m.get("id") == request_id)


def _cancel(request_id: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}}


async def test_session_rejects_cancel_from_another_principal(served: tuple[str, Path]) -> None:
    url, _ = served
    with tcp_listener() as port:
        marker = f"{port},23000-23002"
        async with httpx2.AsyncClient() as http, anyio.create_task_group() as group:
            session = await open_session(http, url, ALICE)
            results: list[dict[str, Any]] = []

            async def call(request_id: int) -> None:
                results.append(await _slow_call(http, url, session, request_id, port))

            # Bob's cancel of alice's running call: refused as an unknown session; the scan finishes.
            group.start_soon(call, 21)
            await anyio.to_thread.run_sync(lambda: wait_until(lambda: scanner_processes(marker), timeout=20))
            hijack = await http.post(url, json=_cancel(21), headers=mcp_headers(BOB, session))
            await anyio.to_thread.run_sync(lambda: wait_until(lambda: results, timeout=30))
            assert hijack.status_code == 404
            assert results[0]["result"]["isError"] is False
            assert results[0]["result"]["structuredContent"]["partial"] is False

            # Control: the same cancel from alice does stop her next call's scanner.
            group.start_soon(call, 22)
            await anyio.to_thread.run_sync(lambda: wait_until(lambda: scanner_processes(marker), timeout=20))
            owner = await http.post(url, json=_cancel(22), headers=mcp_headers(ALICE, session))
            assert owner.status_code == 202
            await anyio.to_thread.run_sync(lambda: wait_until(lambda: not scanner_processes(marker), timeout=10))
            group.cancel_scope.cancel()  # a cancelled request gets no response to wait for


async def test_audit_principal_is_the_verified_token_principal(served: tuple[str, Path]) -> None:
    url, audit = served
    call = {
        "jsonrpc": "2.0",
        "id": 5,
        "method": "tools/call",
        "params": {"name": "nmap_scan", "arguments": {"target": "10.20.0.77", "dry_run": True}},
    }
    async with httpx2.AsyncClient() as http:
        session = await open_session(http, url, BOB)
        response = await http.post(url, json=call, headers=mcp_headers(BOB, session))
    assert response.status_code == 200
    lines = [json.loads(line) for line in audit.read_text().splitlines() if "10.20.0.77" in line]
    assert [line["principal"] for line in lines] == ["bob"]
    assert BOB not in audit.read_text()


async def test_missing_token_gets_bearer_challenge_and_no_oauth_metadata(served: tuple[str, Path]) -> None:
    url, _ = served
    base = url.removesuffix("/mcp")
    async with httpx2.AsyncClient() as http:
        missing = await http.post(url, json=PING, headers={"Accept": "application/json, text/event-stream"})
        metadata = await http.get(f"{base}/.well-known/oauth-protected-resource/mcp")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer ")
    # Static tokens come from no authorization server: nothing may send a client looking for one.
    assert "resource_metadata" not in missing.headers["www-authenticate"]
    assert metadata.status_code == 404


async def test_principal_cannot_open_more_sessions_than_its_share(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {ALICE}\nbob {BOB}\n")
    audit = tmp_path / "audit.log"
    sessions = {"global": {"sessions": 3}, "per_principal": {"sessions": 2}}
    policy = write_policy(tmp_path, LOOPBACK_POLICY, {"limits": {"concurrency": sessions}})
    env = {"APPLIANCE_AUTH_TOKENS_FILE": str(tokens), "APPLIANCE_AUDIT_PATH": str(audit)}
    with http_server(policy, **env) as url:
        async with httpx2.AsyncClient() as http:
            first = await open_session(http, url, ALICE)
            await open_session(http, url, ALICE)
            third = await http.post(url, json=initialize_request(), headers=mcp_headers(ALICE))
            # The other principal is not locked out by alice's sessions...
            await open_session(http, url, BOB)
            # ...until all sessions together reach the global limit, which binds bob too.
            global_full = await http.post(url, json=initialize_request(), headers=mcp_headers(BOB))
            # Closing one of hers gives alice a session again.
            assert (await http.delete(url, headers=mcp_headers(ALICE, first))).status_code == 200
            again = await http.post(url, json=initialize_request(), headers=mcp_headers(ALICE))
    assert third.status_code == 429
    refusal = third.json()["error"]["data"]
    assert refusal["rule"] == "principal_sessions_full"
    assert refusal["recovery_suggestion"]
    assert global_full.status_code == 429
    assert global_full.json()["error"]["data"]["rule"] == "sessions_full"
    assert again.status_code == 200
    refused = [json.loads(line) for line in audit.read_text().splitlines() if "session_refused" in line]
    assert [(r["principal"], r["rule"]) for r in refused] == [
        ("alice", "principal_sessions_full"),
        ("bob", "sessions_full"),
    ]


async def test_principal_cannot_hold_every_scan_slot_over_http(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {ALICE}\nbob {BOB}\n")
    share = {"limits": {"concurrency": {"per_principal": {"running": 1, "queued": 0}}}}
    policy = write_policy(tmp_path, LOOPBACK_POLICY, share)
    with tcp_listener() as port, http_server(policy, APPLIANCE_AUTH_TOKENS_FILE=str(tokens)) as url:
        marker = f"{port},23000-23002"
        async with (
            httpx2.AsyncClient() as http,
            http_client(url, "legacy", token=ALICE) as alice,
            http_client(url, "legacy", token=BOB) as bob,
            anyio.create_task_group() as group,
        ):
            session = await open_session(http, url, ALICE)
            group.start_soon(_slow_call, http, url, session, 31, port)
            await anyio.to_thread.run_sync(lambda: wait_until(lambda: scanner_processes(marker), timeout=20))
            refused = await alice.call_tool("nmap_scan", {"target": "127.0.0.1", "ports": str(port)})
            served_bob = await bob.call_tool("nmap_scan", {"target": "127.0.0.1", "ports": str(port)})
            group.cancel_scope.cancel()
    assert refused.is_error
    assert refused.structured_content is not None
    assert refused.structured_content["rule"] == "principal_queue_full"
    assert not served_bob.is_error


async def test_audit_principal_in_the_sessionless_era(served: tuple[str, Path]) -> None:
    url, audit = served
    async with http_client(url, "2026-07-28", token=BOB) as client:
        result = await client.call_tool("nmap_scan", {"target": "10.20.0.78", "dry_run": True})
    assert not result.is_error
    lines = [json.loads(line) for line in audit.read_text().splitlines() if "10.20.0.78" in line]
    assert [line["principal"] for line in lines] == ["bob"]
