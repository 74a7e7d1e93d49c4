"""Shutdown with four scans on ONE shared client: every partial result reaches the client.

The reproducer of a loss seen in the benchmark (3 of 4 results in one run of 3): the SDK client
fetches `tools/list` right after a tool result (to validate it against the output schema) when
it has not listed the tools yet; during shutdown that follow-up found the listener closed, and
the client then cancelled its other calls on the connection, results in flight included. Before
the fix this failed in 4 runs of 5; the server now stays up until clients go quiet after the
last answer (app.RESPONSES_QUIET_SECONDS). `scripts/test-long` repeats it 50 times.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest
from support import LOOPBACK_POLICY, http_client, scanner_processes, served, tcp_listener, wait_until, write_policy

pytestmark = pytest.mark.anyio
SCANS = 4
LIMITS = {
    "limits": {
        "concurrency": {
            "per_tool": {"nmap_scan": {"running": SCANS}},
            "global": {"running": SCANS},
            "per_principal": {"running": SCANS},  # one client, one principal, four scans
        }
    }
}


@pytest.mark.parametrize("mode", ["2026-07-28", "legacy"])
async def test_sigterm_with_four_scans_on_one_shared_client_returns_every_partial_result(
    tmp_path: Path, mode: str
) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY, LIMITS)
    audit = tmp_path / "audit.log"
    results: list[Any] = []
    with served(policy, APPLIANCE_AUDIT_PATH=str(audit), APPLIANCE_DRAIN_SECONDS="1") as server:
        wait_until(lambda: server.get("/readyz")[0] == 200, timeout=20)
        with tcp_listener() as target:
            markers = [f"{target},{27000 + 400 * i}-{27300 + 400 * i}" for i in range(SCANS)]
            # One client for all four calls; it has not called tools/list (as an agent may not).
            async with http_client(server.url, mode) as client, anyio.create_task_group() as group:
                for marker in markers:

                    async def scan(marker: str = marker) -> None:
                        arguments = {"target": "127.0.0.1", "ports": marker, "extra_args": ["--scan-delay", "1s"]}
                        results.append(await client.call_tool("nmap_scan", arguments))

                    group.start_soon(scan)
                for marker in markers:
                    await anyio.to_thread.run_sync(lambda m=marker: wait_until(lambda: scanner_processes(m), 20))
                server.proc.send_signal(signal.SIGTERM)
                code = await anyio.to_thread.run_sync(lambda: server.proc.wait(timeout=10))
        stderr = server.stderr_tail()
    assert code == 0, stderr
    ends = [json.loads(line) for line in audit.read_text().splitlines() if '"event": "end"' in line]
    assert sorted(e["outcome"] for e in ends) == ["partial"] * SCANS
    assert len(results) == SCANS, stderr
    assert all(r.structured_content["partial_reason"] == "shutdown" for r in results)
