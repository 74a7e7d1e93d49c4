"""Jobs over stdio: one client session, one principal (`stdio`), real nmap on a loopback listener.

The server is a real `appliance serve` child speaking raw JSON-RPC lines on its stdin/stdout, so
the test decides exactly when stdin closes (an SDK client may also signal the process on exit).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import IO, Any

from support import LOOPBACK_POLICY, initialize_request, scanner_processes, stdio_child, tcp_listener, write_policy
from support.waiting import wait_until

from appliance.jobs.sqlite import SqliteJobStore
from appliance.jobs.store import JobFilter

# The appliance's stop is bounded to a few seconds; stdin EOF skips the drain window.
EXIT_SECONDS = 10


def send(stdin: IO[bytes], message: dict[str, Any]) -> None:
    stdin.write(json.dumps(message).encode() + b"\n")
    stdin.flush()


def answer(stdout: IO[bytes], request_id: int) -> dict[str, Any]:
    """The response to `request_id` (notifications such as progress are skipped)."""
    while True:
        line = stdout.readline()
        assert line, "the server closed stdout before answering"
        message = json.loads(line)
        if message.get("id") == request_id:
            return message  # type: ignore[no-any-return]


def call(stdin: IO[bytes], stdout: IO[bytes], request_id: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    send(
        stdin,
        {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": name, "arguments": arguments}},
    )
    result = answer(stdout, request_id)["result"]
    return result["structuredContent"]  # type: ignore[no-any-return]


def initialized(proc: subprocess.Popen[bytes]) -> tuple[IO[bytes], IO[bytes]]:
    """The child's pipes, after the MCP handshake."""
    assert proc.stdin is not None
    assert proc.stdout is not None
    send(proc.stdin, initialize_request())
    answer(proc.stdout, 1)
    send(proc.stdin, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    return proc.stdin, proc.stdout


def test_stdio_scan_outlives_its_wait_get_scan_follows_it_and_stdin_eof_interrupts_it(
    tmp_path: Path, own_data_dir: Path
) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    # A drain window longer than EXIT_SECONDS: only a stop that skips it exits in time.
    with tcp_listener() as port, stdio_child(policy, APPLIANCE_DRAIN_SECONDS="30") as proc:
        marker = f"{port},26000-26040"
        stdin, stdout = initialized(proc)
        # --scan-delay 1s over 42 ports: about 40 s, far longer than the 1 s wait.
        started = time.monotonic()
        running = call(
            stdin,
            stdout,
            2,
            "nmap_scan",
            {"target": "127.0.0.1", "ports": marker, "extra_args": ["--scan-delay", "1s"], "wait_seconds": 1},
        )
        returned_after = time.monotonic() - started
        scan_id = running["scan_id"]
        followed = call(stdin, stdout, 3, "get_scan", {"scan_id": scan_id, "wait_seconds": 1})
        listed = call(stdin, stdout, 4, "list_scans", {})
        assert scanner_processes(marker)  # still scanning after both calls returned

        stdin.close()  # the one client is gone
        eof = time.monotonic()
        code = proc.wait(timeout=EXIT_SECONDS)
        exited_after = time.monotonic() - eof
        stderr = proc.stderr.read().decode() if proc.stderr else ""
    print(f"running returned after {returned_after:.2f}s; exit {exited_after:.2f}s after stdin EOF")
    assert running["status"] == "running"
    assert returned_after < 1 + 5  # the wait, plus start-up of nmap on a loaded host
    assert followed["status"] == "running"
    assert followed["scan_id"] == scan_id
    assert [s["scan_id"] for s in listed["scans"]] == [scan_id]
    assert code == 0, stderr
    assert exited_after < EXIT_SECONDS  # the 30 s drain window was skipped: nobody can read the scan
    wait_until(lambda: not scanner_processes(marker), timeout=5)
    [job] = SqliteJobStore(own_data_dir).page(JobFilter(), 10).jobs
    assert (job.scan_id, job.state, job.principal) == (scan_id, "interrupted", "stdio")
    assert job.result is not None  # what nmap had reported when it was stopped


def test_stdio_scan_that_finishes_within_its_wait_returns_its_result_and_is_stored(
    tmp_path: Path, own_data_dir: Path
) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    with tcp_listener() as port, stdio_child(policy) as proc:
        stdin, stdout = initialized(proc)
        done = call(stdin, stdout, 2, "nmap_scan", {"target": "127.0.0.1", "ports": str(port), "wait_seconds": 30})
        again = call(stdin, stdout, 3, "get_scan", {"scan_id": done["scan_id"]})
        stdin.close()
        proc.wait(timeout=EXIT_SECONDS)
    assert done["status"] == "completed"
    assert [p["port"] for p in done["hosts"][0]["ports"]] == [port]
    assert again["hosts"] == done["hosts"]
    store = SqliteJobStore(own_data_dir)
    stored = store.get(done["scan_id"])
    assert stored is not None
    assert stored.state == "completed"
    assert store.raw(done["scan_id"]) is not None  # scan://{id}/raw has it
