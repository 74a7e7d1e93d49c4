"""Sharding's pure parts: the split of a block, which plans are sharded, the merge of shard records.

The fleet end to end (real nats-server, real nmap on loopback) is tests/fleet/test_sharding.py.
"""

from __future__ import annotations

import copy
import ipaddress
import itertools
import time
from typing import Any

import pytest

from appliance.errors import PolicyError
from appliance.fleet.shards import ShardEnd, final_state, fold, merge, merged_hosts, shard_blocks, shard_job, split
from appliance.jobs.model import Job, JobState
from appliance.policy.model import Policy, parse_policy
from appliance.policy.targets import CheckedTarget
from appliance.tools.base import ScanPlan

# --- split -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "shard_hosts", "count"),
    [
        ("10.0.0.0/24", 64, 4),
        ("10.0.0.0/24", 1, 256),
        ("10.0.0.0/16", 256, 256),
        ("10.0.0.0/27", 8, 4),
        ("10.0.0.0/28", 64, 1),  # no larger than a shard: itself
        ("10.0.0.5/32", 4, 1),
        ("fd00::/120", 16, 16),
    ],
)
def test_split_covers_the_block_exactly_with_aligned_blocks_of_the_shard_size(
    block: str, shard_hosts: int, count: int
) -> None:
    network = ipaddress.ip_network(block)
    shards = split(network, shard_hosts)
    assert len(shards) == count
    # Exact cover: adjacent, in order, from the first address to the last, no overlap, no gap.
    assert shards[0].network_address == network.network_address
    assert shards[-1].broadcast_address == network.broadcast_address
    for before, after in itertools.pairwise(shards):
        assert int(after.network_address) == int(before.broadcast_address) + 1
    assert sum(shard.num_addresses for shard in shards) == network.num_addresses
    for shard in shards:
        assert shard.num_addresses == min(shard_hosts, network.num_addresses)
        assert int(shard.network_address) % shard.num_addresses == 0  # CIDR-aligned
        assert shard.subnet_of(network)  # type: ignore[arg-type]


