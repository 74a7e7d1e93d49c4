"""The audit trail: one JSON line per tool call, refused or run, to a file or stderr.

A line is written before the result goes back, so a call the trail does not show did not run.
The sha256 of the scanner's stdout lets an operator match a result to its audit line.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from appliance.errors import ExecutionError


class AuditSink:
    """Append-only JSON lines. Writes are flushed at once: an audit line must survive a crash."""

    def __init__(self, path: Path | None = None, stream: TextIO | None = None) -> None:
        self._path = path
        self._stream = stream
        self._lock = threading.Lock()
        self._file: TextIO | None = None

    @property
    def target(self) -> str:
        return str(self._path) if self._path is not None else "stderr"

    def _open(self) -> TextIO:
        if self._path is None:
            return self._stream or sys.stderr
        if self._file is None:
            self._file = self._path.open("a", encoding="utf-8")
        return self._file

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({"time": datetime.now(UTC).isoformat(timespec="milliseconds"), **record}, default=str)
        with self._lock:
            try:
                out = self._open()
                out.write(line + "\n")
                out.flush()
            except OSError as exc:
                # Fail closed: the caller refuses the call rather than run it unrecorded.
                raise ExecutionError(
                    f"the audit trail {self.target} is not writable: {exc.strerror}",
                    rule="audit_unwritable",
                    recovery_suggestion="The operator must fix the audit sink; no scan runs unrecorded.",
                ) from exc

    def writable(self) -> bool:
        if self._path is None:
            return True
        try:
            with self._lock:
                self._open()
            return True
        except OSError:
            return False

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def output_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
