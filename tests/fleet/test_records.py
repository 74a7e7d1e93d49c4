"""Every fleet record is signed by its writer; readers trust a front or the job's own segment
(appliance.fleet.records).

The checks on records built here first; then, on a nats-server with the deployment's users and
permissions (a segment's login may write any job key: that is what the signatures are for), a real
nmap scan of a loopback listener through a front and seg-b, whose record and raw output seg-a's
login then rewrites: the front believes neither, and a job seg-a's login rewrote before seg-b
claimed it is refused by seg-b, audited, and never run.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.fleet import SEAL_KEY, SEALS, FleetLab, running
from support.jobs import stored_job
from support.listeners import tcp_listener
from support.runners import SpyRunner
from support.waiting import eventually

from appliance.config import Settings
from appliance.errors import ConfigError
from appliance.fleet.records import FIELD, RecordSeals, RecordUnverifiedError
from appliance.fleet.roles import operator_records
from appliance.jobs.model import Job
from appliance.jobs.queries import JobQueries, ListScansRequest
from appliance.jobs.store import JobFilter
from appliance.tools import TOOLS
from appliance.tools.nmap import NmapRequest

NMAP = TOOLS["nmap_scan"]


def record(**fields: Any) -> dict[str, Any]:
    """A completed seg-b job's record, `fields` changed."""
    job = stored_job("completed", at=time.time(), result={"hosts": [{"address": "127.0.1.5", "ports": [80]}]})
    job.segment, job.runner = "seg-b", "seg-b-1"
    return {**job.to_record(), **fields}


class Published:
    """The segment bucket's published keys, as a dict; counts its reads."""

    def __init__(self, *seals: tuple[str, RecordSeals]) -> None:
        self.values: dict[tuple[str, str], bytes] = {}
        self.reads = 0
        for segment, seal in seals:
            assert seal.signer is not None
            self.values[(segment, seal.signer.key_id)] = seal.signer.publication(f"{segment}-1", 0.0)

    async def __call__(self, segment: str, kid: str) -> bytes | None:
        self.reads += 1
        return self.values.get((segment, kid))


def reader(published: Published) -> RecordSeals:
    return RecordSeals(None, dict(SEALS.keys), published)


def why(seals: RecordSeals, candidate: dict[str, Any]) -> str | None:
    try:
        asyncio.run(seals.check(json.loads(json.dumps(candidate))))  # as read back from the bus
    except RecordUnverifiedError as exc:
        return f"{exc.rule}: {exc.message}"
    return None


def test_a_record_verifies_as_a_front_or_its_own_segment_signed_it() -> None:
    seg_b = RecordSeals.of_segment("seg-b", SEALS.keys)
    published = Published(("seg-b", seg_b))
    check = reader(published)
    assert why(check, RecordSeals.of_front(SEAL_KEY).seal(record())) is None
    assert why(check, seg_b.seal(record())) is None
    assert why(check, seg_b.seal(record())) is None  # the second record: its key is known by now
    assert published.reads == 1


@pytest.mark.parametrize(
    ("name", "forged"),
    [
        ("state", "failed"),
        ("result", {"hosts": []}),
        ("error", {"rule": "x"}),
        ("runner", "seg-b-2"),
        ("raw_sha256", "0"),
    ],
)
def test_a_change_to_any_field_after_the_signature_is_refused(name: str, forged: Any) -> None:
    seg_b = RecordSeals.of_segment("seg-b", SEALS.keys)
    signed = seg_b.seal(record())
    assert why(reader(Published(("seg-b", seg_b))), {**signed, name: forged}) == (
        f"job_record_unverified: the record of scan {signed['scan_id']} cannot be trusted: it was changed after "
        "segment:seg-b signed it"
    )


def test_another_segments_signature_an_unpublished_key_or_none_are_refused() -> None:
    seg_a, seg_b = RecordSeals.of_segment("seg-a", SEALS.keys), RecordSeals.of_segment("seg-b", SEALS.keys)
    check = reader(Published(("seg-a", seg_a)))  # seg-b's appliance never published its key
    message = why(check, seg_a.seal(record()))
    assert message is not None and "written as 'segment:seg-a', which may not write a job of segment 'seg-b'" in message
    message = why(check, seg_b.seal(record()))
    assert message is not None and "segment seg-b never published it" in message
    message = why(check, seg_a.seal(record(segment="seg-a")))  # a job of seg-a's own: believed
    assert message is None
    message = why(check, record())
    assert message is not None and message.endswith("it carries no writer's signature")
    other_front = RecordSeals.of_front(Ed25519PrivateKey.generate())
    message = why(check, other_front.seal(record()))
    assert message is not None and "front" in message and "knows the fronts' keys" in message


def test_a_key_published_under_another_keys_name_speaks_for_nobody() -> None:
    seg_a, seg_b = RecordSeals.of_segment("seg-a", SEALS.keys), RecordSeals.of_segment("seg-b", SEALS.keys)
    published = Published()
    assert seg_a.signer is not None and seg_b.signer is not None
    # seg-b's slot named after seg-b's key, holding seg-a's public key (a copy gone wrong, or a forgery).
    published.values[("seg-b", seg_b.signer.key_id)] = seg_a.signer.publication("seg-a-1", 0.0)
    message = why(reader(published), seg_b.seal(record()))
    assert message is not None and "never published it" in message


