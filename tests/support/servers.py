"""`appliance serve` as a child process of the test, and MCP clients for it.

Every server here listens on 127.0.0.1 and runs the policy the test wrote; what it may scan is
whatever that policy allows, so tests give it the loopback policy and loopback targets only.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from mcp import Client, StdioServerParameters
from mcp.client.session import ElicitationFnT, MessageHandlerFnT
from mcp.client.streamable_http import streamable_http_client

from appliance.compat import mcp_http_client
from support.listeners import closed_port, loopback_listening
from support.waiting import wait_until

APPLIANCE = str(Path(sys.executable).with_name("appliance"))
TOKEN = "test-token-0123456789abcdef"
# How long a stopped server may take to exit (its own shutdown is bounded to about 3 s).
STOP_SECONDS = 10
# Start-up probes each scanner's --version once; on a loaded CI host that takes a few seconds.
START_SECONDS = 20


def run_cli(*args: str, cwd: Path | None = None, **env: str) -> tuple[int, Any, str]:
    """`appliance ARGS` as a process without our APPLIANCE_* variables: (exit code, JSON stdout or
    its text, stderr)."""
    clean = _clean_env()
    done = subprocess.run(
        [APPLIANCE, *args], env={**clean, **env}, cwd=cwd, capture_output=True, timeout=60, check=False
    )
    try:
        body = json.loads(done.stdout) if done.stdout.strip() else None
    except json.JSONDecodeError:
        body = done.stdout.decode()
    return done.returncode, body, done.stderr.decode()


@functools.cache
def _session_data_dir() -> str:
    """A job store for child servers of this test run that no test gave one: never the host's
    /var/lib/appliance or the shared /tmp/appliance-data another checkout's appliance may own."""
    return tempfile.mkdtemp(prefix="appliance-test-data-")


def _clean_env() -> dict[str, str]:
    """Our environment without APPLIANCE_* variables, except a data directory: the test's own
    (conftest's own_data_dir) when set, else one for this run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env["APPLIANCE_DATA_DIR"] = os.environ.get("APPLIANCE_DATA_DIR") or _session_data_dir()
    return env


def server_env(policy: Path, **extra: str) -> dict[str, str]:
    """Our environment without APPLIANCE_* variables, plus the policy and `extra`."""
    env = _clean_env()
    # Health port 0: each test server gets a free sidecar port.
    env.update(APPLIANCE_POLICY_PATH=str(policy), APPLIANCE_LOG_LEVEL="WARNING", APPLIANCE_HEALTH_PORT="0")
    env.update(extra)
    return env


@contextlib.contextmanager
def stdio_child(policy: Path, **extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """`appliance serve` over stdio with raw pipes, for tests that decide when stdin closes or a
    signal arrives (an SDK client does both on exit). Killed and its pipes closed afterwards."""
    proc = subprocess.Popen(
        [APPLIANCE, "serve"],
        env=server_env(policy, **extra),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream:
                stream.close()


def stdio_client(policy: Path, mode: str) -> Client:
    """An MCP client that starts `appliance serve` over stdio with `policy`."""
    params = StdioServerParameters(command=APPLIANCE, args=["serve"], env=server_env(policy))
    return Client(params, mode=mode)


@contextlib.contextmanager
def http_server(policy: Path, port: int | None = None, **extra: str) -> Iterator[str]:
    """`appliance serve --transport http` on `port` (default: a free loopback port); yields the MCP URL."""
    port = closed_port() if port is None else port
    env = server_env(policy, APPLIANCE_TRANSPORT="http", APPLIANCE_PORT=str(port), **extra)
    proc = subprocess.Popen([APPLIANCE, "serve"], env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:

        def listening() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "server exited"
            return loopback_listening(port)

        wait_until(listening, timeout=START_SECONDS)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


@contextlib.asynccontextmanager
async def http_client(
    url: str,
    mode: str,
    token: str = TOKEN,
    message_handler: MessageHandlerFnT | None = None,
    verify: ssl.SSLContext | None = None,
    elicitation_callback: ElicitationFnT | None = None,
) -> AsyncIterator[Client]:
    """An MCP client over streamable HTTP with a bearer token, in protocol era `mode`;
    `message_handler` sees what the server sends unasked (handshake-era notifications);
    `verify`: the trust anchors of an https URL; `elicitation_callback`: the human who answers
    the server's questions (the client then declares form elicitation)."""
    # The transport leaves a client it was handed open; closing it is ours to do.
    async with (
        mcp_http_client(headers={"Authorization": f"Bearer {token}"}, verify=verify) as http,
        Client(
            streamable_http_client(url, http_client=http),
            mode=mode,
            message_handler=message_handler,
            elicitation_callback=elicitation_callback,
        ) as client,
    ):
        yield client


def sidecar_get(port: int, path: str, tls: ssl.SSLContext | None = None) -> tuple[int, dict[str, Any]]:
    """GET a sidecar endpoint on 127.0.0.1 (https with `tls`, as `localhost`): (status, JSON body);
    status 0 when nothing answers."""
    url = f"http://127.0.0.1:{port}{path}" if tls is None else f"https://localhost:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5, context=tls) as response:  # noqa: S310 (http or https)
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())
    except urllib.error.URLError:
        return 0, {}


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

    def metrics(self) -> str:
        """The sidecar's /metrics text (a server without a health token)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/metrics", timeout=10) as response:
            return str(response.read().decode())

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


@contextlib.contextmanager
def served(policy: Path, port: int | None = None, **extra: str) -> Iterator[Served]:
    """Start the appliance over HTTP with a bearer token (on `port`, default a free one) and a
    sidecar on a chosen free port."""
    port, health = closed_port() if port is None else port, closed_port()
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
        # A fleet segment has no MCP endpoint: its sidecar says it is up.
        mcp = extra.get("APPLIANCE_ROLE") != "segment"

        def up() -> bool:
            assert proc.poll() is None, f"server exited at start: {server.stderr_tail()}"
            return (not mcp or loopback_listening(port)) and loopback_listening(health)

        wait_until(up, timeout=START_SECONDS)
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=STOP_SECONDS)
        stderr.close()
