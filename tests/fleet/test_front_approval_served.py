"""Approval through `appliance serve --role front` x2 and a segment process, with a real MCP client
over HTTP: the first front seals the question's state, the second front (sharing the key file)
opens it and the segment runs real nmap --script banner against a listener on loopback."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, InputRequiredResult
from support.approval import Human, approve
from support.fleet import served_front, served_segment
from support.listeners import tcp_listener
from support.nats import NatsServer
from support.servers import http_client
from support.waiting import wait_until

pytestmark = pytest.mark.anyio

APPROVAL = {"approval": {"nmap_scripts": True, "approval_timeout_seconds": 60}}


def audit_events(path: Path, scan_id: str) -> list[str]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [str(line.get("event") or line.get("verdict")) for line in lines if line.get("scan_id") == scan_id]


async def test_the_answer_to_one_fronts_question_runs_through_the_other_front(
    tmp_path: Path, own_nats: NatsServer
) -> None:
    key = tmp_path / "request_state_key"
    key.write_text(secrets.token_urlsafe(32) + "\n")
    other_key = tmp_path / "another_key"
    other_key.write_text(secrets.token_urlsafe(32) + "\n")
    audits = [tmp_path / "front-1.audit", tmp_path / "front-2.audit"]
    with (
        tcp_listener(b"SSH-2.0-lab\r\n") as port,
        served_segment(tmp_path, own_nats.url, "seg-a", "seg-a-1", APPROVAL) as segment,
        served_front(
            tmp_path,
            own_nats.url,
            APPROVAL,
            APPLIANCE_REQUEST_STATE_KEY_FILE=str(key),
            APPLIANCE_AUDIT_PATH=str(audits[0]),
        ) as first,
        served_front(
            tmp_path,
            own_nats.url,
            APPROVAL,
            APPLIANCE_REQUEST_STATE_KEY_FILE=str(key),
            APPLIANCE_AUDIT_PATH=str(audits[1]),
        ) as second,
        served_front(tmp_path, own_nats.url, APPROVAL, APPLIANCE_REQUEST_STATE_KEY_FILE=str(other_key)) as stranger,
    ):
        wait_until(lambda: first.get("/healthz")[1]["checks"]["fleet"].get("segments"), timeout=20)
        wait_until(lambda: second.get("/healthz")[1]["checks"]["fleet"].get("segments"), timeout=20)
        arguments: dict[str, Any] = {"target": "127.0.0.1", "ports": str(port), "scripts": ["banner"]}
        arguments["wait_seconds"] = 60
        human = Human(approve("lab window"))
        async with http_client(first.url, "2026-07-28", elicitation_callback=human) as client:
            asked = await client.session.call_tool("nmap_scan", arguments, allow_input_required=True)
        assert isinstance(asked, InputRequiredResult), asked
        assert asked.input_requests is not None and asked.request_state is not None
        question = asked.input_requests["scan_approval"]
        message = question.params.message  # type: ignore[union-attr]
        assert "--script banner" in message and "127.0.0.1" in message
        # A front with another key cannot open the first front's seal: the SDK refuses the state.
        async with http_client(stranger.url, "2026-07-28", elicitation_callback=human) as client:
            with pytest.raises(MCPError) as unsealed:
                await client.call_tool(
                    "nmap_scan",
                    arguments,
                    input_responses={"scan_approval": approve()},
                    request_state=asked.request_state,
                )
        assert unsealed.value.error.code == INVALID_PARAMS
        # The retry goes to the other front: only the shared key opens the first front's seal.
        async with http_client(second.url, "2026-07-28", elicitation_callback=human) as other:
            result = await other.call_tool(
                "nmap_scan",
                arguments,
                input_responses={"scan_approval": approve("lab window")},
                request_state=asked.request_state,
            )
        # A handshake-era client cannot be asked by a stateless front: refused, no job.
        async with http_client(first.url, "legacy", elicitation_callback=human) as legacy:
            refused = await legacy.call_tool("nmap_scan", {**arguments, "ports": "9"})
            listed = await legacy.call_tool("list_scans", {})
        logs = "".join(first.log + second.log + segment.log)
    assert not result.is_error, result.structured_content
    body = result.structured_content
    assert body is not None and body["status"] == "completed"
    assert [(p["port"], p["state"]) for p in body["hosts"][0]["ports"]] == [(port, "open")]
    scan_id = body["scan_id"]
    assert audit_events(audits[0], scan_id) == ["job", "approval_requested"]
    assert audit_events(audits[1], scan_id) == ["approval", "job", "dispatched"]
    assert human.questions == []  # the client never showed a form mid-call: the answer came with the retry
    assert refused.is_error and refused.structured_content is not None
    assert refused.structured_content["rule"] == "approval_unavailable", refused.structured_content
    assert [scan["scan_id"] for scan in listed.structured_content["scans"]] == [scan_id]  # type: ignore[index]
    assert key.read_text().strip() not in logs  # the key is never logged