def test_an_appliance_without_a_key_writes_no_record_and_operator_records_need_a_key_file(tmp_path: Any) -> None:
    with pytest.raises(ConfigError) as refused:
        RecordSeals(None, dict(SEALS.keys)).seal(record())
    assert refused.value.rule == "fleet_seal_key_missing"
    settings = Settings(role="front", transport="http", nats_url="nats://127.0.0.1:1")  # type: ignore[call-arg]
    with pytest.raises(ConfigError) as missing:
        operator_records(settings)
    assert missing.value.rule == "fleet_seal_key_missing"


# --- on a nats-server with the deployment's users and permissions -------------------------------


def forge(store_of: Any, job: Job, **fields: Any) -> None:
    """`fields` written into `job`'s record by another appliance's store (its own signature)."""
    for name, value in fields.items():
        setattr(job, name, value)
    store_of.put(job)


@pytest.mark.anyio
async def test_a_segments_login_rewriting_another_segments_scan_is_not_believed(lab: FleetLab) -> None:
    front = lab.front()
    seg_b = lab.segment("seg-b", "seg-b-1")
    seg_a = lab.segment("seg-a", "seg-a-1", runner=SpyRunner())
    with tcp_listener(host="127.0.1.5") as port:
        async with running(seg_b):
            result = await front.service.call(
                NMAP, NmapRequest(target="127.0.1.5", ports=str(port), wait_seconds=60), "rid-records"
            )
    assert result.status == "completed", result
    scan_id = result.scan_id or ""
    stored = front.parts.store.get(scan_id)
    assert stored is not None and stored.runner == "seg-b-1" and stored.raw_sha256 is not None
    assert front.parts.store.raw(scan_id)  # seg-b's own writes verify at the front
    queries = JobQueries(front.service.jobs, lambda: front.service.store.current.policy)
    assert [s.scan_id for s in queries.list_scans(ListScansRequest(), stored.principal).scans] == [scan_id]

    # seg-a's login overwrites the raw output (a key of its own) with a plausible report.
    async def overwrite() -> None:
        await seg_a.parts.store.kv.put(f"r.{scan_id}", b"<nmaprun>nothing open</nmaprun>")

    seg_a.parts.bus.call(overwrite, "overwrite seg-b's raw output")
    with pytest.raises(RecordUnverifiedError) as raw_refused:
        front.parts.store.raw(scan_id)
    assert raw_refused.value.rule == "job_raw_unverified"

    # Then the record: no open port, as seg-a's appliance signs it.
    seg_a_copy = seg_a.parts.store.get(scan_id)
    assert seg_a_copy is not None
    forge(seg_a.parts.store, seg_a_copy, result={"hosts": [], "summary": "0 hosts up"})
    with pytest.raises(RecordUnverifiedError) as refused:
        front.parts.store.get(scan_id)
    assert refused.value.rule == "job_record_unverified"
    assert "written as 'segment:seg-a', which may not write a job of segment 'seg-b'" in refused.value.message
    # list_scans leaves it out rather than show it; get_scan refuses it, audited at the front.
    assert front.parts.store.page(JobFilter(), 10).jobs == []
    assert queries.list_scans(ListScansRequest(), stored.principal).scans == []
    # Counted for ApplianceFleetUntrustedRecord: the raw output, the get, the two listings.
    assert front.parts.store.untrusted == 4
    assert seg_b.parts.store.untrusted == 0
    assert all(member.parts.bus.recent_refusal() is None for member in (front, seg_a, seg_b))


@pytest.mark.anyio
async def test_a_job_another_segments_login_rewrote_before_its_claim_is_refused_and_never_run(
    lab: FleetLab,
) -> None:
    front = lab.front()
    seg_b = lab.segment("seg-b", "seg-b-1", runner=SpyRunner())
    seg_a = lab.segment("seg-a", "seg-a-1", runner=SpyRunner())
    queued = await front.service.call(NMAP, NmapRequest(target="127.0.1.9", ports="80", wait_seconds=0), "rid-q")
    assert queued.status == "queued", queued
    admitted = seg_a.parts.store.get(queued.scan_id or "")
    assert admitted is not None and admitted.seal is not None
    # Its front's seal still holds (nothing it covers changed); its record is now seg-a's word.
    forge(seg_a.parts.store, admitted, request_id="rid-rewritten")
    assert seg_b.worker is not None
    worker = seg_b.worker
    async with running(seg_b):
        await eventually(lambda: worker.counts.unsealed, 30, what="seg-b refuses the rewritten job")
    assert seg_b.lab.runner.calls == []
    assert (seg_b.worker.counts.refused, seg_b.worker.counts.unsealed, seg_b.worker.counts.started) == (1, 1, 0)
    [line] = [line for line in seg_b.lab.audit_lines() if line.get("verdict") == "refused"]
    assert (line["scan_id"], line["rule"], line["segment"]) == (admitted.scan_id, "job_record_unverified", "seg-b")
    assert lab.queue_messages() == 0  # acked: a redelivery would find the same record
    raw = seg_b.parts.store.read_value(f"job.{admitted.scan_id}")
    assert raw is not None and json.loads(raw)[FIELD]["writer"] == "segment:seg-a"  # left as it was found
