"""Fronts seal what they admit; a segment runs only sealed jobs (appliance.fleet.seal).

The seal's own checks on records built here, then the segment's loop on a real nats-server with
the spy runner: a job put on the bus without a front, and a front's job rewritten on the bus, are
refused and audited and no scanner starts. That a front's real admission and approval verify is
what every other fleet test runs on (support.fleet gives fronts and segments one key pair).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.fleet import SEAL_KEY, SEALER, SEALS, FleetLab, running, sealed, until
from support.jobs import stored_job
from support.runners import SpyRunner

from appliance.errors import ApplianceError, ConfigError
from appliance.fleet.queue import job_body
from appliance.fleet.seal import SealCheck, Sealer, key_id
from appliance.jobs.model import Job
from appliance.tools import TOOLS
from appliance.tools.nmap import NmapRequest

NMAP = TOOLS["nmap_scan"]


def job(**fields: Any) -> Job:
    """A queued fleet job as a front records it (its caller, engagement and segment), `fields` changed."""
    made = stored_job("queued", at=time.time(), engagement="red")
    made.request, made.segment = {"target": "127.0.0.1", "ports": "80"}, "seg-a"
    made.caller = {"subject": "alice", "claims": {"team": "red"}, "scopes": ["scan:run"]}
    for name, value in fields.items():
        setattr(made, name, value)
    return made


def rule_of(check: SealCheck, candidate: Job) -> str | None:
    try:
        check.check(candidate)
    except ApplianceError as exc:
        return exc.rule
    return None


def test_a_sealed_job_verifies_after_its_record_round_trip_and_its_runs_own_writes() -> None:
    admitted = sealed(job())
    stored = Job.from_record(json.loads(json.dumps(admitted.to_record())))
    # What the segment itself writes while it runs the job is not sealed: state, runner, result.
    stored.runner = "seg-a-1"
    stored.move("running", time.time())
    stored.result = {"hosts": []}
    stored.argv = ["nmap", "-p", "80", "127.0.0.1"]
    assert rule_of(SEALS, stored) is None


@pytest.mark.parametrize(
    ("field", "forged"),
    [
        ("principal", "mallory"),
        ("caller", {"subject": "alice", "claims": {"team": "red"}, "scopes": ["scan:run", "scan:admin"]}),
        ("request", {"target": "127.0.0.1", "ports": "1-65535"}),
        ("engagement", None),
        ("segment", "seg-b"),
        ("parent", "scan_someone_elses_parent"),
        ("tool", "masscan_scan"),
        ("scan_id", "scan_copied000000000000001"),
    ],
)
def test_a_change_to_any_admitted_field_breaks_the_seal(field: str, forged: Any) -> None:
    candidate = sealed(job())
    setattr(candidate, field, forged)
    assert rule_of(SEALS, candidate) == "job_seal_invalid"


def test_a_job_without_a_seal_or_with_another_key_is_refused() -> None:
    assert rule_of(SEALS, job()) == "job_unsealed"
    stranger = Sealer(Ed25519PrivateKey.generate())
    candidate = job()
    stranger.admit(candidate)
    with pytest.raises(ApplianceError) as refused:
        SEALS.check(candidate)
    assert refused.value.rule == "job_seal_invalid"
    assert stranger.key_id in refused.value.message and key_id(SEAL_KEY.public_key()) in refused.value.message
    assert "scripts/create-nats-secrets" in refused.value.recovery_suggestion


def test_an_approval_counts_only_as_the_front_sealed_it() -> None:
    asked = {"argv_sha256": "a" * 64, "reasons": ["scripts"], "timeout_seconds": 60}
    # Marked approved on the bus: the admission verifies, the approval does not.
    candidate = sealed(job(approval=asked))
    candidate.approval = {**asked, "decision": "approved"}
    assert rule_of(SEALS, candidate) == "job_seal_invalid"
    # Approved at a front: verifies; then another argv's hash written in: refused.
    SEALER.approve(candidate)
    assert rule_of(SEALS, candidate) is None
    candidate.approval = {**candidate.approval, "argv_sha256": "b" * 64}
    assert rule_of(SEALS, candidate) == "job_seal_invalid"
    # Awaiting, or declined: nothing to verify here (the segment's approval check refuses it to run).
    assert rule_of(SEALS, sealed(job(approval={**asked, "decision": "declined"}))) is None


def test_the_key_files_rotate_and_refuse_what_is_not_an_ed25519_key(tmp_path: Path) -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    public = tmp_path / "pub.pem"
    public.write_bytes(
        b"".join(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            for key in (new, old)
        )
    )
    private = tmp_path / "key.pem"
    private.write_bytes(
        old.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    check = SealCheck.from_file(public)
    for sealer in (Sealer.from_file(private), Sealer(new)):
        candidate = job()
        sealer.admit(candidate)
        assert rule_of(check, candidate) is None
    ec = generate_private_key(SECP256R1())
    private.write_bytes(
        ec.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        ec.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for load, path in (
        (Sealer.from_file, private),
        (SealCheck.from_file, public),
        (SealCheck.from_file, tmp_path / "none"),
    ):
        with pytest.raises(ConfigError) as refused:
            load(path)
        assert refused.value.rule == "fleet_seal_key_invalid"
        assert str(path) in refused.value.message


# --- the segment's loop on a real nats-server ---------------------------------------------------


@pytest.mark.anyio
async def test_a_job_put_on_the_bus_without_a_front_is_refused_unsealed_and_never_run(fleet: FleetLab) -> None:
    seg_a = fleet.segment("seg-a", "seg-a-1", runner=SpyRunner())
    # In seg-a's scope and otherwise admissible: only the missing seal stops it.
    forged = job(engagement=None, caller=None)
    seg_a.parts.store.put(forged)

    async def send() -> None:
        await seg_a.parts.bus.js.publish(fleet.queue.subject_of("seg-a"), job_body(forged.scan_id))

    await seg_a.parts.bus.run(send, "publish a job without a front")
    async with running(seg_a):
        ended = await until(seg_a, forged.scan_id, "failed")
    assert seg_a.lab.runner.calls == []
    assert ended.error is not None and ended.error["rule"] == "job_unsealed"
    [line] = [line for line in seg_a.lab.audit_lines() if line.get("verdict") == "refused"]
    assert (line["scan_id"], line["rule"], line["principal"]) == (forged.scan_id, "job_unsealed", "alice")
    assert fleet.queue_messages() == 0
    assert seg_a.worker is not None  # counted for the ApplianceFleetUnsealedJob alert
    assert (seg_a.worker.counts.refused, seg_a.worker.counts.unsealed) == (1, 1)


@pytest.mark.anyio
async def test_a_fronts_job_rewritten_on_the_bus_is_refused_and_never_run(fleet: FleetLab) -> None:
    front = fleet.front()
    seg_a = fleet.segment("seg-a", "seg-a-1", runner=SpyRunner())
    queued = await front.service.call(NMAP, NmapRequest(target="127.0.0.1", ports="80", wait_seconds=0), "rid-1")
    store = seg_a.parts.store
    admitted = store.get(queued.scan_id or "")
    assert admitted is not None and admitted.seal is not None
    admitted.principal = "mallory"  # a segment login may write records: it makes the job someone else's
    store.put(admitted)
    async with running(seg_a):
        ended = await until(seg_a, admitted.scan_id, "failed")
    assert seg_a.lab.runner.calls == []
    assert ended.error is not None and ended.error["rule"] == "job_seal_invalid"
    assert '"rule": "job_seal_invalid"' in seg_a.lab.audit.getvalue()