@pytest.mark.parametrize("shard_hosts", [0, 3, 48, 100])
def test_split_refuses_a_shard_size_that_is_not_a_power_of_two(shard_hosts: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        split(ipaddress.ip_network("10.0.0.0/24"), shard_hosts)


# --- the policy's threshold ----------------------------------------------------------------


def policy(fleet: dict[str, Any] | None = None) -> Policy:
    text = "version: 3\n" + ("" if fleet is None else "fleet: " + repr(fleet).replace("'", "") + "\n")
    return parse_policy(text)


@pytest.mark.parametrize(
    ("fleet", "problem"),
    [
        # unsafe
        ({"shard_above_hosts": 64, "shard_hosts": 48}, "power of two"),
        ({"shard_above_hosts": 64, "shard_hosts": 128}, "must not exceed shard_above_hosts"),
        ({"shard_above_hosts": 1}, "greater than or equal to 2"),
        ({"shard_above_hosts": 64, "shard_hosts": 0}, "greater than or equal to 1"),
        ({"shard_after": 64}, "Extra inputs are not permitted"),
    ],
)
def test_a_policy_with_a_bad_sharding_rule_does_not_load(fleet: dict[str, Any], problem: str) -> None:
    with pytest.raises(PolicyError, match=problem):
        policy(fleet)


def test_sharding_is_off_by_default() -> None:
    assert policy().fleet.shard_above_hosts is None


def plan_of(target: str, kind: str, hosts: int, tool: str = "nmap_scan") -> ScanPlan:
    checked = CheckedTarget(target, kind, target, None, (), hosts)  # type: ignore[arg-type]
    return ScanPlan(tool, checked, ("nmap", target), 60, {}, findings=lambda: None)  # type: ignore[arg-type, return-value]


def test_only_an_nmap_block_over_the_threshold_is_sharded() -> None:
    rules = policy({"shard_above_hosts": 64, "shard_hosts": 32})
    assert shard_blocks(plan_of("10.0.0.0/24", "cidr", 256), rules) == tuple(
        f"10.0.0.{start}/27" for start in range(0, 256, 32)
    )
    assert shard_blocks(plan_of("10.0.0.0/25", "cidr", 128), rules) == (
        "10.0.0.0/27",
        "10.0.0.32/27",
        "10.0.0.64/27",
        "10.0.0.96/27",
    )
    assert shard_blocks(plan_of("10.0.0.0/26", "cidr", 64), rules) == ()  # at the threshold: whole
    assert shard_blocks(plan_of("10.0.0.0/24", "cidr", 256, tool="masscan_scan"), rules) == ()
    assert shard_blocks(plan_of("10.0.0.5", "ip", 1), rules) == ()
    assert shard_blocks(plan_of("10.0.0.0/24", "cidr", 256), policy()) == ()  # threshold off


# --- merge ---------------------------------------------------------------------------------


def parent_job(blocks: list[str], now: float) -> Job:
    job = Job(
        scan_id="scan_000000000001aaaaaaaa",
        tool="nmap_scan",
        target="10.0.0.0/27",
        scanned_address="10.0.0.0/27",
        principal="alice",
        request={"target": "10.0.0.0/27", "ports": "80"},
        argv=["nmap", "-p", "80", "10.0.0.0/27"],
        state="queued",
        created_at=now,
        updated_at=now,
        request_id="rid-1",
        segment="seg-a",
        shards=[f"scan_00000000000{i}bbbbbbbb" for i in range(len(blocks))],
    )
    job.move("queued", now)
    return job


def ended(shard: Job, state: JobState, addresses: list[str], now: float) -> Job:
    shard.runner = "seg-a-1"
    if state in ("completed", "partial", "interrupted", "cancelled"):
        shard.result = {"hosts": [{"address": a, "status": "up", "ports": []} for a in addresses], "exit_code": 0}
    if state == "failed":
        shard.error = {"rule": "target_denied_policy", "message": "no", "scan_id": shard.scan_id}
    shard.move(state, now)
    return shard


def shards_of(parent: Job, now: float) -> dict[str, Job | None]:
    blocks = ["10.0.0.0/29", "10.0.0.8/29", "10.0.0.16/29", "10.0.0.24/29"]
    assert parent.shards is not None
    return {scan_id: shard_job(parent, blocks[i], scan_id, i, now) for i, scan_id in enumerate(parent.shards)}


def test_the_merged_result_is_the_union_of_the_shards_hosts_in_address_order() -> None:
    now = time.time()
    parent = parent_job(["a"] * 4, now)
    shards = shards_of(parent, now)
    addresses = [["10.0.0.3", "10.0.0.1"], ["10.0.0.9"], [], ["10.0.0.30", "10.0.0.24"]]
    # Each shard's own hosts out of order: the merge sorts the union, it does not trust the order.
    for shard, found in zip(list(shards.values()), addresses, strict=True):
        assert shard is not None
        ended(shard, "completed", found, now)
    assert merge(parent, shards, now + 1, 60)
    assert parent.state == "completed"
    assert parent.result is not None
    assert [h["address"] for h in parent.result["hosts"]] == [
        "10.0.0.1", "10.0.0.3", "10.0.0.9", "10.0.0.24", "10.0.0.30"
    ]  # fmt: skip
    assert (parent.result["target"], parent.result["partial"], parent.progress) == ("10.0.0.0/27", False, 100.0)
    assert parent.events[-1]["note"] == "merged from its shards: 4 completed"


def all_completed(now: float) -> tuple[Job, dict[str, Job | None]]:
    """A parent of four shards, each completed with one host (its block's first address)."""
    parent = parent_job(["a"] * 4, now)
    shards = shards_of(parent, now)
    for shard in shards.values():
        assert shard is not None
        ended(shard, "completed", [shard.target.split("/")[0]], now)
    return parent, shards


def test_merging_again_changes_nothing_and_two_merges_of_the_same_records_agree() -> None:
    now = time.time()
    parent, shards = all_completed(now)
    twin = copy.deepcopy(parent)
    assert merge(parent, shards, now + 1, 60)
    assert merge(twin, shards, now + 1, 60)
    assert parent.to_record() == twin.to_record()
    before = copy.deepcopy(parent.to_record())
    assert not merge(parent, shards, now + 2, 60)  # already merged: nothing to write
    assert parent.to_record() == before


def test_an_unfinished_parent_shows_its_shards_progress_and_findings_so_far() -> None:
    now = time.time()
    parent = parent_job(["a"] * 4, now)
    shards = shards_of(parent, now)
    assert not merge(parent, shards, now, 60)  # all queued: nothing to change
    first, second = list(shards.values())[:2]
    assert first is not None and second is not None
    ended(first, "completed", ["10.0.0.2"], now)
    second.move("running", now)
    second.progress = 50.0
    assert merge(parent, shards, now + 1, 60)
    assert (parent.state, parent.progress) == ("running", 37.5)  # (100 + 50 + 0 + 0) / 4
    assert parent.result is not None
    assert [h["address"] for h in parent.result["hosts"]] == ["10.0.0.2"]
    assert not merge(parent, shards, now + 2, 60)  # as merged


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        (["completed", "completed"], "completed"),
        (["failed", "failed"], "failed"),
        (["completed", "failed"], "partial"),
        (["completed", "interrupted"], "partial"),
        (["partial", "completed"], "partial"),
        (["cancelled", "completed"], "cancelled"),
        (["cancelled", "failed"], "cancelled"),
    ],
)
def test_the_parents_final_state(states: list[JobState], expected: JobState) -> None:
    assert final_state(states) == expected


