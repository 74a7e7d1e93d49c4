"""The host comparison itself, run inside an empty network namespace (bench/netns.py): the
appliance, a bare SDK 2.3 server and the peers side by side against a loopback listener.

One `run()` is one run of the figure, every server in interleaved order:
- per call: one stdio session per server (the SDK 2.x client of bench/clients.py), all open at
  once; for each of `calls` rounds, every server in turn: its tool's argv run directly
  (subprocess.run, the runner's environment, a new session), then the MCP `tools/call`, each timed
  with time.perf_counter in this process. Added = median(MCP) - median(direct), per server. The
  appliance's argv (and the bare server's) is the appliance's dry run of the call;
- cold start: `starts` rounds, each spawning every server once (bench/coldstart.py's Started and
  mcp_start: `initialize`, then `tools/list`, then stdin closed and the exit timed).

The listener (127.0.0.1:8080, accepts and closes) lives in this process: inside the namespace it
is the only thing any scan can reach.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from mcp_types import CallToolResult, TextContent

from appliance.runner import BASE_ENV
from bench.clients import error_type, port_open, stdio_session
from bench.coldstart import Started, mcp_start
from bench.docker import BenchError, log
from bench.host_servers import APPLIANCE, BARE, BARE_ARGV_ENV, PORT, TARGET, ServerSpec
from bench.stats import percentile, summary_ms, summary_s

# A one-port connect scan of loopback takes well under a second; a hung scanner must not hang us.
DIRECT_TIMEOUT_SECONDS = 60
LISTEN_BACKLOG = 128
ACCEPT_POLL_SECONDS = 0.1


@contextlib.contextmanager
def listener() -> Iterator[None]:
    """TARGET:PORT accepting TCP connections and closing them (nothing else is answered)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((TARGET, PORT))
    server.listen(LISTEN_BACKLOG)
    server.settimeout(ACCEPT_POLL_SECONDS)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2)
        server.close()


def direct_run(argv: tuple[str, ...]) -> tuple[float, bool]:
    """One run of `argv` as the appliance's runner would start it; seconds, and whether it ended 0."""
    started = time.perf_counter()
    done = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(BASE_ENV),
        start_new_session=True,
        timeout=DIRECT_TIMEOUT_SECONDS,
        check=False,
    )
    return time.perf_counter() - started, done.returncode == 0


def result_ok(spec: ServerSpec, result: CallToolResult) -> bool:
    """The call succeeded and found the port open, in the server's own way of saying so."""
    if spec.open_pattern is None:
        return error_type(result) is None and port_open(result, PORT)
    text = "\n".join(block.text for block in result.content if isinstance(block, TextContent))
    return not result.is_error and re.search(spec.open_pattern, text) is not None


def _env(spec: ServerSpec, argv: tuple[str, ...]) -> dict[str, str]:
    return {**spec.env, BARE_ARGV_ENV: json.dumps(list(argv))} if spec.wants_argv else dict(spec.env)


async def _dry_run_argv(spec: ServerSpec, client: Client) -> tuple[str, ...]:
    """The argv the appliance runs for the comparison's call (a dry run in the session that then
    makes the calls, so its private nmap data folder exists while the argv is used)."""
    dry = await client.call_tool(spec.tool, {**spec.arguments, "dry_run": True})
    if dry.is_error or not dry.structured_content:
        raise BenchError(f"the appliance refused the dry run: {dry.content}")
    return tuple(str(a) for a in dry.structured_content["argv"])


def _one_start(spec: ServerSpec, argv: tuple[str, ...], errlog: Path) -> dict[str, Any]:
    with errlog.open("a") as sink:
        started = Started(list(spec.command), sink, env=_env(spec, argv), cwd=spec.cwd)
        try:
            return mcp_start(started, spec.name)
        finally:
            started.stop()


def cold_starts(servers: list[ServerSpec], argv: tuple[str, ...], starts: int, log_dir: Path) -> dict[str, Any]:
    """`starts` rounds of one start of every server; per server its summaries, or its error."""
    raw: dict[str, list[dict[str, Any]]] = {spec.name: [] for spec in servers}
    errors: dict[str, str] = {}
    for index in range(starts):
        for spec in servers:
            if spec.name in errors:
                continue
            try:
                raw[spec.name].append(_one_start(spec, argv, log_dir / f"host-start-{spec.name}.log"))
            except BenchError as exc:
                if spec.name in (APPLIANCE, BARE):
                    raise
                errors[spec.name] = str(exc)  # a broken peer costs only its own figure
        log(f"host cold starts: {index + 1}/{starts}")
    out: dict[str, Any] = {}
    for spec in servers:
        if spec.name in errors:
            out[spec.name] = {"error": errors[spec.name]}
            continue
        starts_of = raw[spec.name]
        out[spec.name] = {
            key: summary_s([s[key] for s in starts_of]) for key in ("initialize_s", "tools_list_s", "exit_s")
        }
        out[spec.name]["exit_codes"] = [s["code"] for s in starts_of]
    return out


