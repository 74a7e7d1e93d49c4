"""Sharding a large nmap block in a fleet: split it, one job per shard, one merged result.

A front splits an nmap CIDR block with more addresses than the policy's
`fleet.shard_above_hosts` into CIDR-aligned shards of `fleet.shard_hosts` addresses. The job the
caller sees (the *parent*) runs nowhere: its shards are ordinary jobs of the same segment, each
queued on `jobs.<segment>`, claimed and fully re-checked by whichever appliance of the segment is
free (`ScanService.adopt`), so shards run in parallel and a forged shard is refused like any job.

The parent's state and result are a function of its shards' records alone (`merge`), written by
compare-and-set: by the appliance that ends a shard (each writes its shard's final record before
it reads its siblings, so of two shards ending together at least one sees both ended) and, for
races and crashes, by the segment's heartbeat sweep. Merging again gives the same record.

No NATS here: the store is passed in (a fleet role's JetStream store).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from appliance.jobs.model import FINISHED, Job, JobState
from appliance.jobs.views import result_base
from appliance.policy.model import Policy
from appliance.policy.targets import IPNetwork
from appliance.results import NmapResult
from appliance.tools.base import ScanPlan

if TYPE_CHECKING:
    from appliance.jobs.jetstream import JetStreamJobStore

# The only tool sharded: nmap's per-host results are independent, so their union is the block's.
SHARDED_TOOL = "nmap_scan"


def split(network: IPNetwork, shard_hosts: int) -> list[IPNetwork]:
    """CIDR-aligned blocks of `shard_hosts` addresses (a power of two; the policy checks it) that
    cover `network` exactly, in address order; `network` itself when it is no larger. Does not
    check scope: each shard is checked as a job by the segment that runs it."""
    if shard_hosts < 1 or shard_hosts & (shard_hosts - 1):
        raise ValueError(f"shard_hosts must be a power of two, not {shard_hosts}")
    prefix = max(network.prefixlen, network.max_prefixlen - (shard_hosts.bit_length() - 1))
    return list(network.subnets(new_prefix=prefix))


def shard_blocks(plan: ScanPlan, policy: Policy) -> tuple[str, ...]:
    """The shards a front splits a checked plan into; () for a plan it runs whole (threshold
    unset, not nmap, not a block, or a block no larger than the threshold)."""
    rules = policy.fleet
    if rules.shard_above_hosts is None or plan.tool != SHARDED_TOOL or plan.target.kind != "cidr":
        return ()
    if plan.target.host_count <= rules.shard_above_hosts:
        return ()
    return tuple(str(block) for block in split(ipaddress.ip_network(plan.target.scan_arg), rules.shard_hosts))


def shard_job(parent: Job, block: str, scan_id: str, index: int, now: float) -> Job:
    """The job of one shard: the parent's request with the shard's block as its target. Its argv
    is the parent's with the block in the target's place (nmap's argv ends with its target); the
    segment plans and checks it again from the request, and what it runs is what it records."""
    assert parent.shards is not None
    assert parent.argv[-1] == parent.scanned_address
    job = Job(
        scan_id=scan_id,
        tool=parent.tool,
        target=block,
        scanned_address=block,
        principal=parent.principal,
        request={**parent.request, "target": block},
        argv=[*parent.argv[:-1], block],
        state="queued",
        created_at=now,
        updated_at=now,
        request_id=parent.request_id,
        engagement=parent.engagement,
        segment=parent.segment,
        parent=parent.scan_id,
        caller=parent.caller,
    )
    job.move("queued", now, f"shard {index + 1} of {len(parent.shards)} of {parent.scan_id}")
    return job


def _address_key(host: Mapping[str, Any]) -> tuple[int, int]:
    address = ipaddress.ip_address(str(host["address"]))
    return address.version, int(address)


def merged_hosts(shards: list[Job]) -> list[dict[str, Any]]:
    """Every host of every shard's result, in address order (as nmap reports one block's)."""
    hosts = [host for shard in shards if shard.result is not None for host in shard.result.get("hosts", [])]
    return sorted(hosts, key=_address_key)


def final_state(states: list[JobState]) -> JobState:
    """The parent's state once every shard ended: `completed` when all completed; `failed` when
    all failed (nothing was scanned); `cancelled` when one was cancelled; else `partial` (some
    shards partial, failed or interrupted: the others' hosts are kept)."""
    if all(state == "completed" for state in states):
        return "completed"
    if all(state == "failed" for state in states):
        return "failed"
    if "cancelled" in states:
        return "cancelled"
    return "partial"


def merge(parent: Job, shards: Mapping[str, Job | None], now: float, lost_after_seconds: float) -> bool:
    """Bring `parent` up to date with its shards' records; False when nothing changes (it is
    already finished, or as merged). A shard whose record is missing counts as queued until the
    parent is `lost_after_seconds` old (its front may still be writing it), then as interrupted
    (a front that crashed before it wrote it, or an operator's purge)."""
    if parent.finished or not parent.shards:
        return False
    lost = now - parent.created_at > lost_after_seconds
    states: list[JobState] = []
    progress = 0.0
    present: list[Job] = []
    for scan_id in parent.shards:
        shard = shards.get(scan_id)
        if shard is None:
            states.append("interrupted" if lost else "queued")
            progress += 100.0 if lost else 0.0
            continue
        present.append(shard)
        states.append(shard.state)
        progress += 100.0 if shard.finished else shard.progress or 0.0
    progress = round(progress / len(parent.shards), 1)
    ended = all(state in FINISHED for state in states)
    state = final_state(states) if ended else parent.state
    result = _result(parent, present, state if ended else None, now)
    if not ended:
        started = parent.state == "queued" and any(state != "queued" for state in states)
        unchanged = result == parent.result or (parent.result is None and not result["hosts"])
        if not started and progress == (parent.progress or 0.0) and unchanged:
            return False
        if started:
            parent.move("running", now, "its first shard started")
        parent.progress, parent.result, parent.updated_at = progress, result, now
        return True
    parent.result = result
    parent.progress = 100.0 if state in ("completed", "partial") else progress
    if state == "failed":
        # The first shard's error says why (every shard failed; a lost one has none).
        errors = [shard.error for shard in present if shard.error is not None]
        parent.error = {**errors[0], "scan_id": parent.scan_id} if errors else None
    counts = {name: states.count(name) for name in sorted(set(states))}
    parent.move(state, now, "merged from its shards: " + ", ".join(f"{n} {name}" for name, n in counts.items()))
    return True


def _result(parent: Job, shards: list[Job], state: JobState | None, now: float) -> dict[str, Any]:
    """The parent's result: its own request's fields and the union of its shards' hosts; once
    ended (`state`), whether it is partial and how long it took."""
    fields = result_base(parent, NmapResult)
    ended: dict[str, Any] = {}
    if state is not None:
        codes = [shard.result.get("exit_code") for shard in shards if shard.result is not None]
        ended = {
            "exit_code": next((code for code in codes if code not in (0, None)), 0 if codes else None),
            "duration_seconds": round(max(now - parent.created_at, 0.0), 3),
            "partial": state == "partial",
            "partial_reason": "shards_incomplete" if state == "partial" else None,
        }
    report = NmapResult(**fields, **ended, hosts=merged_hosts(shards))
    return report.model_dump(mode="json")


def merge_parent(store: JetStreamJobStore, parent_id: str, now: float, lost_after_seconds: float) -> Job | None:
    """Merge the parent's shards into its record by compare-and-set (a conflicting write is read
    again and merged again); the record as written, or None when there was nothing to change."""
    parent = store.get(parent_id)
    if parent is None or parent.finished or not parent.shards:
        return None
    shards = store.get_many(parent.shards)
    return store.update(parent_id, lambda job: merge(job, shards, now, lost_after_seconds))
