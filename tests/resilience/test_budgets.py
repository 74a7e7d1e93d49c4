"""Engagement budgets with an injected clock: concurrent scans, hosts per hour, masscan packets per second."""

from __future__ import annotations

import pytest
from support.engagements import FixedClock, engagement

from appliance.errors import ResourceExhaustedError
from appliance.policy.engagements import Engagement
from appliance.resilience.budgets import HOUR_SECONDS, EngagementBudgets


def red(**budget: int) -> Engagement:
    return Engagement.model_validate(engagement("red", ["alice"], budget=budget))


def refused(budgets: EngagementBudgets, spent: Engagement, **call: int) -> ResourceExhaustedError:
    with pytest.raises(ResourceExhaustedError) as caught:
        budgets.claim(spent, hosts=call.get("hosts", 1), rate=call.get("rate", 0), default_concurrent=4)
    assert caught.value.rule == "engagement_budget_exhausted"
    assert caught.value.recovery_suggestion
    return caught.value


def test_concurrent_scans_are_refused_at_the_limit_and_admitted_after_a_release() -> None:
    budgets, limited = EngagementBudgets(FixedClock()), red(concurrent_scans=2)
    first = budgets.claim(limited, hosts=1, rate=0, default_concurrent=4)
    budgets.claim(limited, hosts=1, rate=0, default_concurrent=4)

    error = refused(budgets, limited)
    budgets.release(first)

    assert "limit of 2 concurrent scans" in error.message
    budgets.claim(limited, hosts=1, rate=0, default_concurrent=4)


def test_without_its_own_limit_an_engagement_gets_the_limits_tables() -> None:
    budgets, plain = EngagementBudgets(FixedClock()), red()
    budgets.claim(plain, hosts=1, rate=0, default_concurrent=1)

    with pytest.raises(ResourceExhaustedError, match="limit of 1 concurrent"):
        budgets.claim(plain, hosts=1, rate=0, default_concurrent=1)


def test_hosts_per_hour_is_a_sliding_hour_that_a_release_does_not_refill() -> None:
    clock = FixedClock()
    budgets, limited = EngagementBudgets(clock), red(hosts_per_hour=300)
    budgets.release(budgets.claim(limited, hosts=256, rate=0, default_concurrent=4))
    clock.now += 600
    budgets.claim(limited, hosts=32, rate=0, default_concurrent=4)

    error = refused(budgets, limited, hosts=16)  # 288 + 16 > 300, though the first scan ended
    clock.now += HOUR_SECONDS - 600  # the first scan leaves the hour
    budgets.claim(limited, hosts=16, rate=0, default_concurrent=4)

    assert "288 of its 300 hosts per hour" in error.message
    assert "retry in about 3000 s" in error.recovery_suggestion
    assert budgets.hosts_last_hour("red") == 48


def test_masscan_rate_is_shared_by_the_engagements_running_calls() -> None:
    budgets, limited = EngagementBudgets(FixedClock()), red(masscan_max_rate=500)
    first = budgets.claim(limited, hosts=1, rate=400, default_concurrent=4)

    error = refused(budgets, limited, rate=200)
    budgets.claim(limited, hosts=1, rate=0, default_concurrent=4)  # nmap claims no rate
    budgets.release(first)
    budgets.claim(limited, hosts=1, rate=500, default_concurrent=4)

    assert "400 of 500 packets/s" in error.message


def test_budgets_of_two_engagements_are_apart() -> None:
    budgets = EngagementBudgets(FixedClock())
    budgets.claim(red(concurrent_scans=1), hosts=1, rate=0, default_concurrent=4)
    blue = Engagement.model_validate(engagement("blue", ["bob"], budget={"concurrent_scans": 1}))

    budgets.claim(blue, hosts=1, rate=0, default_concurrent=4)

    assert budgets.admitted("red") == budgets.admitted("blue") == 1
