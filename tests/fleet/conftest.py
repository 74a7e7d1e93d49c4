"""The fleet tests' in-process fleet (tests/support/fleet.py) on the session's nats-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fleet import FleetLab
from support.nats import NatsServer, nats_server


@pytest.fixture
def fleet(nats: NatsServer, tmp_path: Path) -> Iterator[FleetLab]:
    lab = FleetLab(nats.url, tmp_path)
    yield lab
    lab.close()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A server of this test's own, for `appliance serve` roles (they use the default bucket and
    stream names, which tests sharing the session's server would collide on)."""
    with nats_server(tmp_path / "nats") as server:
        yield server
