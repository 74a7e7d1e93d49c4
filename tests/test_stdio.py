"""The stdio transport's own stdin reader: line splitting, and a line over the limit refused, not fatal."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from support import APPLIANCE, LOOPBACK_POLICY, initialize_request, write_policy

from appliance.stdio import MAX_LINE_BYTES, PipeLines, request_id_of


@pytest.mark.parametrize(
    ("head", "found"),
    [
        (b'{"jsonrpc":"2.0","id":7,"method":"tools/call"', 7),
        (b'{"jsonrpc": "2.0", "id" : "abc-1", "method"', "abc-1"),
        (b'{"method":"tools/call","params":{"arguments":{"target":"AAAA', None),
        # unsafe: an id that is not valid JSON, or not encodable, must not kill the reader
        (b'{"jsonrpc":"2.0","id":"\\q","method":"ping"', None),
        (b'{"jsonrpc":"2.0","id":"\\ud800","method":"ping"', None),
    ],
)
def test_request_id_is_read_from_the_head_of_a_message(head: bytes, found: Any) -> None:
    assert request_id_of(head) == found


@pytest.mark.anyio
async def test_pipe_lines_skip_an_oversized_line_to_its_newline_and_go_on() -> None:
    read_fd, write_fd = os.pipe()
    refused: list[Any] = []
    lines = PipeLines(read_fd)

    async def on_oversize(request_id: Any) -> None:
        refused.append(request_id)

    lines.on_oversize = on_oversize
    # The oversized line ends in a complete request: it must not be read as one (no smuggling).
    smuggled = b'{"jsonrpc":"2.0","id":99,"method":"ping"}'
    payload = (
        b'{"id":1,"method":"a"}\n'
        + b'{"jsonrpc":"2.0","id":2,"params":"'
        + b"A" * (MAX_LINE_BYTES + 10)
        + b'"}'
        + smuggled
        + b"\n"
        + b'{"id":3,"method":"b"}\n'
        + b'{"id":4}'
    )

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(payload)

    writer = threading.Thread(target=feed)  # a blocking writer, as a client process would be
    writer.start()
    got = [line async for line in lines]
    writer.join()
    os.close(read_fd)

    assert got == ['{"id":1,"method":"a"}\n', '{"id":3,"method":"b"}\n', '{"id":4}']
    assert refused == [2]


def test_stdio_server_answers_an_oversized_line_with_an_error_and_keeps_serving(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    audit = tmp_path / "audit.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(
        APPLIANCE_POLICY_PATH=str(policy),
        APPLIANCE_AUDIT_PATH=str(audit),
        APPLIANCE_DATA_DIR=str(tmp_path / "data"),
        APPLIANCE_LOG_LEVEL="WARNING",
        APPLIANCE_HEALTH_ENABLED="false",
    )
    initialize = initialize_request()
    huge = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "nmap_scan", "arguments": {"target": "A" * (MAX_LINE_BYTES + 1)}},
    }
    messages = [initialize, {"jsonrpc": "2.0", "method": "notifications/initialized"}, huge]
    messages.append({"jsonrpc": "2.0", "id": 8, "method": "ping"})
    proc = subprocess.Popen(
        [APPLIANCE, "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        for message in messages:
            proc.stdin.write(json.dumps(message).encode() + b"\n")
        proc.stdin.flush()
        replies: dict[Any, Any] = {}
        # Read until the ping after the oversized line is answered (stdin stays open until then:
        # EOF would start a shutdown that need not answer a request still in flight).
        while 8 not in replies:
            line = proc.stdout.readline()
            assert line, proc.stderr.read().decode()[-2000:] if proc.stderr else "server closed stdout"
            reply = json.loads(line)
            replies[reply.get("id")] = reply
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()

    assert replies[7]["error"]["code"] == -32600
    assert replies[7]["error"]["data"]["rule"] == "message_too_large"
    assert replies[7]["error"]["data"]["recovery_suggestion"]
    assert replies[8]["result"] == {}  # the server lived on and answered the next request
    trail = [json.loads(line) for line in audit.read_text().splitlines()]
    refusals = [line for line in trail if line.get("rule") == "message_too_large"]
    assert len(refusals) == 1 and refusals[0]["jsonrpc_id"] == 7
