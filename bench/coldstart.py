"""Figure 2: cold start, from `docker run -i` to the answer to MCP `initialize`.

Every run uses compose's flags on the lab network and is timed with time.perf_counter in this
process from just before the `docker run` process is spawned:

- mcp: `docker run -i ... serve` (stdio); the `initialize` request is written at once and the
  clock stops when its response line arrives on stdout (the goal's figure);
- bare: `docker run ... --entrypoint /opt/venv/bin/python IMG -c pass`, until `docker run`
  exits (the floor of any process in this image, container exit included);
- first output: `python -c "print('up')"`, until that line arrives: the same floor measured
  to the same kind of end point as mcp (a line on stdout, not the exit);
- imports: `python -c` code that imports what `serve` imports (`appliance.cli`, `appliance.app`)
  and then prints, until that line arrives; it also prints the import time it measured itself.

Breakdown of the mcp median (differences of medians of separate runs: approximate, and noisy
on a loaded machine): first output = engine, network attach, interpreter start; + imports (in-
container figure); + the rest = the server's own start-up (settings, self-check, policy, scanner
version probes, sidecar) and the handshake. No run uses --rm: each container is removed after
its clock stops.
"""

from __future__ import annotations

import json
import select
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from bench.docker import DOCKER, BenchError, docker, log
from bench.lab import Lab
from bench.stats import summary_s

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "mcp-scanner-appliance-bench", "version": "1"},
    },
}
# A start-up that takes this long is broken, not slow.
START_TIMEOUT_SECONDS = 60
# stdin EOF ends a stdio server within its shutdown bounds (a second or two).
EXIT_TIMEOUT_SECONDS = 30
FIRST_OUTPUT = "print('up', flush=True)"
IMPORTS = (
    "import time; started = time.perf_counter(); import appliance.cli, appliance.app; "
    "print(time.perf_counter() - started, flush=True)"
)
KINDS = ("bare", "first_output", "imports", "mcp")


@dataclass(frozen=True)
class ColdStartParams:
    runs: int


def _first_line(lab: Lab, name: str, args: list[str], send: bytes | None) -> tuple[float, bytes, int | None]:
    """Seconds from spawning `docker ARGS` to its first stdout line, the line, and the exit status
    once stdin is closed (None if it did not exit in time)."""
    with (lab.log_dir / f"{name}.log").open("w") as errlog:
        started = time.perf_counter()
        proc = subprocess.Popen([DOCKER, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog)
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            if send is not None:
                proc.stdin.write(send)
                proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_SECONDS)
            line = proc.stdout.readline() if ready else b""
            elapsed = time.perf_counter() - started
            if not line:
                raise BenchError(f"no output from {name} within {START_TIMEOUT_SECONDS} s (see {errlog.name})")
            proc.stdin.close()
            try:
                code: int | None = proc.wait(timeout=EXIT_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                code = None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return elapsed, line, code


def _python(lab: Lab, name: str, code: str) -> list[str]:
    return lab.appliance_run(name, {}, interactive=True, entrypoint="/opt/venv/bin/python", command=["-c", code])


def _one(lab: Lab, kind: str, name: str) -> tuple[float, int | None]:
    """One timed run of `kind`: its seconds (for imports: the in-container import time)."""
    if kind == "bare":
        args = lab.appliance_run(name, {}, entrypoint="/opt/venv/bin/python", command=["-c", "pass"])
        started = time.perf_counter()
        done = subprocess.run([DOCKER, *args], capture_output=True, timeout=START_TIMEOUT_SECONDS, check=False)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise BenchError(f"{name} failed ({done.returncode}): {done.stderr.decode(errors='replace')[-500:]}")
        return elapsed, done.returncode
    if kind == "first_output":
        elapsed, _, code = _first_line(lab, name, _python(lab, name, FIRST_OUTPUT), None)
        return elapsed, code
    if kind == "imports":
        _, line, code = _first_line(lab, name, _python(lab, name, IMPORTS), None)
        return float(line), code
    args = lab.appliance_run(name, {"APPLIANCE_TRANSPORT": "stdio"}, interactive=True)
    elapsed, line, code = _first_line(lab, name, args, (json.dumps(INITIALIZE) + "\n").encode())
    answer = json.loads(line)
    if answer.get("id") != 1 or "result" not in answer:
        raise BenchError(f"no initialize result from {name}: {line[:200]!r}")
    return elapsed, code


def measure(lab: Lab, params: ColdStartParams) -> dict[str, Any]:
    samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
    exit_codes: list[int | None] = []
    for run in range(params.runs):
        for kind in KINDS:
            name = lab.name(f"cold-{kind.replace('_', '-')}-{run}")
            try:
                seconds, code = _one(lab, kind, name)
            finally:
                docker("rm", "--force", name, check=False)
            samples[kind].append(seconds)
            exit_codes.append(code)
        log(f"cold start: run {run + 1}/{params.runs}: initialize after {samples['mcp'][-1]:.2f} s")
    mcp, bare, first, imports = (summary_s(samples[k]) for k in ("mcp", "bare", "first_output", "imports"))
    return {
        "runs": params.runs,
        "initialize_s": mcp,
        "bare_python_s": bare,
        "bare_python_first_output_s": first,
        "python_imports_s": imports,
        "breakdown_median_s": {
            "docker_and_interpreter": first["median"],
            "imports": imports["median"],
            "server_start_and_handshake": round(mcp["median"] - first["median"] - imports["median"], 3),
        },
        # Every run's container, the stdio server's after stdin EOF included, must exit 0.
        "exit_codes": exit_codes,
        "unexpected_errors": sum(1 for code in exit_codes if code != 0),
    }
