"""The spy runner: what refusal tests give ScanService instead of the real runner.

A refusal must happen before any process starts, so a test of one must not depend on the check
under test to keep a real scanner from running. The spy records the argv it was handed and fails
the test; `calls` stays empty when the refusal came first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from appliance.runner import RunLimits, RunResult


class SpyRunner:
    """A runner that must never be called: it records the argv and fails the test."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, argv: Sequence[str], limits: RunLimits, **kwargs: Any) -> RunResult:
        self.calls.append(list(argv))
        raise AssertionError(f"a scanner process would have started: {list(argv)}")
