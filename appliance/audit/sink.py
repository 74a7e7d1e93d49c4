"""The audit trail: one JSON line per tool call, refused or run, to a file or stderr, chained.

A line is written before the result goes back, so a call the trail does not show did not run.
The sha256 of the scanner's stdout lets an operator match a result to its audit line. Each line
carries `seq` and `chain` (appliance.audit.chain); the file sink rotates itself and continues
the chain across restarts, rotations and other writers (the `appliance jobs` commands append to
the same file while the appliance runs: a POSIX record lock orders them).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from appliance.audit.chain import (
    CHAIN_CONTINUES,
    CHAIN_START,
    GENESIS,
    SHA256_MODE,
    STDERR_CHAIN,
    Chainer,
    Head,
    load_key,
)
from appliance.audit.resume import Resume, resume_from
from appliance.audit.rotation import rotate, rotated
from appliance.audit.syslog import SyslogForwarder, SyslogTarget
from appliance.errors import ExecutionError

if TYPE_CHECKING:
    from appliance.config import Settings

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_KEEP_FILES = 5
# A rotation that failed (a read-only folder, a full disk) is tried again after this long, not
# at every line: each try costs renames, and the lines keep going to the current file meanwhile.
ROTATION_RETRY_SECONDS = 60.0
NO_KEY_NOTE = "sha256 (no key: not tamper-evident against someone who can rewrite the file)"
_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


@dataclass(frozen=True)
class AuditFigures:
    """What the metrics export (read at scrape time): the checkpointed head and failure counts."""

    seq: int
    chain: str
    mode: str
    syslog_failures: int
    rotation_failures: int


class AuditSink:
    """Append-only chained JSON lines, each batch written with one unbuffered write.

    A file sink is an O_APPEND descriptor: a line either reaches the file or the write fails
    and nothing is held back to appear later. After a failed write the sink reports itself
    unwritable (readiness goes 503) until a write succeeds again.
    """

    def __init__(
        self,
        path: Path | None = None,
        stream: TextIO | None = None,
        *,
        key: bytes | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep_files: int = DEFAULT_KEEP_FILES,
        forward: SyslogForwarder | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = path
        self._stream = stream
        self._chainer = Chainer(key)
        self._max_bytes = max_bytes
        self._keep_files = keep_files
        self._forward = forward
        self._clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._end = -1  # the file's size after this sink's last write; another size: another writer
        self._head: Head | None = None
        self._pending: Resume | None = None if path is not None else Resume(None, STDERR_CHAIN)
        self._retry_rotation_at = 0.0
        self.failure: str | None = None
        self.rotation_problem: str | None = None
        self.reopen_problem: str | None = None
        self.rotation_failures = 0
        self.checkpoint_head: Head | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditSink:
        """The sink the settings describe (raises ConfigError for a key file set but unusable)."""
        from appliance.config import DEFAULT_AUDIT_KEY_FILE

        syslog = settings.audit_syslog
        return cls(
            settings.audit_path,
            key=load_key(settings.audit_key_file, default=DEFAULT_AUDIT_KEY_FILE),
            max_bytes=settings.audit_max_bytes,
            keep_files=settings.audit_keep_files,
            forward=None if syslog is None else SyslogForwarder(SyslogTarget.parse(syslog)),
        )

    @property
    def target(self) -> str:
        return str(self._path) if self._path is not None else "stderr"

    @property
    def head(self) -> Head | None:
        return self._head

    @property
    def mode(self) -> str:
        return self._chainer.mode

    # --- sealing ----------------------------------------------------------------------------
    def _opening(self, now: str, pending: Resume) -> dict[str, Any]:
        """The line that opens a chain, or carries one into a new file."""
        chainer = self._chainer
        if pending.head is None:
            return {
                "seq": 1,
                "time": now,
                "event": CHAIN_START,
                "chain_mode": chainer.mode,
                "key_id": chainer.key_id,
                "reason": pending.reason,
                "previous_line_sha256": pending.previous_line,
            }
        return {
            "seq": pending.head.seq + 1,
            "time": now,
            "event": CHAIN_CONTINUES,
            "chain_mode": chainer.mode,
            "key_id": chainer.key_id,
            "previous_file": pending.link_from,
            "previous_seq": pending.head.seq,
            "previous_chain": pending.head.chain,
        }

    def _seal(self, now: str, record: dict[str, Any]) -> tuple[list[bytes], Head]:
        """The lines to write (an opening line first when one is due) and the head after them."""
        lines: list[bytes] = []
        head = self._head
        pending = self._pending
        if pending is not None and (pending.head is None or pending.link_from is not None):
            opening = self._opening(now, pending)
            line, chain = self._chainer.seal(GENESIS if pending.head is None else pending.head.chain, opening)
            lines.append(line)
            head = Head(opening["seq"], chain)
        assert head is not None, "a sink without a head has a pending chain start"
        line, chain = self._chainer.seal(head.chain, {"seq": head.seq + 1, "time": now, **record})
        lines.append(line)
        return lines, Head(head.seq + 1, chain)

    # --- the file ---------------------------------------------------------------------------
    def _open_path(self) -> int:
        assert self._path is not None
        return os.open(self._path, _FLAGS, 0o640)

    def _resume(self, fd: int, size: int) -> None:
        """Where the chain goes on in the file open at `fd`: its own tail, or (empty) FILE.1's."""
        assert self._path is not None
        name = self._path.name
        if size == 0:
            older = rotated(self._path, 1)
            try:
                found = self._resume_older(older)
            except FileNotFoundError:
                resume = Resume(None, f"{name} is a new audit file")
            except OSError as exc:
                resume = Resume(None, f"{name} is new and {older.name} cannot be read: {exc.strerror}")
            else:
                resume = Resume(found.head, link_from=older.name) if found.head else found
        else:
            resume = resume_from(fd, size, self._chainer, name)
        if resume.head is None:
            log.warning("audit chain: a new chain starts", extra={"sink": self.target, "reason": resume.reason})
        self._head, self._pending = resume.head, resume

    def _resume_older(self, older: Path) -> Resume:
        older_fd = os.open(older, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return resume_from(older_fd, os.fstat(older_fd).st_size, self._chainer, older.name)
        finally:
            os.close(older_fd)  # another file: the record lock on the current one stays

    def _switch(self, old: int, new: int) -> int:
        fcntl.lockf(new, fcntl.LOCK_EX)
        fcntl.lockf(old, fcntl.LOCK_UN)
        os.close(old)
        self._fd = new
        return new

    def _follow(self, fd: int) -> tuple[int, int]:
        """The descriptor of the file the path names now (another writer may have rotated it),
        and that file's size."""
        assert self._path is not None
        own = os.fstat(fd)
        try:
            now = os.stat(self._path)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == (own.st_dev, own.st_ino):
            return fd, own.st_size
        try:
            new = self._open_path()
        except OSError as exc:
            # Keep writing where the lines went so far: no line is lost, /healthz shows it.
            self.reopen_problem = f"{self._path} cannot be opened again: {exc.strerror}; lines go to the file it was"
            return fd, own.st_size
        self.reopen_problem = None
        self._end = -1
        fd = self._switch(fd, new)
        return fd, os.fstat(fd).st_size

    def _rotate(self, fd: int) -> int | None:
        """Rename the files and open a new current one; None (lines stay here) when that fails."""
        assert self._path is not None
        try:
            rotate(self._path, self._keep_files)
            new = self._open_path()
        except OSError as exc:
            self.rotation_failures += 1
            self.rotation_problem = f"rotation of {self._path} failed: {exc.strerror or exc}; lines go on in it"
            self._retry_rotation_at = self._clock() + ROTATION_RETRY_SECONDS
            log.error("audit file rotation failed", extra={"sink": self.target, "reason": self.rotation_problem})
            return None
        self.rotation_problem = None
        pending = self._pending
        if self._head is not None:
            self._pending = Resume(self._head, link_from=rotated(self._path, 1).name)
        elif pending is not None:
            # The old file's end did not verify: the new file opens the new chain, naming that line.
            self._pending = Resume(None, pending.reason, pending.previous_line)
        self._end = 0
        return self._switch(fd, new)

    def _append_file(self, now: str, record: dict[str, Any]) -> list[bytes]:
        if self._fd is None:
            self._fd = self._open_path()
        fd = self._fd
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            fd, size = self._follow(fd)
            if size != self._end:
                self._resume(fd, size)
            lines, head = self._seal(now, record)
            data = b"\n".join(lines) + b"\n"
            if size > 0 and size + len(data) > self._max_bytes and self._clock() >= self._retry_rotation_at:
                rotated_fd = self._rotate(fd)
                if rotated_fd is not None:
                    fd, size = rotated_fd, 0
                    lines, head = self._seal(now, record)
                    data = b"\n".join(lines) + b"\n"
            if self._pending is not None and self._pending.torn:
                data = b"\n" + data  # end the torn line first, or the next line would join it
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write")
            self._end = size + len(data)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
        self._head, self._pending = head, None
        return lines

    def _append_stream(self, now: str, record: dict[str, Any]) -> list[bytes]:
        lines, head = self._seal(now, record)
        out = self._stream or sys.stderr
        out.write(b"\n".join(lines).decode("ascii") + "\n")
        out.flush()
        self._head, self._pending = head, None
        return lines

    # --- the interface ----------------------------------------------------------------------
    def write(self, record: dict[str, Any]) -> None:
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        with self._lock:
            try:
                append = self._append_stream if self._path is None else self._append_file
                lines = append(now, record)
            except OSError as exc:
                self.failure = exc.strerror or str(exc)
                # Fail closed: the caller refuses the call rather than run it unrecorded.
                raise ExecutionError(
                    f"the audit trail {self.target} is not writable: {self.failure}",
                    rule="audit_unwritable",
                    recovery_suggestion="The operator must fix the audit sink; no scan runs unrecorded.",
                ) from exc
            self.failure = None
            if self._forward is not None:
                for line in lines:
                    self._forward.send(line)

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
                self._fd = self._open_path()
            except OSError:
                return False
            return True

    def checkpoint(self, reason: str) -> Head | None:
        """Log the head (start, stop, every few minutes) and keep it for the metrics."""
        head = self._head
        self.checkpoint_head = head
        log.info(
            "audit chain head",
            extra={
                "reason": reason,
                "sink": self.target,
                "chain_mode": self.mode,
                "seq": None if head is None else head.seq,
                "chain": None if head is None else head.chain,
            },
        )
        return head

    def figures(self) -> AuditFigures:
        head = self.checkpoint_head
        return AuditFigures(
            seq=0 if head is None else head.seq,
            chain="" if head is None else head.chain,
            mode=self.mode,
            syslog_failures=0 if self._forward is None else self._forward.failed,
            rotation_failures=self.rotation_failures,
        )

    def describe(self) -> dict[str, Any]:
        """The audit check of /healthz: where lines go, how they are chained, what went wrong."""
        head = self._head
        return {
            "sink": self.target,
            "writable": self.writable(),
            "chain": NO_KEY_NOTE if self.mode == SHA256_MODE else self.mode,
            "key_id": self._chainer.key_id,
            "head": None if head is None else {"seq": head.seq, "chain": head.chain},
            "rotation": {
                "max_bytes": self._max_bytes,
                "keep_files": self._keep_files,
                "failures": self.rotation_failures,
                "problem": self.rotation_problem or self.reopen_problem,
            },
            "syslog": None if self._forward is None else self._forward.status(),
        }

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._forward is not None:
                self._forward.close()
