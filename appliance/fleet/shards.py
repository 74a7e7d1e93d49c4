"""Sharding a large nmap block in a fleet: split it, one job per shard, one merged result.

A front splits an nmap CIDR block with more addresses than the policy's
`fleet.shard_above_hosts` into CIDR-aligned shards of `fleet.shard_hosts` addresses. The job the
caller sees (the *parent*) runs nowhere: its shards are ordinary jobs of the same segment, each
queued on `jobs.<segment>`, claimed and fully re-checked by whichever appliance of the segment is
free (`ScanService.adopt`), so shards run in parallel and a forged shard is refused like any job.

The parent's state and result are its shards' ends folded in, each once (`fold`; the parent's
`merged` names the shards folded), by compare-and-set: by the appliance that ends a shard (one
read of the parent and one write, whatever the number of shards: a /16 in /26s is 1,024 folds,
not a million reads) and, for a fold lost to a crash or a store outage, by the segment's
heartbeat sweep (`merge`), which also sets the progress and reads only the shards that are
neither folded nor in its listing of unfinished jobs. Folding again changes nothing.

No NATS here: the store is passed in (a fleet role's JetStream store).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance.jobs.model import Job, JobState
from appliance.jobs.views import result_base
from appliance.policy.model import Policy
from appliance.policy.targets import IPNetwork
from appliance.results import NmapResult
from appliance.tools.base import ScanPlan

if TYPE_CHECKING:
    from appliance.jobs.jetstream import JetStreamJobStore

# The only tool sharded: nmap's per-host results are independent, so their union is the block's.
SHARDED_TOOL = "nmap_scan"
# Folds of one parent racing each other (shards ending at once on the segment's appliances):
# each lost compare-and-set is read and folded again.
CAS_TRIES = 32


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


@dataclass(frozen=True)
class ShardEnd:
    """What a parent keeps of one ended shard: its state, exit code and error, and its hosts
    (these go into the parent's result, the rest into its `merged`)."""

    scan_id: str
    state: JobState
    hosts: tuple[dict[str, Any], ...] = ()
    exit_code: int | None = None
    has_result: bool = False
    error: dict[str, Any] | None = None

    @classmethod
    def of(cls, shard: Job) -> ShardEnd:
        result = shard.result
        return cls(
            shard.scan_id,
            shard.state,
            tuple(result.get("hosts", [])) if result is not None else (),
            result.get("exit_code") if result is not None else None,
            result is not None,
            shard.error,
        )

    @classmethod
    def lost(cls, scan_id: str) -> ShardEnd:
        """A shard whose record never came (its front stopped while it handed shards over)."""
        return cls(scan_id, "interrupted")


def fold(parent: Job, ends: list[ShardEnd], now: float) -> bool:
    """Fold ended shards into `parent`, each once (`parent.merged` names those folded): their
    hosts into its result, their states for its end, which comes when the last one is in. A
    shard's end costs the parent one read and one compare-and-set (`fold_shard`), whatever the
    number of shards. False when nothing changes."""
    if parent.finished or not parent.shards:
        return False
    merged = dict(parent.merged or {})
    new = [end for end in ends if end.scan_id in parent.shards and end.scan_id not in merged]
    if not new:
        return False
    for end in new:
        entry: dict[str, Any] = {"state": end.state}
        if end.has_result:
            entry["exit_code"] = end.exit_code
        # The first failed shard's error is the parent's if every shard failed; one is enough.
        if end.error is not None and not any("error" in kept for kept in merged.values()):
            entry["error"] = end.error
        merged[end.scan_id] = entry
    hosts = sorted(
        [*((parent.result or {}).get("hosts") or []), *(host for end in new for host in end.hosts)], key=_address_key
    )
    parent.merged = merged
    states: list[JobState] = [merged[scan_id]["state"] for scan_id in parent.shards if scan_id in merged]
    state = final_state(states) if len(states) == len(parent.shards) else None
    codes = [kept["exit_code"] for kept in merged.values() if "exit_code" in kept]
    parent.result = _result(parent, hosts, codes, state, now)
    if state is None:
        if parent.state == "queued":
            parent.move("running", now, "its first shard started")
        parent.progress = max(parent.progress or 0.0, round(100.0 * len(merged) / len(parent.shards), 1))
        parent.updated_at = now
        return True
    parent.progress = 100.0 if state in ("completed", "partial") else parent.progress
    if state == "failed":
        # The first shard's error says why (every shard failed; a lost one has none).
        errors = [kept["error"] for kept in merged.values() if "error" in kept]
        parent.error = {**errors[0], "scan_id": parent.scan_id} if errors else None
    counts = {name: states.count(name) for name in sorted(set(states))}
    parent.move(state, now, "merged from its shards: " + ", ".join(f"{n} {name}" for name, n in counts.items()))
    return True


def merge(parent: Job, shards: Mapping[str, Job | None], now: float, lost_after_seconds: float) -> bool:
    """The sweep's merge: bring `parent` up to date with the records of its shards not yet
    folded (`shards`: each one's record, None when it is missing; a shard folded already is not
    looked at). Ended ones are folded; a missing one counts as queued until the parent is
    `lost_after_seconds` old (its front may still be writing it), then as interrupted (a front
    that crashed before it wrote it, or an operator's purge); the others give the progress (the
    shards' mean) and the start. False when nothing changes (finished already, or as merged)."""
    if parent.finished or not parent.shards:
        return False
    lost = now - parent.created_at > lost_after_seconds
    folded = parent.merged or {}
    ends: list[ShardEnd] = []
    unfinished: list[Job] = []
    for scan_id in parent.shards:
        if scan_id in folded:
            continue
        shard = shards.get(scan_id)
        if shard is None:
            if lost:
                ends.append(ShardEnd.lost(scan_id))
        elif shard.finished:
            ends.append(ShardEnd.of(shard))
        else:
            unfinished.append(shard)
    changed = fold(parent, ends, now)
    if parent.finished:
        return True
    done = len(parent.merged or {})
    progress = round((100.0 * done + sum(shard.progress or 0.0 for shard in unfinished)) / len(parent.shards), 1)
    if parent.state == "queued" and (done or any(shard.state != "queued" for shard in unfinished)):
        parent.move("running", now, "its first shard started")
        changed = True
    if progress != (parent.progress or 0.0):
        parent.progress = progress
        changed = True
    if changed:
        parent.updated_at = now
    return changed


def _result(
    parent: Job, hosts: list[dict[str, Any]], codes: list[int | None], state: JobState | None, now: float
) -> dict[str, Any]:
    """The parent's result: its own request's fields and the union of its ended shards' hosts;
    once ended (`state`), whether it is partial and how long it took."""
    fields = result_base(parent, NmapResult)
    ended: dict[str, Any] = {}
    if state is not None:
        ended = {
            "exit_code": next((code for code in codes if code not in (0, None)), 0 if codes else None),
            "duration_seconds": round(max(now - parent.created_at, 0.0), 3),
            "partial": state == "partial",
            "partial_reason": "shards_incomplete" if state == "partial" else None,
        }
    report = NmapResult(**fields, **ended, hosts=hosts)
    return report.model_dump(mode="json")


def fold_shard(store: JetStreamJobStore, shard: Job, now: float) -> Job | None:
    """A shard's end folded into its parent by the appliance that ended it: one read of the
    parent and a compare-and-set (a conflicting write, another shard's fold, is read again and
    folded again). The parent as written, or None when there was nothing to change."""
    if shard.parent is None or not shard.finished:
        return None
    end = ShardEnd.of(shard)
    return store.update(shard.parent, lambda parent: fold(parent, [end], now), attempts=CAS_TRIES)


def merge_parent(
    store: JetStreamJobStore,
    parent_id: str,
    now: float,
    lost_after_seconds: float,
    unfinished: Mapping[str, Job] | None = None,
) -> Job | None:
    """The sweep's merge of one parent by compare-and-set. Reads the records of its shards not
    yet folded, but for those in `unfinished` (the sweep's listing of the segment's unfinished
    jobs, read once for all its parents): in the steady state, none. The record as written, or
    None when there was nothing to change."""
    parent = store.get(parent_id)
    if parent is None or parent.finished or not parent.shards:
        return None
    known = unfinished or {}
    folded = parent.merged or {}
    wanted = [scan_id for scan_id in parent.shards if scan_id not in folded and scan_id not in known]
    shards: dict[str, Job | None] = {scan_id: known[scan_id] for scan_id in parent.shards if scan_id in known}
    if wanted:
        shards.update(store.get_many(wanted))
    return store.update(parent_id, lambda job: merge(job, shards, now, lost_after_seconds), attempts=CAS_TRIES)
