"""Bearer tokens: parsing, constant-time lookup, rotation on a live server, principals in audit."""

from __future__ import annotations

import hmac
import json
from pathlib import Path

import httpx2
import pytest
from prometheus_client import CollectorRegistry
from support import LOOPBACK_POLICY, closed_port, http_client, http_server, wait_until, write_policy

from appliance.auth import TokenSource, parse_tokens

TOKEN_A = "alice-token-aaaaaaaaaaaa"
TOKEN_B = "bob-token-bbbbbbbbbbbbbbb"


@pytest.mark.parametrize(
    "text",
    [
        # unsafe
        "alice short",  # a token under 16 characters
        "alice",  # no token
        "alice tok en-with-space-xxxxxxx",  # a short token with a scopes-like third field
        "al ice:x token-0123456789abcdef",
        "-alice token-0123456789abcdef",  # principal that looks like an option
        "alice token-0123456789abcdef Scan!",  # scopes column not scope names
        "alice token-0123456789abcdef scan extra",  # four fields
    ],
)
def test_token_file_drops_malformed_line_alone_without_echoing_it(text: str, caplog: pytest.LogCaptureFixture) -> None:
    table = parse_tokens(f"bob {TOKEN_B}\n{text}\n", "tokens")
    assert table.bad_lines == (2,)
    assert table.principal_for(TOKEN_B) == "bob"  # the good line stays valid
    assert [r.line for r in caplog.records if r.levelname == "ERROR"] == [2]  # type: ignore[attr-defined]
    assert text.split()[-1] not in caplog.text or len(text.split()) == 1


def test_token_file_scopes_column_is_read_and_its_absence_means_all_but_admin() -> None:
    table = parse_tokens(f"alice {TOKEN_A} scan:read,scan:admin\nbob {TOKEN_B}\n", "tokens")
    assert [(e.principal, e.scopes) for e in table.entries] == [
        ("alice", ("scan:read", "scan:admin")),
        ("bob", ("scan:read", "scan:run", "scan:intrusive")),
    ]


def test_lookup_names_the_principal() -> None:
    table = parse_tokens(f"# rotation\nalice {TOKEN_A}\n\nbob {TOKEN_B}\n", "tokens")
    assert table.principal_for(TOKEN_A) == "alice"
    assert table.principal_for(TOKEN_B) == "bob"
    assert table.principal_for("") is None
    assert table.principal_for(TOKEN_A[:-1]) is None


