"""Approval below the MCP layer: the question's values, the restart of a job awaiting approval,
and what a declined job leaves behind (no budget held, no breaker failure, no pending question)."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import GatedRunner, LabService, SpyRunner
from support.engagements import FixedClock, engagement, with_engagements

from appliance.approval.model import (
    ApprovalRequest,
    ApprovalState,
    Approver,
    Decision,
    argv_digest,
    parse_state,
)
from appliance.errors import ApplianceError
from appliance.policy.approval import ApprovalReason
from appliance.resilience.breaker import BreakerState
from appliance.tools import TOOLS

pytestmark = pytest.mark.anyio

NMAP = TOOLS["nmap_scan"]
XML = (Path(__file__).resolve().parents[1] / "fixtures" / "nmap" / "connect.xml").read_bytes()
CALL: dict[str, Any] = {"target": "10.20.0.5", "ports": "18081-18083", "scripts": ["banner"]}
APPROVAL = {"approval": {"nmap_scripts": True, "approval_timeout_seconds": 5}}
LATER = Approver("input_required", "alice")


def question(argv: tuple[str, ...] = ("/usr/bin/nmap", "--script", "banner", "10.20.0.5")) -> ApprovalRequest:
    return ApprovalRequest(
        "scan_1", "nmap_scan", argv, "web.lab.internal", "10.20.0.5", "red-team", (ApprovalReason("r", "why"),), 30
    )


def test_question_shows_the_argv_shell_quoted_the_scope_and_the_deadline() -> None:
    argv = ("/usr/bin/nmap", "--script", "banner", "--script-args", "a b", "10.20.0.5")
    message = question(argv).message()
    assert shlex.join(argv) in message and "'a b'" in message
    assert "web.lab.internal (scanned address 10.20.0.5)" in message
    assert "Engagement: red-team" in message and "within 30 s" in message


def test_argv_digest_tells_joined_words_apart() -> None:
    assert argv_digest(["-p", "80 443"]) != argv_digest(["-p", "80", "443"])


def test_argv_digest_is_the_same_for_every_process_datadir_but_not_for_another_script() -> None:
    # Each appliance builds its own private --datadir: a fleet's fronts and segment must agree.
    one = ["/usr/bin/nmap", "--datadir", "/tmp/appliance-nmap-aaaa", "--script", "banner", "10.20.0.5"]
    other = ["/usr/bin/nmap", "--datadir", "/tmp/appliance-nmap-bbbb", "--script", "banner", "10.20.0.5"]
    assert argv_digest(one) == argv_digest(other)
    assert argv_digest(one) != argv_digest([*one[:4], "http-title", one[5]])


def test_state_round_trips_and_other_text_is_not_an_approval_state() -> None:
    request = question()
    assert parse_state(request.state()) == ApprovalState("scan_1", request.argv_sha256)
    for text in ("", "not json", "[]", '{"kind": "other", "v": 1}', '{"kind": "scan_approval", "v": 2}'):
        assert parse_state(text) is None


async def test_job_awaiting_approval_at_a_stop_is_interrupted_at_the_next_start(
    lab_service: Callable[..., LabService],
) -> None:
    lab = lab_service(APPROVAL, runner=SpyRunner(), privilege_mode="connect")
    report = await lab.service.call(NMAP, CALL, "r1", principal="alice", approver=LATER)
    assert report.status == "awaiting_approval"
    [left] = lab.service.jobs.store.unfinished()
    assert left.state == "awaiting_approval"

    recovered = lab.service.jobs.recover()  # what the next start does with the store

    assert [job.scan_id for job in recovered] == [report.scan_id]
    stored = lab.service.jobs.store.get(left.scan_id)
    assert stored is not None and stored.state == "interrupted"
    assert lab.runner.calls == []


async def test_declined_job_holds_no_engagement_budget_no_probe_and_no_question(
    lab_service: Callable[..., LabService],
) -> None:
    one_at_a_time = engagement("red", ["alice"], networks=["10.20.0.0/24"], budget={"concurrent_scans": 1})
    # One counted failure would open the breaker: a decline must count as neutral.
    policy = {**APPROVAL, **with_engagements(one_at_a_time), "resilience": {"breaker_failure_threshold": 1}}
    lab = lab_service(policy, runner=SpyRunner(), privilege_mode="connect", wall_clock=FixedClock())
    service = lab.service
    report = await service.call(NMAP, CALL, "r1", principal="alice", approver=LATER)
    assert report.scan_id is not None
    pending = service.approvals.pending[report.scan_id]
    # A second scan of the one-scan engagement is refused while the first waits for approval.
    with pytest.raises(ApplianceError) as refused:
        await service.call(NMAP, CALL, "r2", principal="alice", approver=LATER)
    assert refused.value.rule == "engagement_budget_exhausted"

    service.approvals.decide(pending, Decision("declined", "alice"))
    live = service.jobs.live.get(report.scan_id)
    if live is not None:
        await live.done.wait()

    job = service.jobs.store.get(report.scan_id)
    assert job is not None and job.state == "failed"
    assert service.approvals.pending == {}
    assert service.breakers["nmap_scan"].state is BreakerState.CLOSED
    again = await service.call(NMAP, CALL, "r3", principal="alice", approver=LATER)  # the budget is free again
    assert again.status == "awaiting_approval"
    assert lab.runner.calls == []


async def test_an_engagement_can_ask_for_approval_the_global_policy_does_not(
    lab_service: Callable[..., LabService],
) -> None:
    strict = engagement("red", ["alice"], networks=["10.20.0.0/24"]) | {"approval": {"nmap_scripts": True}}
    relaxed = engagement("blue", ["bob"], networks=["10.20.0.0/24"])
    runner = GatedRunner(XML)
    runner.gate.set()
    policy = with_engagements(strict, relaxed)
    lab = lab_service(policy, runner=runner, privilege_mode="connect", wall_clock=FixedClock())

    red = await lab.service.call(NMAP, CALL, "r1", principal="alice", approver=LATER)
    blue = await lab.service.call(NMAP, CALL, "r2", principal="bob", approver=Approver("input_required", "bob"))

    assert red.status == "awaiting_approval"
    assert blue.status == "completed"
    assert len(runner.calls) == 1  # bob's scan only
