"""masscan_scan's argv with masscan's own sharding (--shard x/y --seed n): planned only, never run.

The fleet shards nmap blocks itself (tests/fleet/test_sharding.py); masscan's --shard splits
one sweep by packet index, and the on-link rule (one MAC per call) still holds for a shard.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from support import write_policy

from appliance.config import Settings
from appliance.errors import ValidationError
from appliance.policy.netinfo import NetworkFacts
from appliance.policy.store import PolicyStore
from appliance.tools import masscan
from appliance.tools.base import PlanContext
from appliance.tools.masscan import MasscanRequest

pytestmark = pytest.mark.anyio

# 10.20.0.0/24 is directly attached (eth1); 10.30.0.0/24 is routed.
ONLINK = NetworkFacts(interfaces=(("eth1", ipaddress.IPv4Network("10.20.0.0/24")),))


def context(tmp_path: Path) -> PlanContext:
    policy = write_policy(tmp_path, {"scope": {"allow_networks": ["10.20.0.0/24", "10.30.0.0/24"]}})
    store = PolicyStore(policy, facts=lambda: ONLINK)
    snapshot = store.current
    settings = Settings(policy_path=policy, privilege_mode="raw")  # type: ignore[call-arg]
    return PlanContext(snapshot.policy, snapshot.scope, None, settings, ONLINK)


async def argv(tmp_path: Path, target: str, *extra: str, **request: Any) -> list[str]:
    plan = await masscan.plan(
        MasscanRequest(target=target, ports="80", extra_args=list(extra), **request), context(tmp_path)
    )
    return list(plan.argv)


async def test_a_shard_of_a_routed_block_is_passed_to_masscan_with_its_seed(tmp_path: Path) -> None:
    first = await argv(tmp_path, "10.30.0.0/24", "--shard", "1/2", "--seed", "7")
    second = await argv(tmp_path, "10.30.0.0/24", "--shard=2/2", "--seed=7")
    assert first[1:3] == ["10.30.0.0/24", "-p"]
    assert first[first.index("--shard") : first.index("--shard") + 4] == ["--shard", "1/2", "--seed", "7"]
    assert second[second.index("--shard") : second.index("--shard") + 4] == ["--shard", "2/2", "--seed", "7"]
    # Everything else is the same sweep: the same target, ports, rate and output.
    assert [a for a in first if a not in ("1/2",)] == [a for a in second if a not in ("2/2",)]
    assert first[-2:] == ["-oJ", "-"]


async def test_a_shard_without_a_seed_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as refused:
        await argv(tmp_path, "10.30.0.0/24", "--shard", "1/2")
    assert refused.value.rule == "masscan_shard_needs_seed"
    assert "--seed" in refused.value.recovery_suggestion


async def test_a_shard_does_not_open_an_onlink_block(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as refused:
        await argv(tmp_path, "10.20.0.0/28", "--shard", "1/2", "--seed", "7")
    assert refused.value.rule == "masscan_onlink_block"


async def test_a_shard_of_one_onlink_host_keeps_the_server_derived_link_options(tmp_path: Path) -> None:
    planned = await argv(tmp_path, "10.20.0.5", "--shard", "1/2", "--seed", "7")
    assert planned[planned.index("--adapter") : planned.index("--adapter") + 4] == [
        "--adapter",
        "eth1",
        "--router-ip",
        "10.20.0.5",
    ]
    assert "--shard" in planned