def test_lookup_compares_every_entry_even_after_a_match(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    table = parse_tokens(f"alice {TOKEN_A}\nbob {TOKEN_B}\n", "tokens")
    assert table.principal_for(TOKEN_A) == "alice"
    assert len(calls) == 2  # no early exit that would tell which entry matched


def test_bad_line_on_reload_revokes_that_line_only_and_is_counted(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {TOKEN_A}\nbob {TOKEN_B}\n")
    registry = CollectorRegistry()
    source = TokenSource(None, tokens, registry)
    tokens.write_text(f"alice {TOKEN_A}\nbob {TOKEN_B[:10]}\n")  # bob's line broken by an edit
    assert not source.reload()
    assert source.table.principal_for(TOKEN_A) == "alice"
    assert source.table.principal_for(TOKEN_B) is None
    assert source.status()["bad_lines"] == [2]
    assert registry.get_sample_value("appliance_auth_token_lines_rejected") == 1


def test_deleted_token_file_revokes_every_file_token(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {TOKEN_A}\n")
    source = TokenSource("single-token-0123456789", tokens)
    tokens.unlink()
    assert not source.reload()
    assert source.table.principal_for(TOKEN_A) is None
    assert source.table.principal_for("single-token-0123456789") == "default"  # not a file token
    assert "no file tokens" in str(source.status()["file_problem"])


def test_missing_token_file_at_start_means_no_file_tokens(tmp_path: Path) -> None:
    source = TokenSource(None, tmp_path / "absent")
    assert len(source.table) == 0
    assert source.file_problem is not None


@pytest.mark.anyio
async def test_rotation_on_a_live_server_and_principal_in_audit(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {TOKEN_A}\n")
    audit = tmp_path / "audit.log"
    extra = {
        "APPLIANCE_AUTH_TOKENS_FILE": str(tokens),
        "APPLIANCE_AUDIT_PATH": str(audit),
        "APPLIANCE_RELOAD_POLL_SECONDS": "0.2",
    }
    with http_server(policy, **extra) as url:
        async with http_client(url, "legacy", token=TOKEN_A) as client:
            await client.call_tool("nmap_scan", {"target": "10.20.0.5", "dry_run": True})
        # Rotate: bob replaces alice; the server notices the file change by itself.
        tokens.write_text(f"bob {TOKEN_B}\n")

        def status(token: str) -> int:
            ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
            with httpx2.Client() as http:
                return http.post(url, json=ping, headers={"Authorization": f"Bearer {token}"}).status_code

        wait_until(lambda: status(TOKEN_A) == 401, timeout=10)
        assert status(TOKEN_B) != 401
    calls = [json.loads(line) for line in audit.read_text().splitlines() if '"request_id"' in line]
    assert calls[0]["principal"] == "alice"
    assert TOKEN_A not in audit.read_text()


def test_revocation_fails_closed_on_a_live_server(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {TOKEN_A}\nbob {TOKEN_B}\n")
    health_port = closed_port()
    extra = {
        "APPLIANCE_AUTH_TOKENS_FILE": str(tokens),
        "APPLIANCE_RELOAD_POLL_SECONDS": "0.2",
        "APPLIANCE_HEALTH_PORT": str(health_port),
    }

    def status(url: str, token: str) -> int:
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        with httpx2.Client() as http:
            return http.post(url, json=ping, headers={"Authorization": f"Bearer {token}"}).status_code

    with http_server(policy, **extra) as url:
        assert status(url, TOKEN_B) != 401
        # One malformed line (bob's, cut short by an edit): that line alone stops working.
        tokens.write_text(f"alice {TOKEN_A}\nbob {TOKEN_B[:8]}\n")
        wait_until(lambda: status(url, TOKEN_B) == 401, timeout=10)
        assert status(url, TOKEN_A) != 401
        with httpx2.Client(base_url=f"http://127.0.0.1:{health_port}") as sidecar:

            def healthz() -> dict[str, object] | None:
                try:
                    return dict(sidecar.get("/healthz").json())
                except httpx2.ConnectError:
                    return None  # the sidecar starts just after the transport

            report = wait_until(healthz, timeout=10)
            metrics = sidecar.get("/metrics").text
        assert report["checks"]["auth"]["bad_lines"] == [2]
        assert report["status"] == "degraded"
        assert "appliance_auth_token_lines_rejected 1.0" in metrics
        assert TOKEN_A not in json.dumps(report)
        # Deleting the file revokes every token in it.
        tokens.unlink()
        wait_until(lambda: status(url, TOKEN_A) == 401, timeout=10)


@pytest.mark.anyio
async def test_static_token_scopes_column_limits_a_live_server(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {TOKEN_A} scan:read\nbob {TOKEN_B} scan:run\n")
    audit = tmp_path / "audit.log"
    with http_server(policy, APPLIANCE_AUTH_TOKENS_FILE=str(tokens), APPLIANCE_AUDIT_PATH=str(audit)) as url:
        async with http_client(url, "legacy", token=TOKEN_A) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            scan = await client.call_tool("nmap_scan", {"target": "127.0.0.1", "dry_run": True})
        async with httpx2.AsyncClient() as http:
            ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
            no_read = await http.post(url, json=ping, headers={"Authorization": f"Bearer {TOKEN_B}"})
    assert names == {"get_scan", "list_scans", "diff_scans"}
    assert scan.structured_content["rule"] == "insufficient_scope"  # type: ignore[index]
    assert no_read.status_code == 403  # scan:read is needed for the endpoint itself
    refused = [json.loads(line) for line in audit.read_text().splitlines() if '"insufficient_scope"' in line]
    assert {line.get("event") for line in refused} == {None, "http_auth_refused"}  # the tool call's and bob's
