"""Approval over real streamable HTTP (`appliance serve` on 127.0.0.1), both protocol eras: the
question reaches the client, a decline ends the scan before any scanner starts, and the audit
file names the verified principal as the one who declined. Nothing is scanned here."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import LOOPBACK_POLICY, TOKEN, http_client, http_server, write_policy
from support.approval import Human, refuse

pytestmark = pytest.mark.anyio
ERAS = ["legacy", "2026-07-28"]
APPROVAL = {"approval": {"nmap_scripts": True, "approval_timeout_seconds": 30}}
CALL = {"target": "127.0.0.1", "ports": "9", "scripts": ["banner"]}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("approval")
    tokens = folder / "tokens"
    tokens.write_text(f"alice {TOKEN}\n")
    audit = folder / "audit.log"
    policy = write_policy(folder, LOOPBACK_POLICY, APPROVAL)
    with http_server(policy, APPLIANCE_AUTH_TOKENS_FILE=str(tokens), APPLIANCE_AUDIT_PATH=str(audit)) as url:
        yield url, audit


def audit_lines(path: Path, scan_id: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [line for line in lines if line.get("scan_id") == scan_id]


@pytest.mark.parametrize("mode", ERAS)
async def test_decline_over_http_ends_the_scan_unrun(served: tuple[str, Path], mode: str) -> None:
    url, audit = served
    human = Human(refuse())
    async with http_client(url, mode, elicitation_callback=human) as client:
        result = await client.call_tool("nmap_scan", CALL)

    assert result.is_error and result.structured_content is not None
    error = result.structured_content
    assert error["rule"] == "approval_declined" and error["status"] == "failed"
    [question] = human.questions
    assert "--script banner" in question and "127.0.0.1" in question
    lines = audit_lines(audit, error["scan_id"])
    events = [line.get("event") or line.get("verdict") for line in lines]
    assert events == ["job", "approval_requested", "approval", "refused"]
    assert lines[2]["decision"] == "declined" and lines[2]["approver"] == "alice"
    assert "start" not in events  # no scanner ran


@pytest.mark.parametrize("mode", ERAS)
async def test_client_without_elicitation_over_http_gets_approval_unavailable(
    served: tuple[str, Path], mode: str
) -> None:
    url, _ = served
    async with http_client(url, mode) as client:
        result = await client.call_tool("nmap_scan", CALL)
    assert result.is_error and result.structured_content is not None
    assert result.structured_content["rule"] == "approval_unavailable"
