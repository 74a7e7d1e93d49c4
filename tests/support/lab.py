"""A ScanService on the lab policy for tests (built by conftest's `lab_service` fixture), and the
dict resolver it uses: what a test inspects after a call, in one place."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from appliance.service import ScanService


class FakeResolver:
    """A dict-backed stand-in for the lab DNS: never sends a query, records every name it is asked."""

    def __init__(self, answers: Mapping[str, Sequence[str]] | None = None) -> None:
        self.answers = {name: list(addresses) for name, addresses in (answers or {}).items()}
        self.calls: list[str] = []

    async def __call__(self, name: str) -> list[str]:
        self.calls.append(name)
        return list(self.answers.get(name, []))


def audit_records(text: str) -> list[dict[str, Any]]:
    """Audit lines of a stderr-style sink without the `chain_start` line that opens its chain."""
    lines = [json.loads(line) for line in text.splitlines()]
    return [line for line in lines if line.get("event") != "chain_start"]


@dataclass
class LabService:
    """A ScanService on the lab policy and facts, with what a test inspects after a call."""

    service: ScanService
    audit: io.StringIO
    registry: CollectorRegistry
    resolver: FakeResolver
    runner: Any

    def audit_lines(self) -> list[dict[str, Any]]:
        """The audit lines after the chain's opening line (tests/audit checks the chain)."""
        return audit_records(self.audit.getvalue())

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value