def test_a_parent_whose_shards_all_failed_carries_the_first_shards_refusal() -> None:
    now = time.time()
    parent = parent_job(["a"] * 4, now)
    shards = shards_of(parent, now)
    for shard in shards.values():
        assert shard is not None
        ended(shard, "failed", [], now)
    assert merge(parent, shards, now + 1, 60)
    assert parent.state == "failed"
    assert parent.error is not None
    assert (parent.error["rule"], parent.error["scan_id"]) == ("target_denied_policy", parent.scan_id)


def test_a_missing_shard_waits_until_the_parent_is_old_then_counts_as_interrupted() -> None:
    now = time.time()
    parent = parent_job(["a"] * 4, now)
    shards = shards_of(parent, now)
    assert parent.shards is not None
    lost = parent.shards[3]
    shards[lost] = None  # a front that stopped before it wrote the last shard
    for shard in shards.values():
        if shard is not None:
            ended(shard, "completed", [shard.target.split("/")[0]], now)
    assert merge(parent, shards, now + 10, 60)  # young: the missing one may still come
    assert parent.state == "running"
    assert merge(parent, shards, now + 61, 60)
    assert parent.state == "partial"
    assert parent.result is not None
    assert parent.result["partial_reason"] == "shards_incomplete"
    assert len(merged_hosts([s for s in shards.values() if s is not None])) == 3


def test_a_shard_job_is_the_parents_request_on_its_block() -> None:
    now = time.time()
    parent = parent_job(["a"] * 4, now)
    assert parent.shards is not None
    shard = shard_job(parent, "10.0.0.8/29", parent.shards[1], 1, now)
    assert (shard.target, shard.request["target"], shard.argv[-1]) == ("10.0.0.8/29",) * 3
    assert shard.request["ports"] == "80"
    assert (shard.parent, shard.segment, shard.principal, shard.state) == (parent.scan_id, "seg-a", "alice", "queued")
    assert shard.events[-1]["note"] == f"shard 2 of 4 of {parent.scan_id}"


def test_folding_the_shards_one_by_one_in_any_order_ends_as_one_merge_does() -> None:
    now = time.time()
    parent, shards = all_completed(now)
    merged = copy.deepcopy(parent)
    assert merge(merged, shards, now + 1, 60)
    folded = copy.deepcopy(parent)
    ends = [ShardEnd.of(shard) for shard in shards.values() if shard is not None]
    for count, end in enumerate(reversed(ends), start=1):
        assert fold(folded, [end], now + 1)
        assert not fold(folded, [end], now + 1)  # the same end again: nothing changes
        assert len(folded.result["hosts"] if folded.result else []) == count
        if count < len(ends):
            assert (folded.state, folded.progress) == ("running", 25.0 * count)
    assert folded.state == merged.state == "completed"
    assert folded.result == merged.result
    assert set(folded.merged or {}) == set(merged.merged or {}) == set(parent.shards or ())
