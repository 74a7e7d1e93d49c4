"""Engagements for tests: policy data of one engagement, and the wall clock a test holds still.

Every window here is in Europe/Berlin (a zone with an offset, so a UTC mix-up shows): 1 December
2026, 09:00 to 18:00 local time (08:00 to 17:00 UTC).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

ZONE = "Europe/Berlin"
WINDOW = {"not_before": "2026-12-01T09:00", "not_after": "2026-12-01T18:00", "timezone": ZONE}
OPENS = datetime(2026, 12, 1, 9, 0, tzinfo=ZoneInfo(ZONE)).timestamp()
CLOSES = datetime(2026, 12, 1, 18, 0, tzinfo=ZoneInfo(ZONE)).timestamp()
DURING = OPENS + 3600.0


def engagement(
    name: str,
    subjects: Sequence[str] = (),
    *,
    networks: Sequence[str] = ("10.20.1.0/24",),
    denied: Sequence[str] = (),
    suffixes: Sequence[str] = (),
    tools: dict[str, Any] | None = None,
    budget: dict[str, Any] | None = None,
    claims: dict[str, list[str]] | None = None,
    window: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One engagement as policy data: by default nmap_scan with any option, 10.20.1.0/24, WINDOW."""
    principals: dict[str, Any] = {"subjects": list(subjects)}
    if claims:
        principals["claims"] = claims
    return {
        "name": name,
        "principals": principals,
        "scope": {
            "allow_networks": list(networks),
            "deny_networks": list(denied),
            "allow_hostname_suffixes": list(suffixes),
        },
        "window": window or dict(WINDOW),
        "tools": {"nmap_scan": {}} if tools is None else tools,
        "budget": budget or {},
    }


def with_engagements(*engagements: dict[str, Any]) -> dict[str, Any]:
    """Policy overrides (for lab_service or write_policy) that add these engagements."""
    return {"version": 3, "engagements": list(engagements)}


def open_window() -> dict[str, str]:
    """A window around the real clock (for appliances that run on it: the fleet's, in processes)."""
    now = datetime.now(UTC)
    stamp = "%Y-%m-%dT%H:%M"
    return {
        "not_before": (now - timedelta(days=1)).strftime(stamp),
        "not_after": (now + timedelta(days=1)).strftime(stamp),
        "timezone": "UTC",
    }


class FixedClock:
    """A wall clock that stands at `now` until the test moves it."""

    def __init__(self, now: float = DURING) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
