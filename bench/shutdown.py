"""Figure 4: `docker stop` of the HTTP appliance while four slow scans run.

The appliance runs as in figure 3 but with a policy that lets four nmap scans run at once. Four
`call_tool`s scan ports 1-1000 of the lab target with one probe a second (minutes of work);
once four nmap processes run in the container, `docker stop -t 10` is timed with
time.perf_counter in this process (the CLI returns when the container has exited; 10 s is
Docker's SIGKILL deadline). Then: the container's exit code, how many of the four calls got
their (partial) result back before the exit, and whether any of the nmap processes seen before
the stop is still alive (an orphan).
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx2
import psutil

from bench.clients import http_session
from bench.concurrency import start_http_appliance
from bench.docker import HTTP_PORT, docker, init_pid, inspect, log, nmap_processes, wait_until
from bench.lab import Lab

SCANS = 4
SLOW_SCAN = {"ports": "1-1000", "extra_args": ["--scan-delay", "1s"], "timeout_seconds": 600}
# Docker's SIGKILL deadline for `docker stop`; the goal is far below it.
STOP_TIMEOUT_SECONDS = 10
# nmap starts within a second of the call; a loaded machine may take a few.
SCAN_START_TIMEOUT_SECONDS = 30
# Results in flight when the container exits have reached the client within this, or never will.
RESULT_WAIT_SECONDS = 5


async def measure(lab: Lab) -> dict[str, Any]:
    name = lab.name("shutdown")
    address, _ = await anyio.to_thread.run_sync(start_http_appliance, lab, name, "shutdown.yaml")
    container_pid = init_pid(name)
    outcomes: list[str] = []
    scanners: list[psutil.Process] = []
    elapsed = 0.0
    stopped = False
    all_ended = anyio.Event()
    try:
        async with http_session(f"http://{address}:{HTTP_PORT}/mcp", lab.token, SCANS + 4) as client:

            async def slow_scan() -> None:
                try:
                    result = await client.call_tool("nmap_scan", {"target": lab.target_ip, **SLOW_SCAN})
                except Exception as exc:  # noqa: BLE001 - how the call ended is the finding
                    outcomes.append(f"exception:{type(exc).__name__}")
                else:
                    structured: dict[str, Any] = result.structured_content or {}
                    outcomes.append(
                        f"error:{structured.get('error_type')}"
                        if result.is_error
                        else f"partial:{structured.get('partial_reason')}"
                        if structured.get("partial")
                        else "complete"
                    )
                finally:
                    if len(outcomes) == SCANS:
                        all_ended.set()

            async with anyio.create_task_group() as group:
                for _ in range(SCANS):
                    group.start_soon(slow_scan)
                scanners = await anyio.to_thread.run_sync(
                    lambda: wait_until(
                        lambda: (found := nmap_processes(container_pid)) and len(found) >= SCANS and found,
                        SCAN_START_TIMEOUT_SECONDS,
                        0.1,
                        f"{SCANS} nmap processes in {name}",
                    )
                )
                started = time.perf_counter()
                await anyio.to_thread.run_sync(
                    lambda: docker("stop", "--time", str(STOP_TIMEOUT_SECONDS), name, timeout=STOP_TIMEOUT_SECONDS + 30)
                )
                elapsed = time.perf_counter() - started
                stopped = True
                with anyio.move_on_after(RESULT_WAIT_SECONDS):
                    await all_ended.wait()
                group.cancel_scope.cancel()
    except* httpx2.TransportError as errors:
        # The server is gone on purpose: requests the client SDK still makes after the stop (every
        # figure above is taken by then) cannot reach it. Before the stop, the same error fails.
        if not stopped:
            raise
        log(f"shutdown: client teardown could not reach the stopped server ({len(errors.exceptions)} errors)")
    state = inspect(name)["State"]
    orphans = [p.pid for p in scanners if p.is_running()]
    partial = sum(1 for o in outcomes if o == "partial:shutdown")
    log(f"shutdown: {elapsed:.2f} s, exit {state['ExitCode']}, outcomes {outcomes}")
    return {
        "scans_running": len(scanners),
        "stop_seconds": round(elapsed, 3),
        "exit_code": int(state["ExitCode"]),
        "oom_killed": bool(state.get("OOMKilled")),
        "orphans": len(orphans),
        "results_before_exit": partial,
        "call_outcomes": outcomes,
        "unexpected_errors": (SCANS - partial) + len(orphans) + (1 if int(state["ExitCode"]) != 0 else 0),
    }
