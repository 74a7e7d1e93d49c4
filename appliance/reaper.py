"""Reap orphaned grandchildren when the appliance runs as PID 1 (no init in the container).

A scanner's descendant that outlives it is re-parented to PID 1; if PID 1 never waits for it,
it stays a zombie. The image runs tini, which does this; this reaper covers a run without it.
Direct children are asyncio's to reap (a stolen exit status would become 255), so the reaper
only takes zombies that no runner is waiting for, and only once it has seen them twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Set
from pathlib import Path

from appliance.runner import LIVE_CHILDREN

log = logging.getLogger(__name__)

# Orphans may wait this long to be reaped; a runner registers its child well within it.
REAP_INTERVAL_SECONDS = 2.0


def zombie_children(proc: Path = Path("/proc")) -> set[int]:
    """Pids of this process's children that have exited and not been waited for."""
    me = os.getpid()
    found: set[int] = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited and reaped while we looked
        # "pid (comm) state ppid ...": comm may hold spaces or parentheses, so split after the last ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 2 and fields[0] == "Z" and int(fields[1]) == me:
            found.add(int(entry.name))
    return found


def reap(candidates: Set[int], known: Set[int]) -> list[int]:
    reaped = []
    for pid in candidates - known:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped.append(pid)
        except ChildProcessError:
            pass  # reaped by someone else meanwhile
    return reaped


async def reap_orphans_forever(interval: float = REAP_INTERVAL_SECONDS) -> None:
    seen_before: set[int] = set()
    while True:
        await asyncio.sleep(interval)
        now = zombie_children() - LIVE_CHILDREN
        reaped = reap(now & seen_before, LIVE_CHILDREN)
        if reaped:
            log.info("reaped orphaned processes", extra={"pids": reaped})
        seen_before = now - set(reaped)
