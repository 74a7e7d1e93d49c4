"""Start-up: the one "ready" line and its stages, work deferred past the first answer (and still
done), a stdio start path without the sidecar's stack, a prompt exit after stdin EOF.

Every server here is a real `appliance serve` child on the loopback policy; nothing is scanned.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from support import (
    LOOPBACK_POLICY,
    START_SECONDS,
    STOP_SECONDS,
    closed_port,
    initialize_request,
    loopback_listening,
    served,
    server_env,
    sidecar_get,
    stdio_child,
    write_policy,
)
from support.waiting import wait_until

from appliance.startup import STAGES

FAKES = Path(__file__).parent / "fakes"
TOOLS_LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def send(stdin: IO[bytes], *messages: dict[str, Any]) -> None:
    stdin.write(b"".join(json.dumps(message).encode() + b"\n" for message in messages))
    stdin.flush()


def answer(stdout: IO[bytes], request_id: int) -> dict[str, Any]:
    while True:
        line = stdout.readline()
        assert line, "the server closed stdout before answering"
        message: dict[str, Any] = json.loads(line)
        if message.get("id") == request_id:
            return message


class StderrRecords:
    """The JSON lines of a child's stderr, read from its descriptor: select() then sees every
    line not yet taken (a buffered reader would hold some where select cannot see them)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        self._proc = proc
        self._fd = proc.stderr.fileno()
        self._pending = b""

    def _lines(self, deadline: float) -> Iterator[bytes]:
        while True:
            while b"\n" in self._pending:
                line, self._pending = self._pending.split(b"\n", 1)
                yield line
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._fd], [], [], left)[0]:
                return
            chunk = os.read(self._fd, 65536)
            if not chunk:
                return
            self._pending += chunk

    def first(self, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first record `wanted` accepts, within START_SECONDS."""
        for line in self._lines(time.monotonic() + START_SECONDS):
            if line.startswith(b"{"):
                record: dict[str, Any] = json.loads(line)
                if wanted(record):
                    return record
        raise AssertionError(f"no such line on stderr within {START_SECONDS} s (exit code {self._proc.poll()})")

    def rest(self) -> list[dict[str, Any]]:
        """The records left once the child has exited."""
        return [json.loads(line) for line in self._lines(time.monotonic() + STOP_SECONDS) if line.startswith(b"{")]


def is_ready(record: dict[str, Any]) -> bool:
    return record.get("message") == "ready"


def assert_stages(record: dict[str, Any], transport: str) -> None:
    stages = record["startup_ms"]
    assert list(stages) == list(STAGES), stages  # all four, in order, on Linux with /proc
    for value in stages.values():
        assert isinstance(value, float)
        assert value >= 0
        assert value == round(value, 1)
    assert record["transport"] == transport
    assert record["level"] == "INFO"


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_stdio_writes_one_ready_line_before_any_message_then_answers(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    with stdio_child(policy, APPLIANCE_LOG_LEVEL="INFO") as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        records = StderrRecords(proc)
        ready = records.first(is_ready)  # nothing was sent yet: the line says the transport reads
        assert_stages(ready, "stdio")
        deferred = ["metrics", "sidecar", "retention_sweep", "policy_watch", "cancel_poll", "audit_head"]
        assert ready["deferred"] == deferred
        send(proc.stdin, initialize_request(), INITIALIZED, TOOLS_LIST)
        assert "nmap_scan" in {tool["name"] for tool in answer(proc.stdout, 2)["result"]["tools"]}
        proc.stdin.close()
        assert proc.wait(timeout=STOP_SECONDS) == 0
        rest = records.rest()
    assert not [record for record in rest if is_ready(record)]  # one ready line per start


def test_http_writes_its_ready_line_once_the_port_listens(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    with served(policy, APPLIANCE_LOG_LEVEL="INFO") as server:
        port = int(server.url.rsplit(":", 1)[1].split("/")[0])
        lines = wait_until(lambda: [line for line in list(server.log) if '"message": "ready"' in line])
        assert loopback_listening(port)
    assert len(lines) == 1
    assert_stages(json.loads(lines[0]), "http")


def test_the_sidecar_follows_the_first_answer_and_counts_a_call_made_before_it(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    health = closed_port()
    with stdio_child(policy, APPLIANCE_HEALTH_PORT=str(health)) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        dry_run = {"name": "nmap_scan", "arguments": {"target": "127.0.0.1", "ports": "1", "dry_run": True}}
        send(proc.stdin, initialize_request(), INITIALIZED, TOOLS_LIST)
        answer(proc.stdout, 2)
        send(proc.stdin, {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": dry_run})
        assert not answer(proc.stdout, 3)["result"].get("isError")
        wait_until(lambda: sidecar_get(health, "/livez")[0] == 200, timeout=START_SECONDS)
        text = metrics_text(health)
    assert 'appliance_tool_calls_total{outcome="dry_run",tool="nmap_scan"} 1.0' in text
    assert 'appliance_jobs{state="completed"}' in text


def test_the_sidecar_starts_when_the_client_asks_nothing(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    health = closed_port()
    with stdio_child(policy, APPLIANCE_HEALTH_PORT=str(health)):
        wait_until(lambda: sidecar_get(health, "/livez")[0] == 200, timeout=START_SECONDS)


def test_stdio_start_path_loads_neither_metrics_nor_the_sidecar_nor_the_http_stack(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    deferred = ["aiohttp", "prometheus_client", "appliance.sidecar", "appliance.http"]
    control = ["appliance.stdio", "mcp.server.stdio"]  # loaded by then: the check sees modules
    proc = subprocess.Popen(
        [sys.executable, str(FAKES / "serve_at_ready.py"), *deferred, *control],
        env=server_env(policy),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        loaded = StderrRecords(proc).first(lambda record: "loaded_at_ready" in record)["loaded_at_ready"]
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream:
                stream.close()
    assert loaded == control


def test_stdin_eof_ends_the_server_with_its_stop_line(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    audit = tmp_path / "audit.jsonl"
    with stdio_child(policy, APPLIANCE_AUDIT_PATH=str(audit)) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        send(proc.stdin, initialize_request(), INITIALIZED, TOOLS_LIST)
        answer(proc.stdout, 2)
        proc.stdin.close()
        assert proc.wait(timeout=STOP_SECONDS) == 0
    events = [json.loads(line)["event"] for line in audit.read_text().splitlines()]
    assert events == ["chain_start", "appliance_start", "appliance_stop"]


def test_the_audit_chain_head_is_logged_at_start_and_stop_and_exported(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    audit, key = tmp_path / "audit.jsonl", tmp_path / "audit_key"
    key.write_text("a-test-key-of-32-characters-0123\n")
    health = closed_port()
    env = {"APPLIANCE_AUDIT_PATH": str(audit), "APPLIANCE_AUDIT_KEY_FILE": str(key), "APPLIANCE_LOG_LEVEL": "INFO"}
    with stdio_child(policy, APPLIANCE_HEALTH_PORT=str(health), **env) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        records = StderrRecords(proc)
        start = records.first(lambda record: record.get("message") == "audit chain head")
        send(proc.stdin, initialize_request(), INITIALIZED, TOOLS_LIST)
        answer(proc.stdout, 2)
        wait_until(lambda: sidecar_get(health, "/livez")[0] == 200, timeout=START_SECONDS)
        text = metrics_text(health)
        proc.stdin.close()
        assert proc.wait(timeout=STOP_SECONDS) == 0
        stop = next(r for r in records.rest() if r.get("message") == "audit chain head")
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [line["event"] for line in lines] == ["chain_start", "appliance_start", "appliance_stop"]
    assert (start["reason"], start["seq"], start["chain"]) == ("start", 2, lines[1]["chain"])
    assert (stop["reason"], stop["seq"], stop["chain"]) == ("stop", 3, lines[2]["chain"])
    assert start["chain_mode"] == "hmac-sha256"
    assert "appliance_audit_chain_sequence 2.0" in text
    assert f'appliance_audit_chain_head_info{{chain="{lines[1]["chain"]}",mode="hmac-sha256",seq="2"}} 1.0' in text
