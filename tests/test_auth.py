"""Bearer tokens: parsing, constant-time lookup, rotation on a live server, principals in audit."""

from __future__ import annotations

import hmac
import json
from pathlib import Path

import httpx2
import pytest
from support import LOOPBACK_POLICY, http_client, http_server, wait_until, write_policy

from appliance.auth import TokenSource, parse_tokens
from appliance.errors import ConfigError

TOKEN_A = "alice-token-aaaaaaaaaaaa"
TOKEN_B = "bob-token-bbbbbbbbbbbbbbb"


@pytest.mark.parametrize(
    "text",
    [
        # unsafe
        "alice short",  # a token under 16 characters
        "alice",  # no token
        "alice tok en-with-space-xxxxxxx",  # three fields
        "al ice:x token-0123456789abcdef",
        "-alice token-0123456789abcdef",  # principal that looks like an option
    ],
)
def test_token_file_rejects_malformed_lines_without_echoing_them(text: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_tokens(text, "tokens")
    assert refused.value.rule == "tokens_invalid"
    assert "line 1" in refused.value.message
    assert text.split()[-1] not in refused.value.message or len(text.split()) == 1


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


def test_bad_token_file_on_reload_keeps_the_old_tokens(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {TOKEN_A}\n")
    source = TokenSource(None, tokens)
    tokens.write_text("garbage\n")
    assert not source.reload()
    assert source.table.principal_for(TOKEN_A) == "alice"


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
