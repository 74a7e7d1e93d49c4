"""Targets on 127.0.0.1 that the tests start themselves: the only things a host test may scan."""

from __future__ import annotations

import contextlib
import functools
import http.server
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def accepting(on_connection: Callable[[socket.socket], None], host: str = "127.0.0.1") -> Iterator[int]:
    """A TCP listener on `host` (a loopback address: all of 127.0.0.0/8 is this host's own),
    on a port of its own, whose thread hands each accepted connection to `on_connection`;
    yields the port. The one accept loop of the test listeners."""
    assert host.startswith("127."), "host tests listen on loopback only"
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, 0))
    server.listen(64)
    server.settimeout(0.1)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            on_connection(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=2)
        server.close()


@contextlib.contextmanager
def tcp_listener(banner: bytes = b"", host: str = "127.0.0.1") -> Iterator[int]:
    """A TCP listener on `host` (loopback) that accepts, optionally sends a banner, and closes."""

    def answer(conn: socket.socket) -> None:
        with conn:
            if banner:
                with contextlib.suppress(OSError):
                    conn.sendall(banner)

    with accepting(answer, host) as port:
        yield port


def closed_port() -> int:
    """A loopback port with nothing listening (bound then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def loopback_listening(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port (one attempt)."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class CountingListener:
    """A TCP listener on 127.0.0.1 that counts accepted connections; `close()` kills it mid-scan."""

    port: int
    close: Callable[[], None]
    accepted: int = 0


@contextlib.contextmanager
def counting_listener() -> Iterator[CountingListener]:
    counted: list[CountingListener] = []

    def count(conn: socket.socket) -> None:
        conn.close()
        counted[0].accepted += 1

    with contextlib.ExitStack() as stack:
        # Nobody knows the port before it is yielded: `counted` is filled before any connection.
        port = stack.enter_context(accepting(count))
        counted.append(CountingListener(port, stack.close))
        yield counted[0]


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
