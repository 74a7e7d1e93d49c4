"""Figure 3 (and 5b, idle RSS): a burst of concurrent `tools/call` over streamable HTTP.

The appliance runs as compose.yaml runs it (HTTP transport, bearer token, compose's flags,
compose's policy with the allow list pinned to the lab target, so the policy's default limits),
on the lab network only. The benchmark talks to it from the host over the lab bridge.

- idle RSS: VmRSS of the server's Python process (host /proc) once /readyz answers 200 and the
  RSS has settled, before any MCP request;
- the burst: one MCP session; `concurrency` tasks released together, each one `call_tool`
  of a one-port connect scan of the target, timed with time.perf_counter in this process;
- peak RSS: VmHWM of the server process after the burst (its peak since the process started).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import anyio

from bench.clients import error_type, http_session, port_open
from bench.docker import (
    HTTP_PORT,
    BenchError,
    docker,
    init_pid,
    log,
    memory_bytes,
    server_process,
    wait_ready,
    wait_until,
)
from bench.lab import TARGET_PORT, Lab
from bench.stats import summary_ms

# Start-up tasks (scanner version probes, the reload poller's first pass) settle within seconds.
SETTLE_TIMEOUT_SECONDS = 15
SETTLE_INTERVAL_SECONDS = 0.5
SETTLED_RSS_DELTA_BYTES = 256 * 1024
# The whole burst: at most a few queued scans of ~0.1 s each after the refusals.
BURST_TIMEOUT_SECONDS = 300


@dataclass(frozen=True)
class ConcurrencyParams:
    concurrency: int


def settled_rss(pid: int) -> int:
    """VmRSS once two samples SETTLE_INTERVAL_SECONDS apart differ by less than 256 KiB."""
    previous = memory_bytes(pid)["VmRSS"]

    def stable() -> int | None:
        nonlocal previous
        current = memory_bytes(pid)["VmRSS"]
        done = abs(current - previous) < SETTLED_RSS_DELTA_BYTES
        previous = current
        return current if done else None

    time.sleep(SETTLE_INTERVAL_SECONDS)
    return int(wait_until(stable, SETTLE_TIMEOUT_SECONDS, SETTLE_INTERVAL_SECONDS, "the server's RSS to settle"))


def start_http_appliance(lab: Lab, name: str, policy: str = "scope.yaml") -> tuple[str, int]:
    """Start the HTTP appliance detached; wait for /readyz; return its address and server PID."""
    docker(*lab.appliance_run(name, {}, policy=policy, detach=True))
    address = wait_ready(name, lab.network)
    return address, server_process(init_pid(name)).pid


def _limits(lab: Lab) -> dict[str, int]:
    """The limits in force, as the appliance's own policy loader resolves the bench policy."""
    from appliance.policy.model import load_policy

    table = load_policy(lab.policy_dir / "scope.yaml").limits.concurrency
    return {
        "nmap_max_concurrent": table.per_tool.nmap_scan.running,
        "nmap_max_queued": table.per_tool.nmap_scan.queued,
        "max_concurrent_scans": table.global_.running,
    }


async def measure(lab: Lab, params: ConcurrencyParams) -> dict[str, Any]:
    name = lab.name("http")
    address, pid = await anyio.to_thread.run_sync(start_http_appliance, lab, name)
    idle = await anyio.to_thread.run_sync(settled_rss, pid)
    arguments = {"target": lab.target_ip, "ports": str(TARGET_PORT)}
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    go = anyio.Event()

    async with http_session(f"http://{address}:{HTTP_PORT}/mcp", lab.token, params.concurrency + 8) as client:

        async def one_call() -> None:
            await go.wait()
            started = time.perf_counter()
            try:
                result = await client.call_tool("nmap_scan", arguments)
            except Exception as exc:  # noqa: BLE001 - a failed call is the finding, counted by type
                outcomes[f"exception:{type(exc).__name__}"] += 1
            else:
                kind = error_type(result)
                if kind is None:
                    kind = "completed" if port_open(result, TARGET_PORT) else "completed_without_open_port"
                outcomes[kind] += 1
            latencies.append(time.perf_counter() - started)

        with anyio.fail_after(BURST_TIMEOUT_SECONDS):
            async with anyio.create_task_group() as group:
                for _ in range(params.concurrency):
                    group.start_soon(one_call)
                go.set()
    after = memory_bytes(pid)
    expected = {"completed", "resource_exhausted"}
    unexpected = {k: v for k, v in outcomes.items() if k not in expected}
    log(f"concurrency: {dict(outcomes)}")
    if not latencies:
        raise BenchError("no call of the burst finished")
    return {
        "concurrency": params.concurrency,
        "limits": _limits(lab),
        "completed": outcomes["completed"],
        "refused_resource_exhausted": outcomes["resource_exhausted"],
        "unexpected_errors": sum(unexpected.values()),
        "unexpected_by_kind": unexpected,
        "latency_ms": summary_ms(latencies),
        "server_peak_rss_bytes": after["VmHWM"],
        "server_rss_after_bytes": after["VmRSS"],
        "server_idle_rss_bytes": idle,
    }
