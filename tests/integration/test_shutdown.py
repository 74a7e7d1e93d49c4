"""Stopping the appliance container: SIGTERM with scans running ends it cleanly and quickly,
and stdin EOF ends a `docker run -i` session with status 0.

The slow scans go to the lab target by its exact IP (ports 1-1000, one probe a second).
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import anyio
import httpx2
import psutil
import pytest
from dockerlab import (
    Lab,
    ServiceSpec,
    audit_lines,
    container_ip,
    docker_run_args,
    http_client,
    listening,
    remove_container,
    start_appliance,
    unique_name,
)
from support import wait_until

pytestmark = pytest.mark.integration

# Docker's SIGKILL deadline for `docker stop`; the appliance must be gone well before it.
STOP_TIMEOUT_SECONDS = 10
# Drain window (APPLIANCE_DRAIN_SECONDS, 1 s) + stopping scans and streams + tini.
EXPECTED_STOP_SECONDS = 5
SCANS = 2
SLOW_SCAN = {"ports": "1-1000", "extra_args": ["--scan-delay", "1s"], "timeout_seconds": 600}
SCAN_START_TIMEOUT_SECONDS = 30
# The server's start-up (self-check, scanner probes, sidecar, uvicorn) takes a second or two.
LISTEN_TIMEOUT_SECONDS = 30
HTTP_PORT = 8080
RUN_TIMEOUT_SECONDS = 60


def scanners_in(container_pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(container_pid).children(recursive=True) if p.name() == "nmap"]


@pytest.mark.anyio
async def test_sigterm_with_running_scans_exits_0_promptly(
    lab: Lab, services: dict[str, ServiceSpec], record: Any
) -> None:
    container = start_appliance(services["appliance"], lab)
    try:
        wrapped = container.get_wrapped_container()
        wrapped.reload()
        init_pid = wrapped.attrs["State"]["Pid"]
        address = container_ip(wrapped.name, lab.network)
        wait_until(lambda: listening(address, HTTP_PORT), timeout=LISTEN_TIMEOUT_SECONDS, interval=0.2)
        url = f"http://{address}:{HTTP_PORT}/mcp"
        results: list[Any] = []
        transport_errors: list[BaseException] = []
        try:
            # The container's IP is not a Host header compose.yaml allows; "appliance" is.
            async with (
                http_client(url, lab.token, host_header="appliance:8080") as client,
                anyio.create_task_group() as group,
            ):

                async def slow_scan() -> None:
                    try:
                        results.append(await client.call_tool("nmap_scan", {"target": lab.target_ip, **SLOW_SCAN}))
                    except Exception as exc:  # noqa: BLE001 - what the client saw is the finding
                        results.append(exc)

                for _ in range(SCANS):
                    group.start_soon(slow_scan)
                running = await anyio.to_thread.run_sync(
                    lambda: wait_until(
                        lambda: len(scanners_in(init_pid)) == SCANS and scanners_in(init_pid),
                        timeout=SCAN_START_TIMEOUT_SECONDS,
                        interval=0.2,
                    )
                )
                started = time.monotonic()
                await anyio.to_thread.run_sync(lambda: wrapped.stop(timeout=STOP_TIMEOUT_SECONDS))
                elapsed = time.monotonic() - started
        except* httpx2.TransportError as errors:
            # The client's transport fails when it sends to a server that has gone: kept as a
            # finding (asserted below, after the server-side checks).
            transport_errors.extend(errors.exceptions)
        wrapped.reload()
        state = wrapped.attrs["State"]
        logs = wrapped.logs(stdout=False, stderr=True).decode()
    finally:
        container.stop()
    record(f"docker stop with {SCANS} running scans: {elapsed:.2f} s, exit code {state['ExitCode']}")
    assert state["ExitCode"] == 0, logs[-4000:]
    assert state["OOMKilled"] is False
    assert elapsed < EXPECTED_STOP_SECONDS
    assert not [p for p in running if p.is_running()], "a scanner outlived the container"
    # The scans were stopped by the appliance (partial results, audited), not by the kernel.
    ends = [r for r in audit_lines(logs) if r.get("event") == "end"]
    assert [r["outcome"] for r in ends] == ["partial"] * SCANS, ends
    # Each caller got its partial result before the server closed the streams.
    reasons = [r.structured_content.get("partial_reason") if hasattr(r, "structured_content") else r for r in results]
    assert reasons == ["shutdown"] * SCANS, transport_errors
    assert transport_errors == []


def test_stdin_eof_exits_0(lab: Lab, services: dict[str, ServiceSpec], record: Any) -> None:
    name = unique_name("eof")
    run = docker_run_args(services["appliance"], lab, name, {"APPLIANCE_TRANSPORT": "stdio"})
    try:
        started = time.monotonic()
        done = subprocess.run(["docker", *run], input=b"", capture_output=True, timeout=RUN_TIMEOUT_SECONDS)
        elapsed = time.monotonic() - started
    finally:
        remove_container(name)
    record(f"docker run -i with stdin at EOF: exit {done.returncode} after {elapsed:.2f} s")
    assert done.returncode == 0, done.stderr.decode()[-4000:]
    assert done.stdout == b""
