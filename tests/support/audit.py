"""Audit trails as the tests make and damage them, and syslog receivers the tests start.

The receivers listen on a unix datagram socket in the test's tmp dir or on 127.0.0.1 (UDP): the
only places forwarding reaches in a test.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.audit import AuditSink

KEY = b"test-audit-key-0123456789abcdef"
OTHER_KEY = b"another-audit-key-0123456789abc"
# A receiver waits this long for a datagram the sink has already sent (loopback: microseconds).
RECEIVE_SECONDS = 5.0


def chained_file(path: Path, count: int, key: bytes | None = KEY, **sink: Any) -> AuditSink:
    """Write `count` call lines (`i` 0..count-1) through a closed-again sink; return it."""
    audit = AuditSink(path, key=key, **sink)
    try:
        for index in range(count):
            audit.write({"event": "call", "i": index})
    finally:
        audit.close()
    return audit


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def rewrite_lines(path: Path, change: Callable[[list[bytes]], list[bytes]]) -> None:
    """Replace the file's lines (without newlines) by `change(lines)`, as an intruder would."""
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"".join(line + b"\n" for line in change(lines)))


@dataclass
class SyslogReceiver:
    sock: socket.socket
    target: str
    received: list[bytes] = field(default_factory=list)

    def take(self, count: int) -> list[bytes]:
        """Wait for `count` more datagrams; fail after RECEIVE_SECONDS."""
        self.sock.settimeout(RECEIVE_SECONDS)
        got = [self.sock.recv(65536) for _ in range(count)]
        self.received.extend(got)
        return got


@contextlib.contextmanager
def unix_syslog(path: Path) -> Iterator[SyslogReceiver]:
    """A syslog daemon's /dev/log stand-in: a unix datagram socket at `path`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield SyslogReceiver(sock, f"unix:{path}")
    finally:
        sock.close()


@contextlib.contextmanager
def udp_syslog() -> Iterator[SyslogReceiver]:
    """A syslog receiver on 127.0.0.1 (UDP), on a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield SyslogReceiver(sock, f"udp://127.0.0.1:{sock.getsockname()[1]}")
    finally:
        sock.close()
