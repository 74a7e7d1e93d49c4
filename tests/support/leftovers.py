"""What a killed container-test session left behind, removed by the next session.

Ryuk cannot run here (TESTCONTAINERS_RYUK_DISABLED=true), so the `finally` blocks are the only
clean-up, and a session killed mid-way (a CI timeout, a stopped machine) leaves its compose
projects in the engine. compose.yaml's `restart: unless-stopped` even brings them back with the
engine, and the fixed lab subnets they hold make every later session's compose fixtures fail
("already holds 10.77.0.0/24"). One container-test session at a time holds a lock; while it holds
it, whatever carries the tests' prefixes belongs to a session that is gone, and is removed.

Only the tests' own prefixes are touched: an operator's deployment (`scripts/up`, project
`mcp-scanner-appliance`) or anyone else's containers never match.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker

# The names the container tests give what they create: compose projects `mcp-it-<hex>` and
# `mcp-fleet-<hex>` (tests/integration/conftest.py), containers `mcp-it-<kind>-<hex>` (dockerlab).
TEST_PREFIX = re.compile(r"^mcp-(it|fleet)-")
PROJECT_LABEL = "com.docker.compose.project"
LOCK_PATH = Path(tempfile.gettempdir()) / "mcp-scanner-appliance-container-tests.lock"


class SessionBusy(RuntimeError):
    """Another container-test session holds the lock."""


@contextmanager
def session_lock(path: Path = LOCK_PATH) -> Iterator[None]:
    """Hold the container-test lock for the block; SessionBusy names the holder's pid."""
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise SessionBusy(
                f"another container-test session (pid {holder}) holds {path}: the sessions share fixed"
                " lab subnets, so wait for it to end (or stop it) and run again"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def reap(client: docker.DockerClient, prefix: re.Pattern[str] = TEST_PREFIX) -> list[str]:
    """Remove the containers, networks and volumes whose name (or compose project) `prefix`
    matches; call only with session_lock held. Returns what was removed, as `kind name` lines."""

    def is_leftover(name: str | None) -> bool:
        return name is not None and prefix.match(name) is not None

    removed: list[str] = []
    for container in client.containers.list(all=True):
        if is_leftover(container.name) or is_leftover(container.labels.get(PROJECT_LABEL)):
            container.remove(force=True, v=True)
            removed.append(f"container {container.name}")
    # Networks after containers: a network with an endpoint cannot be removed.
    for network in client.networks.list():
        labels = network.attrs.get("Labels") or {}
        if is_leftover(network.name) or is_leftover(labels.get(PROJECT_LABEL)):
            network.remove()
            removed.append(f"network {network.name}")
    for volume in client.volumes.list():
        labels = volume.attrs.get("Labels") or {}
        if is_leftover(labels.get(PROJECT_LABEL)):
            volume.remove(force=True)
            removed.append(f"volume {volume.name}")
    return removed
