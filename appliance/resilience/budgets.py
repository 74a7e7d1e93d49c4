"""Engagement budgets: hosts per hour, masscan packets per second and concurrent scans, per engagement.

A call claims its share when it is admitted (after every check, before its job exists) and the
job gives back its rate and its concurrency place when it ends, however it ends. Hosts scanned
stay counted for an hour from the admission: a cancelled scan has sent its packets already.
Refusals say which budget is spent and when there is room again.

Counted in this process (a restart starts them again); a fleet counts them in its key-value
bucket instead, reserved at the front (appliance.fleet.budgets).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from appliance.errors import ResourceExhaustedError
from appliance.policy.engagement_checks import Clock
from appliance.policy.engagements import Engagement

HOUR_SECONDS = 3600.0


@dataclass(frozen=True)
class Claim:
    """What one admitted call holds until its job ends."""

    engagement: str
    rate: int
    scan_id: str = ""  # the job holding it (the fleet's budgets keep a place per job)


class Budgets(Protocol):
    """Where engagement budgets are counted: this process (EngagementBudgets) or the fleet's
    key-value bucket (appliance.fleet.budgets, reserved at the front)."""

    def claim(
        self, engagement: Engagement, *, hosts: int, rate: int, default_concurrent: int, scan_id: str = ""
    ) -> Claim: ...

    def adopted(
        self, engagement: Engagement, *, hosts: int, rate: int, default_concurrent: int, scan_id: str
    ) -> Claim: ...

    def release(self, claim: Claim) -> None: ...

    def forget(self, engagement: str, scan_id: str) -> None:
        """A job refused before it held anything here: give back a place held for it elsewhere."""


@dataclass(frozen=True)
class Spent:
    """What an engagement holds when a call asks for more."""

    admitted: int  # scans queued or running
    hosts_last_hour: int
    oldest_at: float | None  # when the oldest of those hosts was admitted
    rate_in_use: int  # masscan packets/s of its running calls


def check_room(
    engagement: Engagement, spent: Spent, *, hosts: int, rate: int, default_concurrent: int, now: float
) -> None:
    """Refuse (`engagement_budget_exhausted`, naming the budget and when there is room) a call
    that would take the engagement past a budget; one rule for both places budgets are counted."""
    budget = engagement.budget
    concurrent = budget.concurrent_scans or default_concurrent
    if spent.admitted >= concurrent:
        raise _spent(
            f"{spent.admitted} scans are queued or running, its limit of {concurrent} concurrent scans",
            engagement,
            "Wait for one of the engagement's scans to finish (get_scan), or cancel one.",
        )
    if budget.hosts_per_hour is not None:
        used = spent.hosts_last_hour
        if used + hosts > budget.hosts_per_hour:
            oldest = spent.oldest_at if used and spent.oldest_at is not None else now
            wait = max(0, math.ceil(oldest + HOUR_SECONDS - now))
            raise _spent(
                f"{used} of its {budget.hosts_per_hour} hosts per hour are spent; this scan covers {hosts} more",
                engagement,
                f"Scan a smaller block, or retry in about {wait} s when earlier scans leave the hour.",
            )
    if rate and budget.masscan_max_rate is not None and spent.rate_in_use + rate > budget.masscan_max_rate:
        raise _spent(
            f"its masscan calls use {spent.rate_in_use} of {budget.masscan_max_rate} packets/s; {rate} more would "
            "exceed it",
            engagement,
            "Ask for a lower rate, or wait for the engagement's masscan calls to finish.",
        )


def _spent(what: str, engagement: Engagement, recovery: str) -> ResourceExhaustedError:
    return ResourceExhaustedError(
        f"engagement {engagement.name}: {what}",
        rule="engagement_budget_exhausted",
        recovery_suggestion=recovery,
    )


class EngagementBudgets:
    """Counters per engagement name, kept across policy reloads (a reload does not refill them)."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._hosts: dict[str, deque[tuple[float, int]]] = {}
        self._admitted: dict[str, int] = {}
        self._rate: dict[str, int] = {}

    def hosts_last_hour(self, name: str) -> int:
        entries = self._hosts.get(name)
        if entries is None:
            return 0
        cutoff = self._clock() - HOUR_SECONDS
        while entries and entries[0][0] <= cutoff:
            entries.popleft()
        return sum(hosts for _, hosts in entries)

    def admitted(self, name: str) -> int:
        return self._admitted.get(name, 0)

    def claim(
        self, engagement: Engagement, *, hosts: int, rate: int, default_concurrent: int, scan_id: str = ""
    ) -> Claim:
        """Admit one call of `hosts` addresses claiming `rate` masscan packets/s, or refuse it
        (`scan_id` is for the fleet's budgets, which hold a place per job)."""
        name = engagement.name
        entries = self._hosts.get(name)
        check_room(
            engagement,
            Spent(
                admitted=self.admitted(name),
                hosts_last_hour=self.hosts_last_hour(name),
                oldest_at=entries[0][0] if entries else None,
                rate_in_use=self._rate.get(name, 0),
            ),
            hosts=hosts,
            rate=rate,
            default_concurrent=default_concurrent,
            now=self._clock(),
        )
        self._admitted[name] = self.admitted(name) + 1
        self._hosts.setdefault(name, deque()).append((self._clock(), hosts))
        if rate:
            self._rate[name] = self._rate.get(name, 0) + rate
        return Claim(name, rate, scan_id)

    def adopted(self, engagement: Engagement, *, hosts: int, rate: int, default_concurrent: int, scan_id: str) -> Claim:
        """A fleet segment's start of a job a front admitted: with budgets of this process alone
        (a segment not wired to the fleet's budgets), it claims like a call."""
        return self.claim(engagement, hosts=hosts, rate=rate, default_concurrent=default_concurrent, scan_id=scan_id)

    def forget(self, engagement: str, scan_id: str) -> None:
        """Nothing to give back: this process counts only what it claimed itself."""

    def release(self, claim: Claim) -> None:
        """The job ended: its concurrency place and its rate are free again (its hosts stay counted)."""
        self._admitted[claim.engagement] -= 1
        if claim.rate:
            self._rate[claim.engagement] -= claim.rate
