"""Engagement budgets of a fleet: reserved at the front, in the job bucket, for every appliance.

A standalone appliance counts its engagements' budgets in memory (appliance.resilience.budgets).
In a fleet every front admits calls and every segment appliance runs them, so the count lives in
one key per engagement, `b.<engagement hex>`, of the job bucket, changed by compare-and-set:

- a front's admission (`claim`) reads the key, applies the same rule as a standalone appliance
  (`check_room`), and writes the new count only if nobody wrote it since; a lost race is read
  and checked again. The job's place is held under its scan_id.
- the segment that starts the job (`adopted`) finds its place held, else refuses it
  (`engagement_budget_not_reserved`): a job put on the bus without a front's admission never
  runs on an engagement's account.
- the job's end (`release`, however it ends, or `forget` when its segment refused it) gives the
  place and its masscan rate back; hosts stay counted for the hour. A place whose release was
  lost (an appliance killed mid-scan) is given back by the next admission that finds the
  engagement full: places of jobs that have ended or are gone are dropped first.

Hosts are kept per minute (at most sixty entries an hour, each counted until an hour after the
last admission it holds, so a minute's hosts never leave early): the value stays small however
many scans an hour an engagement runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import ApplianceError, PermissionDeniedError
from appliance.jobs.jetstream import JetStreamJobStore, hex_part
from appliance.jobs.model import Job
from appliance.policy.engagements import Engagement
from appliance.resilience.budgets import HOUR_SECONDS, Claim, Spent, check_room

# Hosts admitted within this long of an entry's first admission join that entry.
ENTRY_SECONDS = 60.0


@dataclass
class Usage:
    """One engagement's key: hosts per minute ([first, last, hosts]) and the places held."""

    hosts: list[list[float]] = field(default_factory=list)
    held: dict[str, int] = field(default_factory=dict)  # scan_id -> masscan rate it holds

    @classmethod
    def parse(cls, value: bytes | None) -> Usage:
        if not value:
            return cls()
        body: dict[str, Any] = json.loads(value)
        return cls(hosts=[list(entry) for entry in body.get("hosts", [])], held=dict(body.get("held", {})))

    def encode(self) -> bytes:
        return json.dumps({"hosts": self.hosts, "held": self.held}, sort_keys=True).encode()

    def prune(self, now: float) -> None:
        self.hosts = [entry for entry in self.hosts if entry[1] + HOUR_SECONDS > now]

    def spent(self) -> Spent:
        return Spent(
            admitted=len(self.held),
            hosts_last_hour=int(sum(entry[2] for entry in self.hosts)),
            oldest_at=self.hosts[0][1] if self.hosts else None,
            rate_in_use=sum(self.held.values()),
        )

    def add(self, scan_id: str, hosts: int, rate: int, now: float) -> None:
        self.held[scan_id] = rate
        if self.hosts and now - self.hosts[-1][0] < ENTRY_SECONDS:
            self.hosts[-1][1] = now
            self.hosts[-1][2] += hosts
        else:
            self.hosts.append([now, now, hosts])


def _not_reserved(engagement: Engagement, scan_id: str) -> PermissionDeniedError:
    return PermissionDeniedError(
        f"job {scan_id} holds no place in engagement {engagement.name}'s budget: no front admitted it",
        rule="engagement_budget_not_reserved",
        recovery_suggestion="Start scans through a front (its admission reserves the budget); a job put on the "
        "bus directly is never run on an engagement's account.",
    )


class FleetBudgets:
    """The `Budgets` of a fleet appliance (front or segment), on the job store's bucket."""

    def __init__(self, store: JetStreamJobStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    @staticmethod
    def key(engagement: str) -> str:
        return f"b.{hex_part(engagement)}"

    def usage(self, engagement: str) -> Usage:
        return Usage.parse(self._store.read_value(self.key(engagement)))

    def claim(
        self, engagement: Engagement, *, hosts: int, rate: int, default_concurrent: int, scan_id: str = ""
    ) -> Claim:
        if not scan_id:
            raise ValueError("a fleet's budget holds a place per job: scan_id is needed")

        def check(usage: Usage, now: float) -> None:
            spent = usage.spent()
            check_room(engagement, spent, hosts=hosts, rate=rate, default_concurrent=default_concurrent, now=now)

        async def admit(value: bytes | None) -> bytes:
            usage, now = Usage.parse(value), self._clock()
            usage.prune(now)
            try:
                check(usage, now)
            except ApplianceError:
                if not await self._drop_ended(usage):
                    raise
                check(usage, now)
            usage.add(scan_id, hosts, rate, now)
            return usage.encode()

        self._store.change_value(self.key(engagement.name), admit, f"reserve engagement {engagement.name}'s budget")
        return Claim(engagement.name, rate, scan_id)

    def adopted(self, engagement: Engagement, *, hosts: int, rate: int, default_concurrent: int, scan_id: str) -> Claim:
        held = self.usage(engagement.name).held
        if scan_id not in held:
            raise _not_reserved(engagement, scan_id)
        return Claim(engagement.name, held[scan_id], scan_id)

    def release(self, claim: Claim) -> None:
        async def give_back(value: bytes | None) -> bytes | None:
            usage = Usage.parse(value)
            if usage.held.pop(claim.scan_id, None) is None:
                return None  # given back already (or dropped as ended)
            return usage.encode()

        what = f"release engagement {claim.engagement}'s budget"
        self._store.change_value(self.key(claim.engagement), give_back, what)

    def forget(self, engagement: str, scan_id: str) -> None:
        """A job its segment refused: the place the front reserved for it is given back."""
        self.release(Claim(engagement, 0, scan_id))

    async def _drop_ended(self, usage: Usage) -> bool:
        """Drop the places of jobs that ended or are gone (their release was lost); True when
        one was dropped."""
        ended = [scan_id for scan_id in usage.held if _ended(await self._store.read_job(scan_id))]
        for scan_id in ended:
            del usage.held[scan_id]
        return bool(ended)


def _ended(job: Job | None) -> bool:
    return job is None or job.finished
