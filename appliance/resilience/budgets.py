"""Engagement budgets: hosts per hour, masscan packets per second and concurrent scans, per engagement.

A call claims its share when it is admitted (after every check, before its job exists) and the
job gives back its rate and its concurrency place when it ends, however it ends. Hosts scanned
stay counted for an hour from the admission: a cancelled scan has sent its packets already.
Refusals say which budget is spent and when there is room again.

Not covered: budgets across appliances (each process counts its own), and across restarts.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

from appliance.errors import ResourceExhaustedError
from appliance.policy.engagement_checks import Clock
from appliance.policy.engagements import Engagement

HOUR_SECONDS = 3600.0


@dataclass(frozen=True)
class Claim:
    """What one admitted call holds until its job ends."""

    engagement: str
    rate: int


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

    def claim(self, engagement: Engagement, *, hosts: int, rate: int, default_concurrent: int) -> Claim:
        """Admit one call of `hosts` addresses claiming `rate` masscan packets/s, or refuse it."""
        name, budget = engagement.name, engagement.budget
        concurrent = budget.concurrent_scans or default_concurrent
        if self.admitted(name) >= concurrent:
            raise _spent(
                f"{self.admitted(name)} scans are queued or running, its limit of {concurrent} concurrent scans",
                engagement,
                "Wait for one of the engagement's scans to finish (get_scan), or cancel one.",
            )
        if budget.hosts_per_hour is not None:
            used = self.hosts_last_hour(name)
            if used + hosts > budget.hosts_per_hour:
                oldest = self._hosts[name][0][0] if used else self._clock()
                wait = max(0, math.ceil(oldest + HOUR_SECONDS - self._clock()))
                raise _spent(
                    f"{used} of its {budget.hosts_per_hour} hosts per hour are spent; this scan covers {hosts} more",
                    engagement,
                    f"Scan a smaller block, or retry in about {wait} s when earlier scans leave the hour.",
                )
        if rate and budget.masscan_max_rate is not None:
            in_use = self._rate.get(name, 0)
            if in_use + rate > budget.masscan_max_rate:
                raise _spent(
                    f"its masscan calls use {in_use} of {budget.masscan_max_rate} packets/s; {rate} more would "
                    "exceed it",
                    engagement,
                    "Ask for a lower rate, or wait for the engagement's masscan calls to finish.",
                )
        self._admitted[name] = self.admitted(name) + 1
        self._hosts.setdefault(name, deque()).append((self._clock(), hosts))
        if rate:
            self._rate[name] = self._rate.get(name, 0) + rate
        return Claim(name, rate)

    def release(self, claim: Claim) -> None:
        """The job ended: its concurrency place and its rate are free again (its hosts stay counted)."""
        self._admitted[claim.engagement] -= 1
        if claim.rate:
            self._rate[claim.engagement] -= claim.rate
