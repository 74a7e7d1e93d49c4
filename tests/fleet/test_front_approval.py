"""Approval on fleet fronts on a real nats-server: the question is recorded, not queued; the answer
may come through the other front; the segment runs real nmap (--script banner, which the policy
says needs approval) against a listener the test opens on loopback, and only once approved.

The segment's runner records every argv it is handed (and runs it): before the answer it holds
none. The fronts hold the spy runner: a front that started a scanner would fail the test.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from support.fleet import SEALS, FleetLab, FleetMember, running, sealed
from support.listeners import tcp_listener
from support.nats import NatsServer
from support.runners import RecordingRunner
from support.waiting import eventually

from appliance.approval.model import ApprovalRequest, ApprovalState, Approver, Decision, Resumed, parse_state
from appliance.errors import PermissionDeniedError, ValidationError
from appliance.jobs.model import Job
from appliance.tools import TOOLS

pytestmark = pytest.mark.anyio

NMAP = TOOLS["nmap_scan"]
APPROVAL = {"approval": {"nmap_scripts": True, "approval_timeout_seconds": 30}}
LATER = Approver("input_required", "alice")


def key_file(directory: Path) -> Path:
    path = directory / "request_state_key"
    path.write_text(secrets.token_urlsafe(32) + "\n")
    return path


def fronts(fleet: FleetLab, timeout: int = 30) -> tuple[FleetMember, FleetMember]:
    """Two fronts sharing one request-state key, under a policy whose NSE scripts need approval."""
    fleet.policy = {"approval": {**APPROVAL["approval"], "approval_timeout_seconds": timeout}}
    key = key_file(fleet.directory)
    return fleet.front(request_state_key_file=key), fleet.front(request_state_key_file=key)


def call(port: int | str, **extra: Any) -> dict[str, Any]:
    return {"target": "127.0.0.1", "ports": str(port), "scripts": ["banner"], "wait_seconds": 60, **extra}


def answer(state: ApprovalState, decision: Decision | None, principal: str = "alice") -> Approver:
    """The approver of a 2026-07-28 retry that echoes `state` (as the MCP boundary builds it)."""
    return Approver("input_required", principal, resumed=Resumed(state, decision))


async def ask(front: FleetMember, arguments: dict[str, Any]) -> tuple[str, ApprovalRequest, ApprovalState]:
    """A first call through `front`: the job awaiting approval, its question and its state."""
    asked = await front.service.call(NMAP, arguments, "rid-ask", principal="alice", approver=LATER)
    assert asked.status == "awaiting_approval", asked
    assert asked.scan_id is not None
    question = front.service.question(asked.scan_id)
    assert question is not None
    state = parse_state(question.state())
    assert state is not None
    return asked.scan_id, question, state


def stored(member: FleetMember, scan_id: str) -> Job:
    job = member.parts.store.get(scan_id)
    assert job is not None
    return job


def events(member: FleetMember, scan_id: str) -> list[str]:
    return [
        str(line.get("event") or line.get("verdict"))
        for line in member.lab.audit_lines()
        if line.get("scan_id") == scan_id
    ]


async def test_the_question_is_recorded_not_queued_and_the_other_front_runs_it_once_approved(
    fleet: FleetLab,
) -> None:
    first, second = fronts(fleet)
    recorder = RecordingRunner()
    seg_a = fleet.segment("seg-a", "seg-a-1", runner=recorder)
    with tcp_listener(b"SSH-2.0-lab\r\n") as port:
        async with running(seg_a):
            scan_id, question, state = await ask(first, call(port))
            waiting = stored(first, scan_id)
            assert waiting.state == "awaiting_approval"
            assert waiting.approval is not None
            assert waiting.approval["argv_sha256"] == question.argv_sha256 == state.argv_sha256
            assert (waiting.approval["reasons"], waiting.approval["timeout_seconds"]) == (["nmap_scripts"], 30)
            assert "--script banner" in question.message() and "127.0.0.1" in question.message()
            assert fleet.queue_messages() == 0  # not queued: nobody may run it yet
            assert recorder.calls == []

            final = await second.service.call(
                NMAP, call(port), "rid-retry", principal="alice", approver=answer(state, Decision("approved", "alice"))
            )

    assert final.status == "completed", final
    assert [(p.port, p.state) for p in final.hosts[0].ports] == [(port, "open")]  # type: ignore[attr-defined]
    [argv] = recorder.calls
    assert "--script" in argv and "banner" in argv and argv[-1] == "127.0.0.1"
    assert first.lab.runner.calls == [] and second.lab.runner.calls == []  # the fronts' spies
    job = stored(second, scan_id)
    assert job.approval is not None
    assert (job.approval["decision"], job.approval["approver"]) == ("approved", "alice")
    assert events(first, scan_id) == ["job", "approval_requested"]
    assert events(second, scan_id) == ["approval", "job", "dispatched"]
    [approval] = [line for line in second.lab.audit_lines() if line.get("event") == "approval"]
    assert (approval["decision"], approval["approver"], approval["argv_sha256"]) == (
        "approved",
        "alice",
        question.argv_sha256,
    )
    assert "start" in events(seg_a, scan_id)
    assert fleet.queue_messages() == 0


NAME = "web.seg-a.lab.internal"


async def test_a_scan_of_a_name_is_approved_as_the_name_and_run_on_the_address_its_segment_resolves(
    fleet: FleetLab,
) -> None:
    first, second = fronts(fleet)
    recorder = RecordingRunner()
    seg_a = fleet.segment("seg-a", "seg-a-1", runner=recorder, resolves={NAME: ["127.0.0.1"]})
    with tcp_listener(b"SSH-2.0-lab\r\n") as port:
        async with running(seg_a):
            scan_id, question, state = await ask(first, call(port, target=NAME))
            assert NAME in question.message()  # the front has no resolver: the human approves the name
            assert seg_a.lab.resolver.calls == [] and recorder.calls == []
            final = await second.service.call(
                NMAP,
                call(port, target=NAME),
                "rid-name",
                principal="alice",
                approver=answer(state, Decision("approved", "alice")),
            )

    assert final.status == "completed", final
    assert [(p.port, p.state) for p in final.hosts[0].ports] == [(port, "open")]  # type: ignore[attr-defined]
    [argv] = recorder.calls
    assert "banner" in argv and argv[-1] == "127.0.0.1"  # the address seg-a resolved, in its scope
    assert seg_a.lab.resolver.calls == [NAME]
    job = stored(second, scan_id)
    assert (job.argv[-1], job.scanned_address) == ("127.0.0.1", "127.0.0.1")
    assert first.lab.runner.calls == [] and second.lab.runner.calls == []


async def test_an_approved_name_that_resolves_out_of_its_segments_scope_is_refused_unrun(fleet: FleetLab) -> None:
    first, second = fronts(fleet)
    recorder = RecordingRunner()
    # seg-a's policy denies 127.0.1.0/24 (seg-b's block): its DNS now points the name there.
    seg_a = fleet.segment("seg-a", "seg-a-1", runner=recorder, resolves={NAME: ["127.0.1.9"]})
    async with running(seg_a):
        scan_id, _, state = await ask(first, call(9, target=NAME))
        with pytest.raises(ValidationError) as refused:
            await second.service.call(
                NMAP,
                call(9, target=NAME),
                "rid-far",
                principal="alice",
                approver=answer(state, Decision("approved", "alice")),
            )

    assert refused.value.rule == "target_hostname_resolves_out_of_scope"
    assert recorder.calls == []
    final = stored(seg_a, scan_id)
    assert final.state == "failed" and final.error is not None
    assert final.error["rule"] == "target_hostname_resolves_out_of_scope"
    assert "refused" in events(seg_a, scan_id)


async def test_a_decline_through_the_other_front_ends_the_job_unrun(fleet: FleetLab) -> None:
    first, second = fronts(fleet)
    recorder = RecordingRunner()
    fleet.segment("seg-a", "seg-a-1", runner=recorder)
    scan_id, _, state = await ask(first, call(9))

    with pytest.raises(PermissionDeniedError) as declined:
        await second.service.call(
            NMAP, call(9), "rid-no", principal="alice", approver=answer(state, Decision("declined", "alice", "no"))
        )

    assert declined.value.rule == "approval_declined"
    assert "declined it" in declined.value.message
    job = stored(second, scan_id)
    assert job.state == "failed"
    assert job.error is not None and job.error["rule"] == "approval_declined"
    assert job.approval is not None and job.approval["decision"] == "declined"
    assert events(second, scan_id) == ["approval", "refused"]
    assert fleet.queue_messages() == 0
    assert recorder.calls == []
    # A second answer finds nothing to answer.
    with pytest.raises(ValidationError) as again:
        await first.service.call(
            NMAP, call(9), "rid-late", principal="alice", approver=answer(state, Decision("approved", "alice"))
        )
    assert again.value.rule == "approval_state_mismatch"


async def test_a_retry_without_an_answer_gets_the_question_again_from_any_front(fleet: FleetLab) -> None:
    first, second = fronts(fleet)
    fleet.segment("seg-a", "seg-a-1", runner=RecordingRunner())
    scan_id, question, state = await ask(first, call(9))

    again = await second.service.call(NMAP, call(9), "rid-again", principal="alice", approver=answer(state, None))

    assert again.status == "awaiting_approval"
    repeated = second.service.question(again.scan_id)
    assert repeated is not None
    assert (repeated.scan_id, repeated.argv, repeated.state()) == (scan_id, question.argv, question.state())
    assert stored(second, scan_id).state == "awaiting_approval"


async def test_an_unanswered_question_is_ended_by_the_segment_sweep_once(fleet: FleetLab) -> None:
    first, second = fronts(fleet, timeout=1)
    recorder = RecordingRunner()
    seg_a = fleet.segment("seg-a", "seg-a-1", runner=recorder)
    seg_a_2 = fleet.segment("seg-a", "seg-a-2", runner=recorder)
    assert seg_a.worker is not None and seg_a_2.worker is not None
    scan_id, _, state = await ask(first, call(9))
    assert seg_a.worker.expire_approvals() == []  # before its deadline: left alone

    ended = await eventually(seg_a.worker.expire_approvals, within=10, what="the deadline's sweep")

    assert ended == [scan_id]
    assert seg_a_2.worker.expire_approvals() == []  # the other appliance's sweep finds it ended
    job = stored(seg_a, scan_id)
    assert job.state == "failed"
    assert job.error is not None and job.error["rule"] == "approval_declined"
    assert "no answer within 1 s" in job.error["message"]
    assert events(seg_a, scan_id) == ["approval", "refused"]
    assert events(seg_a_2, scan_id) == []
    [line] = [line for line in seg_a.lab.audit_lines() if line.get("event") == "approval"]
    assert line["decision"] == "timed_out"
    with pytest.raises(ValidationError) as late:
        await second.service.call(
            NMAP, call(9), "rid-late", principal="alice", approver=answer(state, Decision("approved", "alice"))
        )
    assert late.value.rule == "approval_state_mismatch"
    assert recorder.calls == []


async def test_an_answer_past_the_deadline_is_declined_by_the_front_that_reads_it(fleet: FleetLab) -> None:
    first, second = fronts(fleet, timeout=1)
    recorder = RecordingRunner()
    fleet.segment("seg-a", "seg-a-1", runner=recorder)
    scan_id, _, state = await ask(first, call(9))
    deadline = stored(first, scan_id).created_at + 1
    await eventually(lambda: time.time() > deadline + 0.1, within=10, what="the question's deadline")

    with pytest.raises(PermissionDeniedError) as late:
        await second.service.call(
            NMAP, call(9), "rid-late", principal="alice", approver=answer(state, Decision("approved", "alice"))
        )

    assert late.value.rule == "approval_declined"
    assert "no answer within 1 s" in late.value.message
    assert stored(second, scan_id).state == "failed"
    [line] = [line for line in second.lab.audit_lines() if line.get("event") == "approval"]
    assert line["decision"] == "timed_out"
    assert fleet.queue_messages() == 0
    assert recorder.calls == []


async def test_a_retry_whose_argv_changed_is_a_mismatch_and_the_question_stands(fleet: FleetLab) -> None:
    first, second = fronts(fleet)
    recorder = RecordingRunner()
    fleet.segment("seg-a", "seg-a-1", runner=recorder)
    scan_id, _, state = await ask(first, call(9))

    with pytest.raises(ValidationError) as changed:
        await second.service.call(
            NMAP, call(10), "rid-other", principal="alice", approver=answer(state, Decision("approved", "alice"))
        )

    assert changed.value.rule == "approval_state_mismatch"
    assert "is not the one scan" in changed.value.message
    assert stored(second, scan_id).state == "awaiting_approval"
    [refused] = [line for line in second.lab.audit_lines() if line.get("verdict") == "refused"]
    assert (refused["rule"], refused["scan_id"]) == ("approval_state_mismatch", scan_id)
    assert fleet.queue_messages() == 0
    assert recorder.calls == []


async def test_another_principal_cannot_answer_someone_elses_question(fleet: FleetLab) -> None:
    first, second = fronts(fleet)
    recorder = RecordingRunner()
    fleet.segment("seg-a", "seg-a-1", runner=recorder)
    scan_id, _, state = await ask(first, call(9))

    with pytest.raises(ValidationError) as other:
        await second.service.call(
            NMAP,
            call(9),
            "rid-mallory",
            principal="mallory",
            approver=answer(state, Decision("approved", "mallory"), principal="mallory"),
        )

    assert other.value.rule == "approval_state_mismatch"
    assert "not awaiting your approval" in other.value.message
    assert stored(second, scan_id).state == "awaiting_approval"
    assert fleet.queue_messages() == 0
    assert recorder.calls == []


async def test_cancel_scan_on_a_front_ends_a_job_awaiting_approval(fleet: FleetLab) -> None:
    first, second = fronts(fleet)
    fleet.segment("seg-a", "seg-a-1", runner=RecordingRunner())
    scan_id, _, state = await ask(first, call(9))

    assert second.service.jobs.cancel(stored(second, scan_id)) is True

    assert stored(second, scan_id).state == "cancelled"
    assert events(second, scan_id) == ["job"]
    with pytest.raises(ValidationError) as late:
        await first.service.call(
            NMAP, call(9), "rid-late", principal="alice", approver=answer(state, Decision("approved", "alice"))
        )
    assert late.value.rule == "approval_state_mismatch"
    assert fleet.queue_messages() == 0


async def test_a_handshake_era_client_on_a_front_gets_approval_unavailable_and_no_job(fleet: FleetLab) -> None:
    front, _ = fronts(fleet)
    fleet.segment("seg-a", "seg-a-1", runner=RecordingRunner())

    async def never(request: ApprovalRequest) -> Decision:
        raise AssertionError("a stateless front must not ask mid-call")

    with pytest.raises(PermissionDeniedError) as refused:
        await front.service.call(NMAP, call(9), "rid-old", principal="alice", approver=Approver("ask", "alice", never))

    assert refused.value.rule == "approval_unavailable"
    assert "stateless" in refused.value.message and "2026-07-28" in refused.value.recovery_suggestion
    assert front.parts.store.count() == 0
    assert fleet.queue_messages() == 0


async def test_a_front_without_a_shared_key_keeps_refusing_approval_and_says_why(fleet: FleetLab) -> None:
    fleet.policy = APPROVAL
    front = fleet.front()  # no request-state key file
    fleet.segment("seg-a", "seg-a-1", runner=RecordingRunner())

    with pytest.raises(PermissionDeniedError) as refused:
        await front.service.call(NMAP, call(9), "rid-nokey", principal="alice", approver=LATER)

    assert refused.value.rule == "approval_unavailable"
    assert "APPLIANCE_REQUEST_STATE_KEY_FILE" in refused.value.recovery_suggestion
    assert front.parts.store.count() == 0


def queued_job(scan_id: str, port: int, approval: dict[str, Any] | None) -> Job:
    """A job put on the store as if a front had queued it (the segment trusts nothing on the bus)."""
    now = time.time()
    request = {"target": "127.0.0.1", "ports": str(port), "scripts": ["banner"]}
    job = Job(
        scan_id=scan_id,
        tool="nmap_scan",
        target="127.0.0.1",
        scanned_address="127.0.0.1",
        principal="alice",
        request=request,
        argv=["nmap", "127.0.0.1"],
        state="queued",
        created_at=now,
        updated_at=now,
        request_id="forged",
        segment="seg-a",
        approval=approval,
    )
    job.move("queued", now)
    return job


@pytest.mark.parametrize(
    ("approval", "rule"),
    [
        # unsafe
        (None, "approval_unavailable"),  # queued without a question
        ({"argv_sha256": "0" * 64, "decision": "declined"}, "approval_unavailable"),
        ({"argv_sha256": "0" * 64, "decision": "approved"}, "approval_state_mismatch"),  # another argv approved
    ],
)
async def test_the_segment_runs_a_job_needing_approval_only_with_the_approval_of_its_own_argv(
    fleet: FleetLab, approval: dict[str, Any] | None, rule: str
) -> None:
    fleet.policy = APPROVAL
    recorder = RecordingRunner()
    seg_a = fleet.segment("seg-a", "seg-a-1", runner=recorder)
    store = seg_a.parts.store
    job = sealed(queued_job("scan_unapproved00000000000001", 9, approval))  # test_seal: unsealed
    store.put(job)
    claimed = store.claim(job.scan_id, "seg-a-1", time.time())
    assert claimed is not None

    assert await seg_a.service.adopt(claimed, SEALS.check) is None

    assert recorder.calls == []
    final = stored(seg_a, job.scan_id)
    assert final.state == "failed"
    assert final.error is not None and final.error["rule"] == rule
    assert events(seg_a, job.scan_id) == ["refused"]


async def test_the_segments_heartbeat_ends_an_unanswered_question(nats: NatsServer, tmp_path: Path) -> None:
    # Heartbeats every second (ack_wait 3 s): the sweep rides them, nobody calls it by hand.
    with FleetLab(nats.url, tmp_path, ack_wait_seconds=3) as lab:
        first, _ = fronts(lab, timeout=1)
        recorder = RecordingRunner()
        seg_a = lab.segment("seg-a", "seg-a-1", runner=recorder)
        scan_id, _, _ = await ask(first, call(9))
        async with running(seg_a):
            await eventually(lambda: stored(first, scan_id).state == "failed", within=15, what="the sweep's end")
        job = stored(first, scan_id)
    assert job.error is not None and job.error["rule"] == "approval_declined"
    assert events(seg_a, scan_id) == ["approval", "refused"]
    assert recorder.calls == []
