"""Graceful shutdown of a real `appliance serve` process while real scans of loopback run."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from support import (
    LOOPBACK_POLICY,
    http_client,
    initialize_request,
    scanner_processes,
    served,
    stdio_child,
    tcp_listener,
    wait_until,
    write_policy,
)

pytestmark = pytest.mark.anyio
# Docker's default stop timeout: a shutdown must end well inside it, by the app's own exit.
KILL_DEADLINE_SECONDS = 10


async def test_sigterm_during_two_scans_exits_zero_promptly(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    audit = tmp_path / "audit.log"
    results: list[Any] = []
    with served(policy, APPLIANCE_AUDIT_PATH=str(audit), APPLIANCE_DRAIN_SECONDS="1") as server:
        wait_until(lambda: server.get("/readyz")[0] == 200, timeout=20)
        with tcp_listener() as target:
            markers = [f"{target},24000-24300", f"{target},25000-25300"]
            async with anyio.create_task_group() as group:
                for marker in markers:

                    async def scan(marker: str = marker) -> None:
                        async with http_client(server.url, "legacy") as client:
                            arguments = {"target": "127.0.0.1", "ports": marker, "extra_args": ["--scan-delay", "1s"]}
                            results.append(await client.call_tool("nmap_scan", arguments))

                    group.start_soon(scan)
                for marker in markers:
                    await anyio.to_thread.run_sync(lambda m=marker: wait_until(lambda: scanner_processes(m), 20))
                started = time.monotonic()
                server.proc.send_signal(signal.SIGTERM)
                ready_during_drain = await anyio.to_thread.run_sync(lambda: server.get("/readyz")[0])
                code = await anyio.to_thread.run_sync(lambda: server.proc.wait(timeout=KILL_DEADLINE_SECONDS))
                elapsed = time.monotonic() - started
        stderr = server.stderr_tail()
    print(f"shutdown with two scans running took {elapsed:.2f}s")  # a figure, not an assertion
    assert code == 0, stderr
    assert elapsed < KILL_DEADLINE_SECONDS / 2
    assert ready_during_drain == 503
    assert not any(scanner_processes(m) for m in markers)
    # Both clients got their partial results before the server went away.
    assert len(results) == 2
    for result in results:
        assert not result.is_error
        assert result.structured_content["partial_reason"] == "shutdown"
    ends = [json.loads(line) for line in audit.read_text().splitlines() if '"event": "end"' in line]
    assert sorted(e["outcome"] for e in ends) == ["partial", "partial"]


def test_sigterm_on_stdio_with_a_scan_running_exits_zero(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    with stdio_child(policy) as proc, tcp_listener() as target:
        assert proc.stdin is not None
        marker = f"{target},26000-26300"
        messages = [
            initialize_request(),
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {
                    "name": "nmap_scan",
                    "arguments": {"target": "127.0.0.1", "ports": marker, "extra_args": ["--scan-delay", "1s"]},
                },
            },
        ]
        for message in messages:
            proc.stdin.write(json.dumps(message).encode() + b"\n")
        proc.stdin.flush()
        wait_until(lambda: scanner_processes(marker), timeout=20)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=KILL_DEADLINE_SECONDS)
        elapsed = time.monotonic() - started
    print(f"stdio shutdown took {elapsed:.2f}s")
    assert code == 0
    assert not scanner_processes(marker)
