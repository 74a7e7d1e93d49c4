"""Interleaved figures of two appliance images (issue 10's 3.11-vs-3.13 measurement).

`.venv/bin/python -m bench.python313.compare [--runs N] [IMAGE ...]` (default: :latest and :py313)
starts every image N times per figure on one bench lab (compose's flags, bench/lab.py), the
images alternating within a round and the order reversed every other round, so drift from other
load on the machine falls on both alike. Per image and round:

- imports: `python -c` that imports what `serve` imports (`appliance.cli`, `appliance.app`) and
  prints its own wall (perf_counter) and CPU (process_time) time of that import;
- importtime: the same under `-X importtime`, with a marker written to stderr before the import:
  the sum of top-level cumulative times after the marker (before it: the interpreter's own
  start-up imports), and the self times summed by top-level package (where the time goes);
- cold start: `docker run -i ... serve` (stdio); initialize, the initialized notification and
  tools/list are written at once; the clocks stop at the initialize and the tools/list answers;
  then the server's CPU time so far (user + system: the figure least moved by other load; its
  reaped children's, the scanner version probes, apart), its settled VmRSS (host /proc,
  bench.concurrency.settled_rss) as the idle RSS after the first tools/list; then the server's
  CPU time per `nmap_scan` call (a one-port connect scan of the lab target, then the same with
  `dry_run`: the request path without a scanner), one at a time; then stdin is
  closed and the exit timed.

Prints one JSON document (medians with min-max, and every sample) on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import select
import subprocess
import sys
import time
from typing import Any

import psutil

import bench.lab
from bench.concurrency import settled_rss
from bench.docker import DOCKER, BenchError, docker, log, server_process
from bench.lab import TARGET_PORT, Deployment, Lab, lab
from bench.stats import summary_s

MARKER = "py313-compare: imports start"
IMPORTS = (
    f"import sys, time; sys.stderr.write({MARKER!r} + '\\n'); sys.stderr.flush(); "
    "w = time.perf_counter(); c = time.process_time(); import appliance.cli, appliance.app; "
    "print(time.perf_counter() - w, time.process_time() - c, flush=True)"
)
MESSAGES = [
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "py313-compare", "version": "1"},
        },
    },
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
]
# A start-up or exit that takes this long is broken, not slow.
TIMEOUT_SECONDS = 60
# Calls per session for the per-call CPU figures (whose clock ticks are 10 ms), after a few that
# warm up first-call paths.
SCAN_CALLS = 60
DRY_RUN_CALLS = 200
WARMUP_CALLS = 3


def _importtime_us(stderr: str) -> tuple[int, int, dict[str, int]]:
    """From importtime's STDERR: the sums of top-level cumulative times (µs) before and after
    MARKER, and after it the self times summed by top-level package (where the time goes)."""
    before = after = 0
    by_package: dict[str, int] = {}
    seen = False
    for line in stderr.splitlines():
        if line == MARKER:
            seen = True
            continue
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        head, cumulative, name = line.split("|")
        if seen:
            package = name.strip().split(".")[0]
            by_package[package] = by_package.get(package, 0) + int(head.split(":")[1])
        if name.startswith("  "):  # nested: counted in its parent's cumulative time
            continue
        if seen:
            after += int(cumulative)
        else:
            before += int(cumulative)
    if not seen:
        raise BenchError(f"no marker in the importtime output: {stderr[-300:]!r}")
    return before, after, by_package


def _python(the_lab: Lab, name: str, flags: list[str]) -> subprocess.CompletedProcess[str]:
    args = the_lab.appliance_run(name, {}, entrypoint="/opt/venv/bin/python", command=[*flags, "-c", IMPORTS])
    done = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False)
    if done.returncode != 0:
        raise BenchError(f"{name}: exit {done.returncode}: {done.stderr[-500:]}")
    return done


def imports(the_lab: Lab, name: str) -> dict[str, float]:
    wall, cpu = (float(x) for x in _python(the_lab, name, []).stdout.split())
    return {"import_wall_s": wall, "import_cpu_s": cpu}


def importtime(the_lab: Lab, name: str) -> dict[str, float]:
    """The same import under -X importtime (which slows it: its own figures, not the above)."""
    done = _python(the_lab, name, ["-X", "importtime"])
    wall, cpu = (float(x) for x in done.stdout.split())
    startup_us, imports_us, by_package = _importtime_us(done.stderr)
    return {
        "importtime_wall_s": wall,
        "importtime_cpu_s": cpu,
        "importtime_total_s": imports_us / 1e6,
        "importtime_startup_s": startup_us / 1e6,
        **{f"self_s.{package}": us / 1e6 for package, us in by_package.items()},
    }


def _answer(proc: subprocess.Popen[bytes], wanted: int) -> dict[str, Any]:
    assert proc.stdout is not None
    while True:
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT_SECONDS)
        line = proc.stdout.readline() if ready else b""
        if not line:
            raise BenchError(f"no answer {wanted} within {TIMEOUT_SECONDS} s")
        message: dict[str, Any] = json.loads(line)
        if message.get("id") == wanted:
            if "result" not in message:
                raise BenchError(f"answer {wanted} is an error: {line[:300]!r}")
            return message


def _server_cpu(server: psutil.Process) -> tuple[float, float]:
    """CPU seconds (user + system) of SERVER itself and of its reaped children (the scanners)."""
    times = server.cpu_times()
    return times.user + times.system, times.children_user + times.children_system


def _calls(proc: subprocess.Popen[bytes], server: psutil.Process, arguments: dict[str, Any], calls: int) -> float:
    """Server CPU seconds per `nmap_scan` call with ARGUMENTS (CALLS of them, after WARMUP_CALLS)."""
    assert proc.stdin is not None
    started = 0.0
    first_id = 100 if not arguments.get("dry_run") else 100 + WARMUP_CALLS + SCAN_CALLS
    for index in range(WARMUP_CALLS + calls):
        if index == WARMUP_CALLS:
            started = _server_cpu(server)[0]
        request = {
            "jsonrpc": "2.0",
            "id": first_id + index,
            "method": "tools/call",
            "params": {"name": "nmap_scan", "arguments": arguments},
        }
        proc.stdin.write(json.dumps(request).encode() + b"\n")
        proc.stdin.flush()
        if _answer(proc, first_id + index)["result"].get("isError"):
            raise BenchError(f"nmap_scan {arguments} failed")
    return (_server_cpu(server)[0] - started) / calls


def cold_start(the_lab: Lab, name: str) -> dict[str, float]:
    args = the_lab.appliance_run(name, {"APPLIANCE_TRANSPORT": "stdio"}, interactive=True)
    with (the_lab.log_dir / f"{name}.log").open("w") as errlog:
        started = time.perf_counter()
        proc = subprocess.Popen([DOCKER, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog)
        assert proc.stdin is not None
        try:
            proc.stdin.write(b"".join(json.dumps(m).encode() + b"\n" for m in MESSAGES))
            proc.stdin.flush()
            _answer(proc, 1)
            initialize = time.perf_counter() - started
            tools = len(_answer(proc, 2)["result"]["tools"])
            tools_list = time.perf_counter() - started
            pid = int(docker("inspect", "--format", "{{.State.Pid}}", name))
            server = server_process(pid)
            cpu, children_cpu = _server_cpu(server)
            rss = settled_rss(server.pid)
            scan = {"target": the_lab.target_ip, "ports": str(TARGET_PORT)}
            per_scan = _calls(proc, server, scan, SCAN_CALLS)
            per_dry_run = _calls(proc, server, {**scan, "dry_run": True}, DRY_RUN_CALLS)
            closed = time.perf_counter()
            proc.stdin.close()
            code = proc.wait(timeout=TIMEOUT_SECONDS)
            exit_s = time.perf_counter() - closed
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if code != 0:
        raise BenchError(f"{name}: exit {code} after stdin EOF")
    return {
        "initialize_s": initialize,
        "tools_list_s": tools_list,
        "tools": tools,
        "server_cpu_s": cpu,
        "reaped_children_cpu_s": children_cpu,
        "idle_rss_mib": rss / 2**20,
        "cpu_ms_per_scan_call": per_scan * 1000,
        "cpu_ms_per_dry_run_call": per_dry_run * 1000,
        "exit_after_eof_s": exit_s,
    }


def with_seccomp(deployment: Deployment, profile: str | None) -> Deployment:
    """DEPLOYMENT with compose's seccomp profile swapped for PROFILE (None: unchanged)."""
    if profile is None:
        return deployment
    prefix = "--security-opt=seccomp="
    flags = [f"{prefix}{profile}" if flag.startswith(prefix) else flag for flag in deployment.flags]
    if flags == list(deployment.flags):
        raise BenchError("compose's flags have no seccomp option to replace")
    return dataclasses.replace(deployment, flags=tuple(flags))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("images", nargs="*", default=["mcp-scanner-appliance:latest", "mcp-scanner-appliance:py313"])
    parser.add_argument(
        "--seccomp",
        action="append",
        default=[],
        metavar="IMAGE=PROFILE",
        help="run IMAGE under PROFILE instead of compose's (see bench/python313/seccomp.py)",
    )
    options = parser.parse_args()
    profiles = dict(option.split("=", 1) for option in options.seccomp)
    samples: dict[str, dict[str, list[float]]] = {image: {} for image in options.images}
    sizes = {image: int(docker("image", "inspect", "--format", "{{.Size}}", image)) for image in options.images}
    with lab() as the_lab:
        deployments = {image: with_seccomp(the_lab.deployment, profiles.get(image)) for image in options.images}
        for run in range(options.runs):
            order = options.images if run % 2 == 0 else options.images[::-1]
            for index, image in enumerate(order):
                bench.lab.IMAGE = image  # appliance_run reads it at each call
                the_lab.deployment = deployments[image]
                for kind, measure in (("imports", imports), ("importtime", importtime), ("cold", cold_start)):
                    name = the_lab.name(f"py313-{kind}-{run}-{index}")
                    try:
                        figures = measure(the_lab, name)
                    finally:
                        docker("rm", "--force", name, check=False)
                    for key, value in figures.items():
                        samples[image].setdefault(key, []).append(value)
            log(f"py313 compare: round {run + 1}/{options.runs} done")
    report = {
        "runs": options.runs,
        "seccomp": profiles,
        "images": {
            image: {
                "size_bytes": sizes[image],
                **{key: summary_s(values) for key, values in figures.items()},
            }
            for image, figures in samples.items()
        },
        # Every run's figures in run order, for paired comparisons (runs r of both images ran
        # back to back).
        "samples": samples,
    }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
