"""The Docker CLI and the host's /proc, as the benchmark uses them.

Every container the benchmark starts carries the label `BENCH_LABEL=<run id>`, so that cleanup
finds all of them, including those a `docker run -i` client started and lost.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

BENCH_LABEL = "mcp-scanner-appliance.bench"
# Any single Docker CLI call (inspect, create, rm, network) answers in well under a second; a
# hung engine must not hang the benchmark.
DOCKER_CALL_TIMEOUT_SECONDS = 120
PAGE_FIELDS = ("VmRSS", "VmHWM")
# Resolved once: every Docker call goes through this one binary.
DOCKER = shutil.which("docker") or "/usr/bin/docker"
HTTP_PORT = 8080  # the image's MCP port (streamable HTTP)
HEALTH_PORT = 9090  # the image's health sidecar (/readyz, /healthz)
# Start-up (self-check, policy, scanner probes, uvicorn) takes a second or two; a loaded machine more.
READY_TIMEOUT_SECONDS = 60
# No proxy from the environment may sit between the benchmark and the lab.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class BenchError(Exception):
    """The benchmark could not measure something; the message says what and why."""


def docker(*args: str, timeout: float = DOCKER_CALL_TIMEOUT_SECONDS, check: bool = True) -> str:
    """Run `docker ARGS`, return its stdout; raise BenchError with stderr when it fails."""
    try:
        done = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"docker {args[0]} did not answer within {timeout} s") from exc
    if check and done.returncode != 0:
        raise BenchError(f"docker {' '.join(args[:3])} ... failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def inspect(name: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(docker("inspect", name))
    return data[0]


def container_ip(name: str, network: str) -> str:
    address = str(inspect(name)["NetworkSettings"]["Networks"][network]["IPAddress"])
    if not address:
        raise BenchError(f"container {name} has no address on {network}")
    return address


def init_pid(name: str) -> int:
    """The host PID of a running container's PID 1 (tini in the appliance image)."""
    pid = int(inspect(name)["State"]["Pid"])
    if pid <= 0:
        raise BenchError(f"container {name} is not running")
    return pid


def remove_labelled(run_id: str) -> list[str]:
    """Force-remove every container of this benchmark run; returns their names."""
    ids = docker("ps", "--all", "--quiet", "--filter", f"label={BENCH_LABEL}={run_id}", check=False).split()
    if ids:
        docker("rm", "--force", *ids, check=False)
    return ids


def ready(address: str) -> bool:
    """True when the appliance at `address` answers /readyz with 200 (one attempt)."""
    try:
        with OPENER.open(f"http://{address}:{HEALTH_PORT}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def wait_ready(name: str, network: str) -> str:
    """The address on `network` of the appliance container `name`, once it is ready."""
    address = container_ip(name, network)
    wait_until(lambda: ready(address), READY_TIMEOUT_SECONDS, 0.2, f"{name} to be ready")
    return address


def wait_until(condition: Callable[[], Any], timeout: float, interval: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy; BenchError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def listening(address: str, port: int) -> bool:
    """True when address:port accepts a TCP connection (one attempt)."""
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((address, port)) == 0


def server_process(container_pid: int, marker: str = "appliance") -> psutil.Process:
    """The appliance's Python process inside a container: a descendant of its init running
    `.../appliance serve` (tini -> python; raw mode adds setpriv, which execs)."""
    root = psutil.Process(container_pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            cmdline = proc.cmdline()
        except psutil.Error:
            continue
        if any(part.endswith(marker) for part in cmdline[:3]) and "serve" in cmdline and proc.name() != "tini":
            return proc
    raise BenchError(f"no '{marker} serve' process under PID {container_pid}")


def memory_bytes(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident since start or the last reset) in bytes,
    from /proc/<pid>/status (the host's view of the process, in or out of a container)."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in PAGE_FIELDS:
            values[key] = int(rest.split()[0]) * 1024  # the kernel writes kB, meaning KiB
    missing = set(PAGE_FIELDS) - values.keys()
    if missing:
        raise BenchError(f"/proc/{pid}/status has no {', '.join(sorted(missing))}")
    return values


def reset_peak_rss(pid: int) -> None:
    """Make VmHWM restart from the current RSS (writing 5 to clear_refs; Linux >= 4.0, root)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def nmap_processes(container_pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(container_pid).children(recursive=True) if _name(p) == "nmap"]


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return ""


def log(message: str) -> None:
    """Progress on stderr: stdout carries the report."""
    print(f"bench: {message}", file=sys.stderr, flush=True)