class _Side:
    """One server's session and samples in the per-call loop."""

    def __init__(self, spec: ServerSpec, argv: tuple[str, ...]) -> None:
        self.spec = spec
        self.client: Client | None = None
        self.argv = spec.direct_argv or argv
        self.mcp: list[float] = []
        self.direct: list[float] = []
        self.failures = {"mcp": 0, "direct": 0}
        self.error: str | None = None

    async def call(self) -> CallToolResult:
        assert self.client is not None
        return await self.client.call_tool(self.spec.tool, dict(self.spec.arguments))

    async def guarded(self, step: Callable[[], Awaitable[object]]) -> None:
        """Run `step` unless this side broke already; a peer that breaks costs only its own
        figure (the cause is kept), while the appliance or the bare server breaking fails the run."""
        if self.error is not None:
            return
        try:
            await step()
        except Exception as exc:  # kept as the peer's error; ours re-raise
            if self.spec.name in (APPLIANCE, BARE):
                raise
            self.error = f"{type(exc).__name__}: {exc}"

    async def pair(self) -> None:
        seconds, ok = await anyio.to_thread.run_sync(direct_run, self.argv)
        self.direct.append(seconds)
        self.failures["direct"] += 0 if ok else 1
        started = time.perf_counter()
        result = await self.call()
        self.mcp.append(time.perf_counter() - started)
        self.failures["mcp"] += 0 if result_ok(self.spec, result) else 1

    def summary(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error, "argv": list(self.argv)}
        mcp, direct = summary_ms(self.mcp), summary_ms(self.direct)
        paired = [m - d for m, d in zip(self.mcp, self.direct, strict=True)]
        return {
            "argv": list(self.argv),
            "calls_per_side": len(self.mcp),
            "mcp_call_ms": mcp,
            "direct_run_ms": direct,
            "added_ms_median": round(mcp["median"] - direct["median"], 3),
            "added_ms_p99": round(mcp["p99"] - direct["p99"], 3),
            "ratio_p99": round(percentile(self.mcp, 99) / percentile(self.direct, 99), 3),
            "paired_added_ms_median": round(percentile(paired, 50) * 1000, 3),
            "failures": self.failures,
        }


async def per_call(
    servers: list[ServerSpec], calls: int, warmup: int, log_dir: Path
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """`calls` rounds of one direct run and one MCP call per server, all sessions open at once
    (the appliance's, servers[0], first: its dry run gives the argv); the figures and that argv."""
    async with contextlib.AsyncExitStack() as stack:
        sides: list[_Side] = []
        argv: tuple[str, ...] = ()
        for spec in servers:
            side = _Side(spec, argv)
            session = stdio_session(
                spec.command, log_dir / f"host-calls-{spec.name}.log", env=_env(spec, argv), cwd=spec.cwd
            )

            async def open_session(side: _Side = side, session: Any = session) -> None:
                side.client = await stack.enter_async_context(session)

            await side.guarded(open_session)
            if not sides:
                assert side.client is not None
                argv = side.argv = await _dry_run_argv(spec, side.client)
            sides.append(side)
        for side in sides:
            for _ in range(warmup):
                await side.guarded(side.call)
        for index in range(calls):
            for side in sides:
                await side.guarded(side.pair)
            if (index + 1) % 100 == 0:
                log(f"host calls: {index + 1}/{calls} rounds")
        return {side.spec.name: side.summary() for side in sides}, argv


def _minus(figures: dict[str, Any], *path: str) -> float | None:
    """The appliance's value at `path` minus the bare server's (3 decimals), None if either lacks it."""
    values = []
    for name in (APPLIANCE, BARE):
        data: Any = figures.get(name)
        for key in path:
            data = data.get(key) if isinstance(data, dict) else None
        if not isinstance(data, int | float):
            return None
        values.append(float(data))
    return round(values[0] - values[1], 3)


async def run(params: dict[str, Any]) -> dict[str, Any]:
    """One run of the comparison (params: servers, starts, calls, warmup, log_dir)."""
    servers = [ServerSpec.from_json(s) for s in params["servers"]]
    log_dir = Path(params["log_dir"])
    if servers[0].name != APPLIANCE:
        raise BenchError("the host comparison's first server must be the appliance")
    with listener():
        calls, argv = await per_call(servers, params["calls"], params["warmup"], log_dir)
        cold = await anyio.to_thread.run_sync(cold_starts, servers, argv, params["starts"], log_dir)
    figures = {spec.name: {"cold_start": cold[spec.name], "per_call": calls[spec.name]} for spec in servers}
    unexpected = sum(
        sum(data["per_call"].get("failures", {}).values())
        + sum(1 for code in data["cold_start"].get("exit_codes", []) if code != 0)
        + (1 if "error" in data["cold_start"] or "error" in data["per_call"] else 0)
        for data in figures.values()
    )
    return {
        "argv": list(argv),
        "order": [spec.name for spec in servers],
        "notes": {spec.name: spec.notes for spec in servers if spec.notes},
        "starts": params["starts"],
        "calls_per_side": params["calls"],
        "servers": figures,
        "tools_list_minus_bare_s": _minus(figures, "cold_start", "tools_list_s", "median"),
        "initialize_minus_bare_s": _minus(figures, "cold_start", "initialize_s", "median"),
        "added_ms_minus_bare": _minus(figures, "per_call", "added_ms_median"),
        "unexpected_errors": unexpected,
    }
