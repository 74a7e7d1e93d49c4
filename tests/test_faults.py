"""Faults injected into a running `appliance serve` (HTTP): each fault with the behaviour it must cause.

Scanner killed, scanner binary missing, target gone mid-scan, audit sink failing, a client that
vanishes, sessions opened and abandoned. Every scan goes to a listener this module started on
127.0.0.1 under the loopback test policy; nothing else is ever scanned.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import http.server
import json
import resource
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import psutil
import pytest
from support import LOOPBACK_POLICY, closed_port, scanner_processes, wait_until, write_policy
from test_transports import APPLIANCE, TOKEN, http_client, server_env

pytestmark = pytest.mark.anyio

# How long a stopped server may take to exit (its own shutdown is bounded to about 3 s).
STOP_SECONDS = 10
# Start-up probes each scanner's --version once; on a loaded CI host that takes a few seconds.
START_SECONDS = 20
# A scanner process must be gone this long after the call that started it returned.
REAP_SECONDS = 5
# Legacy (handshake-era) streamable HTTP; the raw-HTTP tests speak it without the SDK client.
LEGACY_VERSION = "2025-11-25"


# --- a server process, its sidecar and targets, as every fault test uses them ---------------------


@dataclass
class Served:
    """One `appliance serve --transport http` process; its stderr is drained into `log`."""

    proc: subprocess.Popen[bytes]
    url: str
    health_port: int
    log: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=200))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        """GET a sidecar endpoint: (status, JSON body); status 0 when nothing answers."""
        return sidecar_get(self.health_port, path)

    def stop(self) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def stderr_tail(self) -> str:
        return "".join(self.log)[-4000:]

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.pid).children(recursive=True)

    def zombies(self) -> list[psutil.Process]:
        found = []
        for child in self.children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.status() == psutil.STATUS_ZOMBIE:
                    found.append(child)
        return found


def sidecar_get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())
    except urllib.error.URLError:
        return 0, {}


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def served(policy: Path, **extra: str) -> Iterator[Served]:
    """Start the appliance over HTTP with a bearer token and a sidecar on a chosen free port."""
    port, health = closed_port(), closed_port()
    env = server_env(
        policy,
        APPLIANCE_TRANSPORT="http",
        APPLIANCE_PORT=str(port),
        APPLIANCE_HEALTH_PORT=str(health),
        APPLIANCE_AUTH_TOKEN=TOKEN,
        **extra,
    )
    proc = subprocess.Popen([APPLIANCE, "serve"], env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = Served(proc, f"http://127.0.0.1:{port}/mcp", health)
    assert proc.stderr is not None
    stderr = proc.stderr

    def drain() -> None:
        # A full stderr pipe would block the server's logging; keep the tail for failure messages.
        for line in iter(stderr.readline, b""):
            server.log.append(line.decode(errors="replace"))

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:

        def up() -> bool:
            assert proc.poll() is None, f"server exited at start: {server.stderr_tail()}"
            return _listening(port) and _listening(health)

        wait_until(up, timeout=START_SECONDS)
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=STOP_SECONDS)
        stderr.close()


class CountingListener:
    """A TCP listener on 127.0.0.1 that counts accepted connections and can be killed mid-scan."""

    def __init__(self) -> None:
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self._server.settimeout(0.1)
        self.port: int = self._server.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()
            self.accepted += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._server.close()


@contextlib.contextmanager
def counting_listener() -> Iterator[CountingListener]:
    listener = CountingListener()
    try:
        yield listener
    finally:
        listener.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    hits: list[str]

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test reads the hit list, not an access log on stderr

    def do_GET(self) -> None:
        self.hits.append(self.path)
        super().do_GET()


@dataclass
class WebRoot:
    """A python http.server on 127.0.0.1 serving a tmp directory; `hits` lists the paths asked for."""

    port: int
    hits: list[str]
    close: Callable[[], None]


@contextlib.contextmanager
def web_root(directory: Path) -> Iterator[WebRoot]:
    """Serve `directory` (which gets an `admin/` folder for gobuster to find) until closed."""
    (directory / "admin").mkdir(exist_ok=True)
    (directory / "index.html").write_text("lab\n")
    hits: list[str] = []
    handler = type("Handler", (_QuietHandler,), {"hits": hits})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    closed = threading.Event()

    def close() -> None:
        if closed.is_set():
            return
        closed.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=2)

    try:
        yield WebRoot(int(httpd.server_address[1]), hits, close)
    finally:
        close()


async def eventually(condition: Callable[[], Any], within: float) -> Any:
    """wait_until in a worker thread, so calls in flight on this loop keep running meanwhile."""
    return await anyio.to_thread.run_sync(lambda: wait_until(condition, timeout=within))


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def legacy_headers(session_id: str | None = None) -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    if session_id is not None:
        headers.update({"mcp-session-id": session_id, "mcp-protocol-version": LEGACY_VERSION})
    return headers


async def open_legacy_session(http: httpx2.AsyncClient, url: str) -> str:
    """`initialize` only, over raw HTTP: the server creates a session and returns its id."""
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    response = await http.post(url, json=message, headers=legacy_headers())
    assert response.status_code == 200, response.text
    return response.headers["mcp-session-id"]


def slow_scan(ports: str, **extra: Any) -> dict[str, Any]:
    """A connect scan that probes one port a second: long enough to inject a fault into."""
    return {"target": "127.0.0.1", "ports": ports, "extra_args": ["--scan-delay", "1s"], **extra}


# --- 1. scanner killed mid-run ---------------------------------------------------------------------


async def test_scanner_killed_mid_run_is_an_execution_error_counted_by_the_breaker(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    audit = tmp_path / "audit.log"
    results: list[Any] = []
    with served(policy, APPLIANCE_AUDIT_PATH=str(audit)) as server, counting_listener() as target:
        marker = f"{target.port},35000-35100"
        async with http_client(server.url, "legacy") as client:
            async with anyio.create_task_group() as group:

                async def scan() -> None:
                    results.append(await client.call_tool("nmap_scan", slow_scan(marker, timeout_seconds=60)))

                group.start_soon(scan)
                [nmap] = await eventually(lambda: scanner_processes(marker), START_SECONDS)
                killed = time.monotonic()
                nmap.send_signal(signal.SIGKILL)
            answered = time.monotonic() - killed
            breaker_after_kill = server.get("/healthz")[1]["checks"]["breakers"]["nmap_scan"]
            after = await client.call_tool("nmap_scan", {"target": "127.0.0.1", "ports": str(target.port)})
            breaker_after_success = server.get("/healthz")[1]["checks"]["breakers"]["nmap_scan"]
        zombies = server.zombies()
    print(f"killed scanner answered after {answered:.2f}s")
    [result] = results
    # Killed before nmap wrote a host: exit -9 with nothing parsed is an execution error, not a partial.
    assert result.is_error
    error = result.structured_content
    assert (error["error_type"], error["rule"]) == ("execution_error", "scanner_exit_status")
    assert "status -9" in error["message"]
    assert answered < REAP_SECONDS
    assert breaker_after_kill["state"] == "closed"
    assert breaker_after_kill["consecutive_failures"] == 1
    # The next good run clears the count: only failures in a row open the breaker.
    assert not after.is_error
    assert breaker_after_success["consecutive_failures"] == 0
    assert not scanner_processes(marker)
    assert zombies == []
    killed_run = [line for line in audit_lines(audit) if line.get("request_id") == error["request_id"]]
    assert [line.get("event") for line in killed_run] == ["start", "end"]
    assert killed_run[-1]["outcome"] == "execution_error"


# --- 2. scanner binary missing ---------------------------------------------------------------------


async def test_missing_scanner_binary_is_unavailable_in_health_and_not_found_on_call(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    with served(policy, APPLIANCE_NMAP_PATH="/nonexistent/nmap") as server, counting_listener() as target:
        health = server.get("/healthz")[1]["checks"]
        ready, _ = server.get("/readyz")
        async with http_client(server.url, "legacy") as client:
            listed = {tool.name: tool.description for tool in (await client.list_tools()).tools}
            result = await client.call_tool("nmap_scan", {"target": "127.0.0.1", "ports": str(target.port)})
    assert health["tools_unavailable"]["nmap_scan"] == "scanner unavailable: binary missing or not executable"
    assert listed["nmap_scan"].startswith("UNAVAILABLE in this deployment (scanner unavailable")
    assert health["scanners"]["nmap_scan"]["present"] is False
    assert ready == 200  # gobuster is still usable
    assert result.is_error
    assert (result.structured_content["error_type"], result.structured_content["rule"]) == (
        "not_found",
        "tool_unavailable",
    )
    assert target.accepted == 0


async def test_all_scanner_binaries_missing_is_not_ready(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    missing = {f"APPLIANCE_{name}_PATH": f"/nonexistent/{name.lower()}" for name in ("NMAP", "MASSCAN", "GOBUSTER")}
    with served(policy, **missing) as server:
        status, body = server.get("/readyz")
        checks = server.get("/healthz")[1]["checks"]
        unavailable = checks["tools_unavailable"]
    assert status == 503
    assert body == {"ready": False}  # the reasons are in /healthz, which checks Host and token
    assert "no tool is usable" in checks["ready"]["reasons"]
    assert set(unavailable) == {"nmap_scan", "masscan_scan", "gobuster_scan"}


# --- 3. target killed mid-scan ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra_ports", "timeout_seconds", "ends"),
    [(3, 30, "complete"), (200, 8, "timeout")],
    ids=["scan-completes", "scan-times-out"],
)
async def test_target_killed_mid_scan_gives_a_result_not_an_error(
    tmp_path: Path, extra_ports: int, timeout_seconds: int, ends: str
) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    results: list[Any] = []
    with served(policy) as server, counting_listener() as target:
        marker = f"{target.port},{target.port + 1}-{target.port + extra_ports}"
        # -r: ports in order, so the listener is probed first and killed right after.
        arguments = {
            "target": "127.0.0.1",
            "ports": marker,
            "timeout_seconds": timeout_seconds,
            "extra_args": ["-r", "--scan-delay", "1s"],
        }
        async with http_client(server.url, "legacy") as client, anyio.create_task_group() as group:

            async def scan() -> None:
                results.append(await client.call_tool("nmap_scan", arguments))

            group.start_soon(scan)
            await eventually(lambda: target.accepted, START_SECONDS)
            assert scanner_processes(marker)  # killed while the scan runs on
            await anyio.to_thread.run_sync(target.close)
        zombies = server.zombies()
    [result] = results
    assert not result.is_error, result.structured_content
    report = result.structured_content
    if ends == "complete":
        assert report["partial"] is False
        assert report["exit_code"] == 0
        # The port answered before it died; later ports of the same host were still scanned.
        states = {p["port"]: p["state"] for p in report["hosts"][0]["ports"]}
        assert states[target.port] == "open"
        assert len(states) == extra_ports + 1
    else:
        assert report["partial"] is True
        assert report["partial_reason"] == "timeout"
        assert report["exit_code"] is None  # stopped by the runner, not failed
    assert not scanner_processes(marker)
    assert zombies == []


async def test_web_target_killed_mid_gobuster_gives_a_result_not_an_error(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    (tmp_path / "www").mkdir()
    results: list[Any] = []
    with served(policy) as server, web_root(tmp_path / "www") as web:
        marker = f"127.0.0.1:{web.port}/"
        arguments = {
            "mode": "dir",
            "target": f"http://{marker}",
            "threads": 1,
            "extra_args": ["--delay", "300ms"],
            "timeout_seconds": 30,
        }
        async with http_client(server.url, "legacy") as client, anyio.create_task_group() as group:

            async def scan() -> None:
                results.append(await client.call_tool("gobuster_scan", arguments))

            group.start_soon(scan)
            await eventually(lambda: len(web.hits) >= 3, START_SECONDS)
            await anyio.to_thread.run_sync(web.close)
        zombies = server.zombies()
    [result] = results
    report = result.structured_content
    print(f"gobuster after its target died: partial={report.get('partial')}, findings={report.get('findings')}")
    assert not result.is_error, report
    assert report["exit_code"] == 0
    assert not scanner_processes(marker)
    assert zombies == []


# --- 4. audit sink unwritable ----------------------------------------------------------------------


async def test_audit_sink_failing_at_run_time_refuses_calls_and_starts_nothing(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    audit = tmp_path / "audit.log"
    with served(policy, APPLIANCE_AUDIT_PATH=str(audit)) as server, counting_listener() as target:
        marker = f"{target.port},36000-36010"
        async with http_client(server.url, "legacy") as client:
            first = await client.call_tool("nmap_scan", {"target": "127.0.0.1", "ports": str(target.port)})
            assert not first.is_error
            scanned_before = target.accepted
            # The file cannot grow past its current size (soft limit: the hard one cannot be raised back).
            size = audit.stat().st_size
            resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
            try:
                calls: list[dict[str, Any]] = [
                    {"target": "127.0.0.1", "ports": marker},
                    {"target": "169.254.169.254"},
                    {"target": "127.0.0.1", "ports": marker, "dry_run": True},
                ]
                refused = [await client.call_tool("nmap_scan", arguments) for arguments in calls]
                breaker = server.get("/healthz")[1]["checks"]["breakers"]["nmap_scan"]
            finally:
                resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            scanned_during = target.accepted - scanned_before
            recovered = await client.call_tool("nmap_scan", {"target": "127.0.0.1", "ports": str(target.port)})
    refused_ids = {result.structured_content["request_id"] for result in refused}
    late = [
        line.get("event") or line["verdict"] for line in audit_lines(audit) if line.get("request_id") in refused_ids
    ]
    print(f"audit lines of the refused calls written once the sink recovered: {late}")
    for result in refused:
        assert result.is_error
        assert (result.structured_content["error_type"], result.structured_content["rule"]) == (
            "execution_error",
            "audit_unwritable",
        )
        assert "File too large" in result.structured_content["message"]
    assert scanned_during == 0
    assert not scanner_processes(marker)
    assert breaker["consecutive_failures"] == 0  # the sink's fault says nothing about nmap
    assert not recovered.is_error


async def test_audit_sink_on_a_full_device_refuses_every_call(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    with served(policy, APPLIANCE_AUDIT_PATH="/dev/full") as server, counting_listener() as target:
        marker = f"{target.port},36100-36110"
        async with http_client(server.url, "legacy") as client:
            scan = await client.call_tool("nmap_scan", {"target": "127.0.0.1", "ports": marker})
            dry = await client.call_tool("nmap_scan", {"target": "127.0.0.1", "ports": marker, "dry_run": True})
        alive = server.proc.poll() is None
    for result in (scan, dry):
        assert result.is_error
        assert result.structured_content["rule"] == "audit_unwritable"
        assert "No space left on device" in result.structured_content["message"]
    assert target.accepted == 0
    assert not scanner_processes(marker)
    assert alive


def test_readiness_reports_an_audit_sink_whose_writes_fail(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    with served(policy, APPLIANCE_AUDIT_PATH="/dev/full") as server:
        status, body = server.get("/readyz")
        reasons = server.get("/healthz")[1]["checks"]["ready"]["reasons"]
    assert status == 503, body
    assert any("audit sink" in reason for reason in reasons)


async def test_shutdown_after_audit_write_failures_exits_zero(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    with served(policy, APPLIANCE_AUDIT_PATH="/dev/full") as server:
        async with http_client(server.url, "legacy") as client:
            await client.call_tool("nmap_scan", {"target": "127.0.0.1", "dry_run": True})
        code = await anyio.to_thread.run_sync(server.stop)
        tail = server.stderr_tail()
    assert code == 0, tail


# --- 5. a client that vanishes mid-call ------------------------------------------------------------


async def test_vanished_client_leaves_the_server_serving_and_its_scan_ends(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    audit = tmp_path / "audit.log"
    budget = 8
    with served(policy, APPLIANCE_AUDIT_PATH=str(audit)) as server, counting_listener() as target:
        marker = f"{target.port},37000-37100"
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "nmap_scan", "arguments": slow_scan(marker, timeout_seconds=budget)},
        }
        async with httpx2.AsyncClient() as http:
            session = await open_legacy_session(http, server.url)
            async with http.stream("POST", server.url, json=call, headers=legacy_headers(session)) as response:
                assert response.status_code == 200
                await eventually(lambda: scanner_processes(marker), START_SECONDS)
            # Leaving the stream unread closes its connection: no cancel notice, no DELETE.
        vanished = time.monotonic()
        async with http_client(server.url, "legacy") as other:
            second = await other.call_tool("nmap_scan", {"target": "127.0.0.1", "ports": str(target.port)})
        served_other_after = time.monotonic() - vanished
        await eventually(lambda: not scanner_processes(marker), budget + REAP_SECONDS)
        gone_after = time.monotonic() - vanished
        ends = [line for line in audit_lines(audit) if line.get("event") == "end" and marker in line["argv"]]
        zombies = server.zombies()
    how = "at once" if gone_after < budget / 2 else "at the end of its budget"
    print(f"other client served after {served_other_after:.2f}s; abandoned scan gone after {gone_after:.2f}s ({how})")
    print(f"abandoned scan's audit outcome: {[line['outcome'] for line in ends]}")
    assert not second.is_error
    assert served_other_after < budget / 2  # not queued behind the abandoned scan
    assert gone_after < budget + REAP_SECONDS
    assert len(ends) == 1  # the abandoned run still leaves its end line
    assert zombies == []


# --- 6. sessions opened and abandoned --------------------------------------------------------------


async def test_abandoned_sessions_keep_descriptors_bounded(tmp_path: Path) -> None:
    sessions = 50
    # One principal opens them all: its session share (default 32) is raised above the count.
    share = {"limits": {"per_principal": {"max_sessions": sessions + 2}}}
    policy = write_policy(tmp_path, LOOPBACK_POLICY, share)
    with served(policy) as server:
        process = psutil.Process(server.pid)
        async with httpx2.AsyncClient() as http:
            await open_legacy_session(http, server.url)  # warm-up: first request builds the app's state
        baseline_fds, baseline_rss = process.num_fds(), process.memory_info().rss
        for _ in range(sessions):
            # A client per session, closed without DELETE: the server is left holding the session.
            async with httpx2.AsyncClient() as http:
                await open_legacy_session(http, server.url)
        peak_fds = process.num_fds()
        settled_fds = await eventually(lambda: process.num_fds() <= baseline_fds + 5 and process.num_fds(), 10)
        rss_growth = process.memory_info().rss - baseline_rss
        async with http_client(server.url, "legacy") as client:
            fresh = await client.list_tools()
    print(
        f"{sessions} abandoned sessions: fds {baseline_fds} -> {peak_fds} (settled {settled_fds}); "
        f"rss +{rss_growth / 1024:.0f} KiB ({rss_growth / sessions / 1024:.1f} KiB/session, kept until the "
        "SDK's 30 min idle timeout)"
    )
    assert len(fresh.tools) == 3
    assert peak_fds < baseline_fds + 60
