"""The audit trail: one JSON line per tool call, refused or run, to a file or stderr.

A line is written before the result goes back, so a call the trail does not show did not run.
The sha256 of the scanner's stdout lets an operator match a result to its audit line.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from appliance.errors import ExecutionError


class AuditSink:
    """Append-only JSON lines, each written with one unbuffered write.

    A file sink is an O_APPEND descriptor: a line either reaches the file or the write fails
    and nothing is held back to appear later. After a failed write the sink reports itself
    unwritable (readiness goes 503) until a write succeeds again.
    """

    def __init__(self, path: Path | None = None, stream: TextIO | None = None) -> None:
        self._path = path
        self._stream = stream
        self._lock = threading.Lock()
        self._fd: int | None = None
        self.failure: str | None = None

    @property
    def target(self) -> str:
        return str(self._path) if self._path is not None else "stderr"

    def _write_line(self, line: str) -> None:
        if self._path is None:
            out = self._stream or sys.stderr
            out.write(line)
            out.flush()
            return
        if self._fd is None:
            self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        data = line.encode()
        if os.write(self._fd, data) != len(data):
            raise OSError(errno.ENOSPC, "short write")

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({"time": datetime.now(UTC).isoformat(timespec="milliseconds"), **record}, default=str)
        with self._lock:
            try:
                self._write_line(line + "\n")
            except OSError as exc:
                self.failure = exc.strerror or str(exc)
                # Fail closed: the caller refuses the call rather than run it unrecorded.
                raise ExecutionError(
                    f"the audit trail {self.target} is not writable: {self.failure}",
                    rule="audit_unwritable",
                    recovery_suggestion="The operator must fix the audit sink; no scan runs unrecorded.",
                ) from exc
            self.failure = None

    def writable(self) -> bool:
        """False after a failed write (until one succeeds) or when the file cannot be opened."""
        if self.failure is not None:
            return False
        if self._path is None:
            return True
        with self._lock:
            if self._fd is not None:
                return True
            try:
                self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            except OSError:
                return False
            return True

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def output_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
