"""How asyncio learns that a scanner exited: a pidfd on the event loop, not a thread per child.

Python 3.11's default child watcher (`ThreadedChildWatcher`) starts a thread for every
subprocess and blocks the event loop until that thread runs: on each call's path a thread start
and a GIL hand-over, about 0.2 ms on an idle CPU and several milliseconds when the CPUs are busy.
Python 3.12 made a pidfd watcher the default where the kernel has `pidfd_open` (Linux 5.3);
`use_pidfd_watcher` gives 3.11 the same. Where `pidfd_open` is refused (an old kernel, a seccomp
profile without it) a child falls back to the thread watcher, so every child is still reaped.

The watcher takes the running loop when a child is added (3.11's own `PidfdChildWatcher` must be
attached to one loop first, and tests run many loops), and reaps only the pid it was given: the
PID-1 reaper (appliance/reaper.py) still leaves the runner's children alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from types import TracebackType
from typing import TypeVarTuple, Unpack

log = logging.getLogger(__name__)
_Ts = TypeVarTuple("_Ts")

# What asyncio reports for a child whose exit status someone else took (as its watchers do).
STATUS_LOST = 255


# Python 3.12 deprecated child watchers (its default is a pidfd watcher) and 3.14 removed them:
# only 3.11 defines one, so later versions never touch the deprecated API.
if sys.version_info < (3, 12):

    class PidfdWatcher(asyncio.AbstractChildWatcher):
        """A child watcher that waits on a pidfd in the running loop, else on a thread."""

        def __init__(self) -> None:
            self._threads = asyncio.ThreadedChildWatcher()

        def add_child_handler(self, pid: int, callback: Callable[[int, int, Unpack[_Ts]], object], *args: *_Ts) -> None:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                self._threads.add_child_handler(pid, callback, *args)
                return
            asyncio.get_running_loop().add_reader(pidfd, self._reap, pid, pidfd, callback, args)

        @staticmethod
        def _reap(pid: int, pidfd: int, callback: Callable[[int, int, Unpack[_Ts]], object], args: tuple[*_Ts]) -> None:
            asyncio.get_running_loop().remove_reader(pidfd)
            os.close(pidfd)
            try:
                # The pidfd is readable once the child exited: this wait does not block.
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                log.warning("a scanner's exit status was taken by another waiter", extra={"pid": pid})
                code = STATUS_LOST
            else:
                code = os.waitstatus_to_exitcode(status)
            callback(pid, code, *args)

        def remove_child_handler(self, pid: int) -> bool:
            # asyncio never calls this for a running child; only the thread fallback keeps a table.
            return self._threads.remove_child_handler(pid)

        def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
            """Nothing to attach: each child is watched on the loop that is running when it starts."""

        def close(self) -> None:
            self._threads.close()

        def is_active(self) -> bool:
            return True

        def __enter__(self) -> PidfdWatcher:
            return self

        def __exit__(
            self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
        ) -> None:
            return None


_installed = False


def use_pidfd_watcher() -> None:
    """Make asyncio watch children with `PidfdWatcher` (once; on 3.12 and later it already does)."""
    global _installed
    if _installed:
        return
    _installed = True
    if sys.version_info < (3, 12):
        asyncio.set_child_watcher(PidfdWatcher())
