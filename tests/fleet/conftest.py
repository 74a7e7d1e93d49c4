"""The fleet tests' in-process fleet (tests/support/fleet.py) on the session's nats-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.bus_security import SecuredBus, secured_nats
from support.fleet import FleetLab, FleetNames
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


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[SecuredBus]:
    """A nats-server of the test's own with the deployment's users, permissions and TLS (starts
    in milliseconds): no test sees another's jobs or keys."""
    with secured_nats(tmp_path / "bus", FleetNames()) as bus:
        yield bus


@pytest.fixture
def lab(secured: SecuredBus, tmp_path: Path) -> Iterator[FleetLab]:
    """A fleet on the secured server (its names are the ones the users were written for); a
    front first: it creates the stream and buckets, which segments may only open."""
    fleet = FleetLab(secured.url, tmp_path, names=secured.names, credentials=secured.credentials)
    yield fleet
    fleet.close()
