"""Forwarding audit lines to syslog (RFC 5424 over a datagram socket), after the file has them.

Off unless `APPLIANCE_AUDIT_SYSLOG` names `unix:/dev/log` (a local daemon) or `udp://HOST:PORT`.
The socket never blocks: a daemon that is gone or slow costs a counted failure, never a call.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Any

# `unix:<absolute path>` or `udp://<host or IPv4 or [IPv6]>:<port>`.
SYSLOG_TARGET = re.compile(r"unix:(?P<path>/\S+)|udp://(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(?P<port>\d{1,5})")
# Facility authpriv (10), severity info (6): audit records are security records.
PRIORITY = 10 * 8 + 6
APP_NAME = "appliance"
MSGID = "audit"


@dataclass(frozen=True)
class SyslogTarget:
    family: socket.AddressFamily
    address: str | tuple[str, int]

    @classmethod
    def parse(cls, text: str) -> SyslogTarget:
        """Raise ValueError for anything but the two forms (which hosts resolve is not checked)."""
        found = SYSLOG_TARGET.fullmatch(text)
        if found is None:
            raise ValueError(f"{text!r}: write unix:/dev/log or udp://HOST:PORT")
        if found["path"] is not None:
            return cls(socket.AF_UNIX, found["path"])
        port = int(found["port"])
        if not 0 < port < 65536:
            raise ValueError(f"{text!r}: the port must be 1-65535")
        host = found["host"].strip("[]")
        return cls(socket.AF_INET6 if ":" in host else socket.AF_INET, (host, port))

    def __str__(self) -> str:
        if isinstance(self.address, str):
            return f"unix:{self.address}"
        host, port = self.address
        return f"udp://[{host}]:{port}" if ":" in host else f"udp://{host}:{port}"


class SyslogForwarder:
    """Sends each line as one datagram; failures are counted and the last one kept."""

    def __init__(self, target: SyslogTarget) -> None:
        self.target = target
        self.forwarded = 0
        self.failed = 0
        self.last_error: str | None = None
        self._socket: socket.socket | None = None
        self._address: str | tuple[Any, ...] | None = None
        # RFC 5424 header fields that do not change while the process runs.
        self._header = f" {socket.gethostname() or '-'} {APP_NAME} {os.getpid()} {MSGID} - "

    def _open(self) -> tuple[socket.socket, str | tuple[Any, ...]]:
        if self._socket is None or self._address is None:
            address: str | tuple[Any, ...] = self.target.address
            if not isinstance(address, str):
                # A host name is looked up once, at the first line, not at every send.
                host, port = address
                address = socket.getaddrinfo(host, port, self.target.family, socket.SOCK_DGRAM)[0][4]
            sock = socket.socket(self.target.family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            self._socket, self._address = sock, address
        return self._socket, self._address

    def send(self, line: bytes) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        message = f"<{PRIORITY}>1 {stamp}{self._header}".encode("ascii") + line
        try:
            sock, address = self._open()
            sock.sendto(message, address)
        except OSError as exc:
            self.failed += 1
            self.last_error = exc.strerror or str(exc)
            return
        self.forwarded += 1

    def status(self) -> dict[str, Any]:
        return {
            "target": str(self.target),
            "forwarded": self.forwarded,
            "failed": self.failed,
            "last_error": self.last_error,
        }

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
