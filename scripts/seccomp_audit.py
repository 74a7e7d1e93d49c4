"""Collect the kernel's seccomp audit records (SCMP_ACT_LOG) over the audit netlink socket.

A container run with a profile whose default action is SCMP_ACT_LOG makes the kernel emit one
AUDIT_SECCOMP record per syscall the profile does not name. Without an audit daemon those go to
the kernel log through printk, which is rate-limited (about 10 lines in 5 s) and so loses almost
all of them. This module registers the calling process as the audit daemon for as long as it
runs, raises the kernel's backlog so no record is dropped, receives every record, and puts the
kernel's settings back when it stops. It needs root and must be the only audit daemon on the host
(this machine runs none).

It does not cover: syscall arguments (the record has none: strace shows those), and records of
other containers that happen to run with a LOG profile at the same time (none should).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

NETLINK_AUDIT = 9
AUDIT_GET = 1000
AUDIT_SET = 1001
AUDIT_SECCOMP = 1326
AUDIT_FIRST_EVENT = 1100  # replies to our requests are below this
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
AUDIT_STATUS_ENABLED = 0x1
AUDIT_STATUS_PID = 0x4
AUDIT_STATUS_BACKLOG_LIMIT = 0x10
SECCOMP_RET_LOG = 0x7FFC0000
NLMSG_HEADER = struct.Struct("=IHHII")
# struct audit_status up to backlog_limit: mask, enabled, failure, pid, rate_limit, backlog_limit.
AUDIT_STATUS = struct.Struct("=IIIIII")
# Enough room for every record of a burst (an nmap -sV run makes tens of thousands of syscalls
# that a LOG-everything profile reports); the default 64 makes traced processes wait on us.
TRACE_BACKLOG_LIMIT = 65536
RECEIVE_BUFFER_BYTES = 32 * 1024 * 1024
# How long stop() keeps reading after the workload ended, to drain records still queued.
DRAIN_SECONDS = 0.5

RECORD = re.compile(
    r'pid=(?P<pid>\d+) .*?comm="(?P<comm>[^"]*)" exe="(?P<exe>[^"]*)"'
    r".* syscall=(?P<nr>\d+) .*code=(?P<code>0x[0-9a-f]+)"
)
UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")


def syscall_names(header: Path = UNISTD) -> dict[int, str]:
    """x86_64 syscall numbers to names, from the kernel headers (package linux-libc-dev)."""
    names: dict[int, str] = {}
    for match in re.finditer(r"^#define __NR_(\w+) (\d+)$", header.read_text(), re.MULTILINE):
        names[int(match[2])] = match[1]
    return names


@dataclasses.dataclass
class Observations:
    """What one phase of a workload called that the profile did not allow: syscall -> callers."""

    calls: Counter[tuple[int, str]] = dataclasses.field(default_factory=Counter)  # (nr, exe or comm)

    def add(self, nr: int, caller: str) -> None:
        self.calls[(nr, caller)] += 1


class AuditCollector:
    """Receive AUDIT_SECCOMP records of SCMP_ACT_LOG into the phase that is current."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
        self._sock.setsockopt(socket.SOL_SOCKET, 33, RECEIVE_BUFFER_BYTES)  # SO_RCVBUFFORCE (root)
        self._sock.bind((0, 0))
        self._seq = 0
        self._saved: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.phase = "start-up"
        self.phases: dict[str, Observations] = {}
        self.records = 0

    def _send(self, kind: int, payload: bytes) -> None:
        self._seq += 1
        header = NLMSG_HEADER.pack(NLMSG_HEADER.size + len(payload), kind, NLM_F_REQUEST | NLM_F_ACK, self._seq, 0)
        self._sock.send(header + payload)

    def _request(self, kind: int, payload: bytes) -> bytes | None:
        """Send one request; return the AUDIT_GET reply body (if any) after the kernel's ack."""
        self._send(kind, payload)
        reply: bytes | None = None
        while True:
            data = self._sock.recv(65536)
            for msg_type, body in _messages(data):
                if msg_type == NLMSG_ERROR:
                    (error,) = struct.unpack_from("=i", body)
                    if error:
                        raise OSError(-error, f"audit netlink request {kind} refused: {os.strerror(-error)}")
                    if kind != AUDIT_GET or reply is not None:
                        return reply
                elif msg_type == AUDIT_GET:
                    reply = body
                    if kind == AUDIT_GET:
                        return reply

    def start(self) -> None:
        status = self._request(AUDIT_GET, b"")
        assert status is not None
        _, enabled, _, pid, _, backlog_limit = AUDIT_STATUS.unpack_from(status.ljust(AUDIT_STATUS.size, b"\0"))
        if pid not in (0, os.getpid()):
            raise RuntimeError(f"an audit daemon (pid {pid}) is already registered; stop it first")
        self._saved = (enabled, backlog_limit)
        mask = AUDIT_STATUS_ENABLED | AUDIT_STATUS_PID | AUDIT_STATUS_BACKLOG_LIMIT
        self._request(AUDIT_SET, AUDIT_STATUS.pack(mask, 1, 0, os.getpid(), 0, TRACE_BACKLOG_LIMIT))
        self._thread = threading.Thread(target=self._receive, name="audit-receiver", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        idle_since: float | None = None
        while True:
            ready, _, _ = select.select([self._sock], [], [], 0.1)
            if not ready:
                if self._stop.is_set():
                    now = time.monotonic()
                    idle_since = idle_since or now
                    if now - idle_since >= DRAIN_SECONDS:
                        return
                continue
            idle_since = None
            for msg_type, body in _messages(self._sock.recv(1 << 20)):
                if msg_type == AUDIT_SECCOMP:
                    self._record(body.rstrip(b"\0").decode(errors="replace"))

    def _record(self, text: str) -> None:
        match = RECORD.search(text)
        if match is None or int(match["code"], 16) != SECCOMP_RET_LOG:
            return
        caller = match["exe"] if match["exe"] not in ("", "/") else f"comm:{match['comm']}"
        with self._lock:
            self.records += 1
            self.phases.setdefault(self.phase, Observations()).add(int(match["nr"]), caller)

    @contextlib.contextmanager
    def phase_of(self, name: str) -> Iterator[None]:
        with self._lock:
            self.phase = name
        try:
            yield
        finally:
            with self._lock:
                self.phase = "between phases"

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._saved is not None:
            enabled, backlog_limit = self._saved
            mask = AUDIT_STATUS_ENABLED | AUDIT_STATUS_PID | AUDIT_STATUS_BACKLOG_LIMIT
            # pid 0 unregisters us; the kernel goes back to printk for audit records.
            self._request(AUDIT_SET, AUDIT_STATUS.pack(mask, enabled, 0, 0, 0, backlog_limit))
        self._sock.close()


def _messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + NLMSG_HEADER.size <= len(data):
        length, msg_type, _, _, _ = NLMSG_HEADER.unpack_from(data, offset)
        if msg_type >= AUDIT_FIRST_EVENT:
            # Audit event records come one per datagram, and their nlmsg_len leaves out the
            # header (an old kernel quirk auditd works around the same way).
            yield msg_type, data[offset + NLMSG_HEADER.size :]
            return
        if length < NLMSG_HEADER.size:
            return
        yield msg_type, data[offset + NLMSG_HEADER.size : offset + length]
        offset += (length + 3) & ~3
