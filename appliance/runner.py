"""The one async subprocess runner every scanner goes through.

A scanner runs from an absolute argv (never a shell) in its own session, with a scrubbed
environment and kernel resource limits. Its output is read incrementally and capped; on
timeout, output cap or cancellation the whole process group gets SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from appliance.childwatch import use_pidfd_watcher
from appliance.errors import ExecutionError, NotFoundError

logger = logging.getLogger(__name__)

LineCallback = Callable[[bytes], Awaitable[None]]
_T = TypeVar("_T")

# HOME points nowhere so nmap does not read ~/.nmap (or any other per-user config).
BASE_ENV: Mapping[str, str] = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/nonexistent"}
READ_CHUNK_BYTES = 64 * 1024
MAX_LINE_BYTES = 64 * 1024
STDERR_CAP_BYTES = 64 * 1024
# Direct children between spawn and reap: the PID-1 reaper (reaper.py) leaves these to asyncio.
LIVE_CHILDREN: set[int] = set()
# SIGKILL is immediate; this only bounds a child stuck in the kernel or a pipe kept by a setsid escapee.
REAP_TIMEOUT_SECONDS = 5.0
# fork/exec refused for lack of processes (EAGAIN) or memory (ENOMEM): may work a moment later.
TRANSIENT_SPAWN_ERRNOS = frozenset({errno.EAGAIN, errno.ENOMEM})


@dataclass(frozen=True)
class RunLimits:
    """Budget for one scanner process; the caller derives it from the policy."""

    timeout_seconds: float
    output_cap_bytes: int  # stdout bytes kept; reaching it stops the process group
    cpu_seconds: int = 600  # RLIMIT_CPU: a backstop should the wall-clock timeout ever fail
    max_open_files: int = 1024  # RLIMIT_NOFILE: nmap and gobuster need a socket per probe in flight
    grace_seconds: float = 0.5  # SIGTERM to SIGKILL: long enough for nmap to flush its XML, short for a hung call


@dataclass(frozen=True)
class RunResult:
    """What one run produced; partial output is kept on timeout, cap and kill."""

    argv: tuple[str, ...]
    exit_code: int | None  # None when we stopped a still running child; negative = killed by a signal
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    timed_out: bool
    duration_seconds: float
    pid: int
    stopped: bool = False  # the caller's stop event fired (appliance shutdown)
    spawn_seconds: float = 0.0  # of duration_seconds: from asking for the process to having it running


class _Capture:
    """Bytes kept from one pipe, up to a cap, and the line splitter feeding its callback.

    The callback sees exactly the kept bytes, split at b"\\n" (newline removed); a line longer
    than MAX_LINE_BYTES arrives in MAX_LINE_BYTES pieces so a newline-free flood stays bounded.
    """

    def __init__(self, cap: int, on_line: LineCallback | None) -> None:
        self.cap = cap
        self.kept = bytearray()
        self.truncated = False
        self._on_line = on_line
        self._partial = b""

    async def feed(self, chunk: bytes) -> None:
        room = self.cap - len(self.kept)
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[: max(room, 0)]
        self.kept += chunk
        if self._on_line is None or not chunk:
            return
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        pieces = [line[i : i + MAX_LINE_BYTES] for line in lines for i in range(0, len(line) or 1, MAX_LINE_BYTES)]
        while len(self._partial) > MAX_LINE_BYTES:
            pieces.append(self._partial[:MAX_LINE_BYTES])
            self._partial = self._partial[MAX_LINE_BYTES:]
        for piece in pieces:
            await self._on_line(piece)

    async def flush(self) -> None:
        if self._on_line is not None and self._partial:
            await self._on_line(self._partial)
        self._partial = b""


async def _pump(stream: asyncio.StreamReader, capture: _Capture, capped: asyncio.Future[None] | None) -> None:
    # Read to EOF even past the cap: asyncio reports the child finished only once its pipes close.
    while chunk := await stream.read(READ_CHUNK_BYTES):
        await capture.feed(chunk)
        if capture.truncated and capped is not None and not capped.done():
            capped.set_result(None)
    await capture.flush()


def _check_argv(argv: Sequence[str]) -> tuple[str, ...]:
    args = tuple(argv)
    if not args or not os.path.isabs(args[0]):
        raise ExecutionError("argv[0] must be an absolute path to the scanner binary", rule="argv_invalid")
    if any("\x00" in arg for arg in args):
        raise ExecutionError("argv contains a NUL byte", rule="argv_invalid")
    return args


def _apply_limits(pid: int, limits: RunLimits) -> None:
    # Applied from outside with prlimit, so they land a few microseconds after exec. Setting them in
    # the child (preexec_fn) would force fork instead of vfork/posix_spawn; a scanner cannot burn CPU
    # minutes, open a thousand files or dump core in that window.
    wanted = (
        (resource.RLIMIT_CPU, limits.cpu_seconds),
        (resource.RLIMIT_NOFILE, limits.max_open_files),
        (resource.RLIMIT_CORE, 0),
    )
    try:
        for res, value in wanted:
            hard = resource.prlimit(pid, res)[1]
            # Never raise a limit: without CAP_SYS_RESOURCE that fails, and lower is what we want.
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.prlimit(pid, res, (value, value))
    except ProcessLookupError:
        pass  # already exited and reaped: nothing left to limit
    except (OSError, ValueError) as exc:
        raise ExecutionError("could not set resource limits on the scanner", rule="rlimit_failed") from exc


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the whole group is gone (and reaped) already
    except PermissionError:
        logger.error("cannot signal scanner process group", extra={"pgid": pgid, "signal": sig.name})


async def _supervise(
    wait_task: asyncio.Task[int],
    readers: list[asyncio.Task[None]],
    capped: asyncio.Future[None],
    deadline: float,
    stopping: asyncio.Future[Any],
) -> str:
    """Wait, until the monotonic deadline, for exit with both pipes drained; say why we stopped."""
    pending: set[asyncio.Future[Any]] = {wait_task, *readers}
    while pending:
        remaining = max(deadline - time.monotonic(), 0.0)
        done, _ = await asyncio.wait(
            pending | {capped, stopping}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            return "timeout"
        if capped in done:
            return "output_cap"
        if stopping in done:
            return "stopped"
        for task in done:
            task.result()  # a line callback that raised stops the run with its own error
        pending -= done
    return "exited"


async def _stop(
    proc: asyncio.subprocess.Process,
    wait_task: asyncio.Task[int],
    readers: list[asyncio.Task[None]],
    grace: float,
) -> bool:
    """Stop the group, reap the child, drain the pipes. True if the child was still running."""
    running = proc.returncode is None
    if running:
        _signal_group(proc.pid, signal.SIGTERM)
        await asyncio.wait({wait_task}, timeout=grace)
    # SIGKILL even after a clean exit: grandchildren a scanner left behind must not outlive the call.
    # The pgid stays reserved while any member lives; reuse would need a pid wrap-around since the reap.
    _signal_group(proc.pid, signal.SIGKILL)
    _, pending = await asyncio.wait({wait_task, *readers}, timeout=REAP_TIMEOUT_SECONDS)
    if pending:
        logger.error("scanner pipes still open after SIGKILL", extra={"pid": proc.pid})
        for task in pending:
            task.cancel()
        await asyncio.wait(pending)
    for task in readers:
        if task.done() and not task.cancelled():
            task.exception()  # marked retrieved; run() re-raises it on the normal path
    return running


async def _finish_despite_cancel(coro: Coroutine[Any, Any, _T]) -> tuple[_T, bool]:
    """Run coro to the end even if the caller is cancelled meanwhile; say whether it was.

    anyio cancel scopes re-deliver cancellation on every loop iteration (a busy loop against a bare
    asyncio.shield), so shield from anyio too; the loop covers plain asyncio Task.cancel().
    """
    task = asyncio.ensure_future(coro)
    cancelled = False
    with anyio.CancelScope(shield=True):
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if task.done():
                    raise
                cancelled = True
    return task.result(), cancelled


async def _spawn(args: tuple[str, ...], env: Mapping[str, str]) -> asyncio.subprocess.Process:
    use_pidfd_watcher()
    try:
        return await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # own process group (pgid == pid), so killpg reaches grandchildren
        )
    except FileNotFoundError as exc:
        raise NotFoundError(f"scanner binary not found: {args[0]}", rule="scanner_binary_missing") from exc
    except OSError as exc:
        rule = "scanner_start_transient" if exc.errno in TRANSIENT_SPAWN_ERRNOS else "scanner_start_failed"
        raise ExecutionError(f"scanner could not be started: {exc}", rule=rule) from exc


async def run(
    argv: Sequence[str],
    limits: RunLimits,
    *,
    env: Mapping[str, str] | None = None,
    on_stdout_line: LineCallback | None = None,
    on_stderr_line: LineCallback | None = None,
    stop: asyncio.Event | None = None,
) -> RunResult:
    """Run one scanner to completion, timeout, output cap or cancellation, and return what it wrote.

    `env` is added to BASE_ENV; nothing else of this process's environment reaches the scanner.
    A timeout, an output cap or `stop` being set is reported in the result, not raised;
    cancellation is re-raised after the process group is gone.
    """
    args = _check_argv(argv)
    started = time.monotonic()
    # Cancelled mid-spawn, asyncio would SIGKILL the child only, not grandchildren it already made.
    proc, cancelled = await _finish_despite_cancel(_spawn(args, {**BASE_ENV, **(env or {})}))
    spawned = time.monotonic()
    LIVE_CHILDREN.add(proc.pid)
    # Both are PIPE above; the asserts only narrow the type.
    assert proc.stdout is not None
    assert proc.stderr is not None

    out = _Capture(limits.output_cap_bytes, on_stdout_line)
    err = _Capture(STDERR_CAP_BYTES, on_stderr_line)
    capped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    readers = [
        asyncio.create_task(_pump(proc.stdout, out, capped)),
        asyncio.create_task(_pump(proc.stderr, err, None)),
    ]
    wait_task = asyncio.create_task(proc.wait())
    # A future that never completes stands in for "no stop event" so the wait set stays uniform.
    stopping: asyncio.Future[Any] = (
        asyncio.ensure_future(stop.wait()) if stop is not None else asyncio.get_running_loop().create_future()
    )
    reason = "error"
    try:
        if cancelled:
            raise asyncio.CancelledError
        _apply_limits(proc.pid, limits)
        reason = await _supervise(wait_task, readers, capped, started + limits.timeout_seconds, stopping)
    except asyncio.CancelledError:
        reason = "cancelled"
        raise
    finally:
        if reason != "exited":
            logger.warning(
                "stopping scanner process group",
                extra={
                    "scanner": args[0],
                    "pid": proc.pid,
                    "reason": reason,
                    "timeout_seconds": limits.timeout_seconds,
                },
            )
        stopping.cancel()
        was_running, cancelled = await _finish_despite_cancel(_stop(proc, wait_task, readers, limits.grace_seconds))
        LIVE_CHILDREN.discard(proc.pid)
        if cancelled:
            raise asyncio.CancelledError
    for task in readers:
        if not task.cancelled():
            task.result()
    return RunResult(
        argv=args,
        exit_code=None if was_running else proc.returncode,
        stdout=bytes(out.kept),
        stderr=bytes(err.kept),
        stdout_truncated=out.truncated,
        timed_out=reason == "timeout",
        stopped=reason == "stopped",
        duration_seconds=time.monotonic() - started,
        pid=proc.pid,
        spawn_seconds=spawned - started,
    )
