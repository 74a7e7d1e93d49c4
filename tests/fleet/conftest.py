"""The fleet tests' in-process fleet (tests/support/fleet.py) on the session's nats-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fleet import FleetLab
from support.nats import NatsServer


@pytest.fixture
def fleet(nats: NatsServer, tmp_path: Path) -> Iterator[FleetLab]:
    lab = FleetLab(nats.url, tmp_path)
    yield lab
    lab.close()
