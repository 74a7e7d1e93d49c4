"""Figure 2: cold start, from `docker run -i` to the first `tools/list` answer, and the exit
after stdin EOF.

Every start uses compose's flags on the lab network and is timed with time.perf_counter in this
process from just before the `docker run` process is spawned:

- mcp: `docker run -i ... serve` (stdio); `initialize` is written at once, `notifications/
  initialized` and `tools/list` as soon as its answer is in; the clock stops when the
  `tools/list` response line is complete (the goal's figure; the `initialize` answer is kept
  as a secondary figure). Then stdin is closed and a second clock runs until `docker run -i`
  exits (the exit goal); the server's stderr gives its "ready" stages and its own shutdown
  figure ("shutdown complete", `seconds`);
- bare: `docker run ... --entrypoint /opt/venv/bin/python IMG -c pass`, until `docker run`
  exits (the floor of any process in this image, container exit included);
- floor: `python -c` that prints a line and then reads stdin to EOF: its first line is the
  floor of "first output", and closing stdin then timing the exit is the floor of the exit
  figure (a bare python in the same image that exits on EOF);
- imports: `python -c` code that imports what `serve` imports (`appliance.cli`, `appliance.app`)
  and prints the import time it measured itself.

One `measure()` is one run: `starts` rounds, each starting every kind once (interleaved, so load
on the machine falls on all alike). No start uses --rm: each container is removed after its
clocks stop.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bench import stages
from bench.docker import DOCKER, BenchError, docker, log
from bench.lab import Lab
from bench.stats import summary_s

PROTOCOL_VERSION = "2025-11-25"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": PROTOCOL_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "mcp-scanner-appliance-bench", "version": "1"},
    },
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
TOOLS_LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
# A start-up that takes this long is broken, not slow.
START_TIMEOUT_SECONDS = 60
# stdin EOF ends a stdio server within its shutdown bounds (a second or two).
EXIT_TIMEOUT_SECONDS = 30
READ_CHUNK_BYTES = 65536
FLOOR = "import sys; print('up', flush=True); sys.stdin.read()"
IMPORTS = (
    "import time; started = time.perf_counter(); import appliance.cli, appliance.app; "
    "print(time.perf_counter() - started, flush=True)"
)
KINDS = ("bare", "floor", "imports", "mcp")


@dataclass(frozen=True)
class ColdStartParams:
    runs: int  # starts of each kind in one run


def _line(message: dict[str, Any]) -> bytes:
    return (json.dumps(message) + "\n").encode()


class Started:
    """`command` (e.g. `docker run -i ...`) with pipes, its clock started just before the spawn;
    reads whole lines straight from the pipe (no buffered reader, so select() never misses data
    it holds). bench/host_compare.py starts host servers with it too (`env`, `cwd`)."""

    def __init__(
        self, command: list[str], errlog: Any, env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> None:
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errlog,
            env=None if env is None else dict(env),
            cwd=cwd,
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self._stdin = self.proc.stdin
        self._fd = self.proc.stdout.fileno()
        self._buffer = b""

    def send(self, data: bytes) -> None:
        self._stdin.write(data)
        self._stdin.flush()

    def line(self, what: str) -> tuple[float, bytes]:
        """The next stdout line and the seconds from the spawn to its last byte."""
        deadline = self.started + START_TIMEOUT_SECONDS
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([self._fd], [], [], max(deadline - time.perf_counter(), 0))
            chunk = os.read(self._fd, READ_CHUNK_BYTES) if ready else b""
            if not chunk:
                raise BenchError(f"no {what} within {START_TIMEOUT_SECONDS} s of the start")
            self._buffer += chunk
        elapsed = time.perf_counter() - self.started
        line, _, self._buffer = self._buffer.partition(b"\n")
        return elapsed, line

    def answer(self, request_id: int, what: str) -> tuple[float, dict[str, Any]]:
        """The response to `request_id` (notifications before it are skipped)."""
        while True:
            elapsed, line = self.line(what)
            message = json.loads(line)
            if isinstance(message, dict) and message.get("id") == request_id:
                if "result" not in message:
                    raise BenchError(f"{what} failed: {line[:300]!r}")
                return elapsed, message

    def close_stdin(self) -> tuple[float, int | None]:
        """Close stdin; seconds until the process exited, and its status (None: it did not).
        `closed_at` and `exited_at` keep the wall-clock moments (to place the server's log lines)."""
        self.closed_at = time.time()
        started = time.perf_counter()
        self._stdin.close()
        try:
            code: int | None = self.proc.wait(timeout=EXIT_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            code = None
        elapsed = time.perf_counter() - started
        self.exited_at = time.time()
        return elapsed, code

    def stop(self) -> None:
        """Kill the process if it still runs, and close our ends of its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def mcp_start(started: Started, name: str) -> dict[str, Any]:
    """A started stdio MCP server: `initialize`, then `tools/list`, then stdin closed; the
    seconds from the spawn to each answer, from closing stdin to the exit, and the exit status."""
    started.send(_line(INITIALIZE))
    initialize, _ = started.answer(1, "initialize answer")
    started.send(_line(INITIALIZED) + _line(TOOLS_LIST))
    tools_list, listing = started.answer(2, "tools/list answer")
    if not listing["result"].get("tools"):
        raise BenchError(f"{name} listed no tools")
    exit_s, code = started.close_stdin()
    return {"initialize_s": initialize, "tools_list_s": tools_list, "exit_s": exit_s, "code": code}


def _python(lab: Lab, name: str, code: str) -> list[str]:
    return lab.appliance_run(name, {}, interactive=True, entrypoint="/opt/venv/bin/python", command=["-c", code])


def _bare(lab: Lab, name: str) -> dict[str, Any]:
    args = lab.appliance_run(name, {}, entrypoint="/opt/venv/bin/python", command=["-c", "pass"])
    started = time.perf_counter()
    done = subprocess.run([DOCKER, *args], capture_output=True, timeout=START_TIMEOUT_SECONDS, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"{name} failed ({done.returncode}): {done.stderr.decode(errors='replace')[-500:]}")
    return {"exit_s": elapsed, "code": done.returncode}


def _one(lab: Lab, kind: str, name: str) -> dict[str, Any]:
    """One timed start of `kind`: its figures in seconds and the container's exit status."""
    if kind == "bare":
        return _bare(lab, name)
    errlog_path = lab.log_dir / f"{name}.log"
    with errlog_path.open("w") as errlog:
        if kind == "mcp":
            args = lab.appliance_run(name, {"APPLIANCE_TRANSPORT": "stdio"}, interactive=True)
        else:
            args = _python(lab, name, FLOOR if kind == "floor" else IMPORTS)
        started = Started([DOCKER, *args], errlog)
        try:
            if kind == "floor":
                first, _ = started.line("first output")
                exit_s, code = started.close_stdin()
                return {"first_output_s": first, "exit_s": exit_s, "code": code}
            if kind == "imports":
                _, line = started.line("import time")
                _, code = started.close_stdin()
                return {"imports_s": float(line), "code": code}
            timed = mcp_start(started, name)
        finally:
            started.stop()
    text = errlog_path.read_text(errors="replace")
    return {
        **timed,
        "ready": stages.ready_stages(text),
        "server_shutdown_s": stages.shutdown_seconds(text),
        "exit_split": stages.exit_breakdown(started.closed_at, started.exited_at, stages.shutdown_logged_at(text)),
    }


def _summary(values: list[float | None]) -> dict[str, float | int] | None:
    measured = [v for v in values if v is not None]
    return summary_s(measured) if measured and len(measured) == len(values) else None


def measure(lab: Lab, params: ColdStartParams, run_index: int = 0) -> dict[str, Any]:
    """One run: `params.runs` rounds of every kind."""
    starts: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for start in range(params.runs):
        for kind in KINDS:
            name = lab.name(f"cold-{kind}-{run_index}-{start}")
            try:
                starts[kind].append(_one(lab, kind, name))
            finally:
                docker("rm", "--force", name, check=False)
        last = starts["mcp"][-1]
        log(
            f"cold start run {run_index + 1}, start {start + 1}/{params.runs}: tools/list after "
            f"{last['tools_list_s']:.2f} s, exit {last['exit_s']:.2f} s"
        )

    def column(kind: str, key: str) -> list[float | None]:
        return [s.get(key) for s in starts[kind]]

    mcp = starts["mcp"]
    exit_codes = [s["code"] for kind in KINDS for s in starts[kind]]
    return {
        "starts": params.runs,
        "tools_list_s": _summary(column("mcp", "tools_list_s")),
        "initialize_s": _summary(column("mcp", "initialize_s")),
        "exit_s": _summary(column("mcp", "exit_s")),
        # None when this build writes no "shutdown complete" line.
        "server_shutdown_s": _summary(column("mcp", "server_shutdown_s")),
        "bare_python_s": _summary(column("bare", "exit_s")),
        "bare_python_first_output_s": _summary(column("floor", "first_output_s")),
        "bare_python_exit_after_eof_s": _summary(column("floor", "exit_s")),
        "python_imports_s": _summary(column("imports", "imports_s")),
        "exit_stages": {
            key: _summary([(s["exit_split"] or {}).get(key) for s in mcp])
            for key in ("until_shutdown_complete_s", "after_shutdown_complete_s")
        },
        "stages": stages.startup_breakdown([s["tools_list_s"] * 1000 for s in mcp], [s["ready"] for s in mcp]),
        "raw": starts,
        # Every container, the stdio server's after stdin EOF included, must exit 0.
        "exit_codes": exit_codes,
        "unexpected_errors": sum(1 for code in exit_codes if code != 0),
    }
