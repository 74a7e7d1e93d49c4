"""The child watcher the runner installs: exits reported from a pidfd, a thread only as fallback."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import pytest

from appliance.childwatch import use_pidfd_watcher

pytestmark = [
    pytest.mark.anyio,
    # 3.12 made a pidfd watcher asyncio's default and deprecated choosing one.
    pytest.mark.skipif(sys.version_info >= (3, 12), reason="asyncio's own default on Python 3.12+"),
]


def waiter_threads() -> list[str]:
    # ThreadedChildWatcher's threads, one per child it waits for.
    return [t.name for t in threading.enumerate() if t.name.startswith("asyncio-waitpid-")]


async def exit_code_of(*argv: str) -> int:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, start_new_session=True
    )
    # While it runs nobody waits for it on a thread.
    assert waiter_threads() == []
    await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode


async def test_children_exit_codes_come_from_a_pidfd_without_a_thread_per_child() -> None:
    use_pidfd_watcher()
    assert type(asyncio.get_child_watcher()).__name__ == "PidfdWatcher"
    assert await exit_code_of("/bin/sh", "-c", "exit 0") == 0
    assert await exit_code_of("/bin/sh", "-c", "exit 7") == 7
    assert await exit_code_of("/bin/sh", "-c", "kill -TERM $$") == -15


async def test_a_refused_pidfd_falls_back_to_a_thread_and_still_reaps(monkeypatch: pytest.MonkeyPatch) -> None:
    use_pidfd_watcher()

    def refused(pid: int, flags: int = 0) -> int:
        raise PermissionError(1, "Operation not permitted")  # what a seccomp profile without it answers

    monkeypatch.setattr(os, "pidfd_open", refused)
    # The child runs until its stdin closes: the thread waits for it meanwhile.
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", "read line; exit 3", stdin=asyncio.subprocess.PIPE, start_new_session=True
    )
    assert len(waiter_threads()) == 1
    await proc.communicate(b"go\n")
    assert proc.returncode == 3
