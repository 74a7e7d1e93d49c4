"""Approval of intrusive scans through a real MCP client in memory, in both protocol eras:
accepted, declined, timed out, unsupported; tampered and changed retries; cancel while waiting.

The scanner is the gated fake (its gate open: it "finishes" at once) or the spy: a scan that was
not approved must never reach a runner, and the spy fails the test if it does.
"""

from __future__ import annotations

import io
import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, CallToolResult, ErrorData, InputRequiredResult
from support import LOOPBACK_POLICY, GatedRunner, LabService, SpyRunner, closed_port, eventually, write_policy
from support.approval import Human, approve, refuse

from appliance.approval.mcp import APPROVAL_KEY
from appliance.audit import AuditSink
from appliance.config import Settings
from appliance.jobs.model import Job
from appliance.jobs.store import JobFilter
from appliance.policy.netinfo import NetworkFacts
from appliance.policy.store import PolicyStore
from appliance.server import build_server
from appliance.service import ScanService

pytestmark = pytest.mark.anyio

ERAS = ["legacy", "2026-07-28"]
XML = (Path(__file__).resolve().parents[1] / "fixtures" / "nmap" / "connect.xml").read_bytes()
# nmap with an NSE script: the lab policy allows `banner`; this policy asks a human first.
CALL: dict[str, Any] = {"target": "10.20.0.5", "ports": "18081-18083", "scripts": ["banner"]}
APPROVAL = {"approval": {"nmap_scripts": True, "approval_timeout_seconds": 5}}
SHORT = {"approval": {"nmap_scripts": True, "approval_timeout_seconds": 1}}


def finished_runner() -> GatedRunner:
    runner = GatedRunner(XML)
    runner.gate.set()  # an approved "scan" finishes at once
    return runner


def loopback_service(tmp_path: Path, *overrides: dict[str, Any]) -> ScanService:
    """The real runner under the loopback policy: for the one approved scan that runs nmap."""
    policy = write_policy(tmp_path, LOOPBACK_POLICY, *overrides)
    return ScanService(
        Settings(policy_path=policy), PolicyStore(policy, facts=NetworkFacts), AuditSink(stream=io.StringIO())
    )


def _jobs(lab: LabService) -> list[Job]:
    return lab.service.jobs.page(JobFilter(), 10, None).jobs


def only_job(lab: LabService) -> Job:
    [job] = _jobs(lab)
    return job


def events(lab: LabService, name: str) -> list[dict[str, Any]]:
    return [line for line in lab.audit_lines() if line.get("event") == name]


def refusals(lab: LabService, rule: str) -> list[dict[str, Any]]:
    return [line for line in lab.audit_lines() if line.get("verdict") == "refused" and line.get("rule") == rule]


def body(result: CallToolResult) -> dict[str, Any]:
    assert result.structured_content is not None
    return result.structured_content


def assert_question_shows(lab: LabService, question: str, job: Job) -> None:
    assert shlex.join(job.argv) in question  # the exact argv, shell-quoted
    assert "10.20.0.5" in question and job.scan_id in question
    assert "NSE scripts (banner)" in question


@pytest.mark.parametrize("mode", ERAS)
async def test_accepted_approval_runs_the_scan_and_audits_who_approved(
    lab_service: Callable[..., LabService], mode: str
) -> None:
    lab = lab_service(APPROVAL, runner=finished_runner(), privilege_mode="connect")
    human = Human(approve("change ticket 42"))
    async with Client(build_server(lab.service), mode=mode, elicitation_callback=human) as client:
        result = await client.call_tool("nmap_scan", CALL)

    assert not result.is_error, result.content
    assert body(result)["status"] == "completed"
    job = only_job(lab)
    assert job.state == "completed"
    assert [event["state"] for event in job.events] == ["awaiting_approval", "queued", "running", "completed"]
    [question] = human.questions
    assert_question_shows(lab, question, job)
    assert set(human.schemas[0]["properties"]) == {"approve", "note"}
    assert lab.runner.calls == [job.argv]  # approved exactly what ran
    [asked] = events(lab, "approval_requested")
    assert asked["scan_id"] == job.scan_id and asked["reasons"] == ["nmap_scripts"]
    [decided] = events(lab, "approval")
    assert decided["decision"] == "approved" and decided["approver"] == "stdio"
    assert decided["note"] == "change ticket 42"
    assert decided["argv_sha256"] == asked["argv_sha256"]
    # The stored job carries its approval, bound to the argv's hash.
    assert job.approval == {
        "argv_sha256": asked["argv_sha256"],
        "reasons": ["nmap_scripts"],
        "timeout_seconds": 5,
        "decision": "approved",
        "approver": "stdio",
        "note": "change ticket 42",
    }
    [end] = events(lab, "end")
    assert end["outcome"] == "ok"
    assert lab.metric("appliance_tool_calls_total", tool="nmap_scan", outcome="ok") == 1


@pytest.mark.parametrize("mode", ERAS)
@pytest.mark.parametrize("answer", [refuse(), approve().model_copy(update={"action": "decline", "content": None})])
async def test_declined_approval_ends_the_job_without_running_it(
    lab_service: Callable[..., LabService], mode: str, answer: Any
) -> None:
    lab = lab_service(APPROVAL, runner=SpyRunner(), privilege_mode="connect")
    human = Human(answer)
    async with Client(build_server(lab.service), mode=mode, elicitation_callback=human) as client:
        result = await client.call_tool("nmap_scan", CALL)

    assert result.is_error
    error = body(result)
    assert error["rule"] == "approval_declined" and "declined it" in error["message"]
    assert error["recovery_suggestion"]
    job = only_job(lab)
    assert job.state == "failed" and job.error is not None and job.error["rule"] == "approval_declined"
    assert error["scan_id"] == job.scan_id
    assert_question_shows(lab, human.questions[0], job)
    assert lab.runner.calls == []
    [decided] = events(lab, "approval")
    assert decided["decision"] == "declined"
    assert job.approval is not None and job.approval["decision"] == "declined"
    # One way out of the books: one refusal line for the job, one count, no start, no end.
    [line] = refusals(lab, "approval_declined")
    assert line["scan_id"] == job.scan_id and line["state"] == "failed"
    assert events(lab, "start") == [] and events(lab, "end") == []
    assert lab.metric("appliance_tool_calls_total", tool="nmap_scan", outcome="refused") == 1


async def test_unanswered_question_times_out_on_the_handshake_era(lab_service: Callable[..., LabService]) -> None:
    lab = lab_service(SHORT, runner=SpyRunner(), privilege_mode="connect")

    def job_ended() -> bool:
        jobs = _jobs(lab)
        return bool(jobs) and jobs[0].finished

    human = Human(approve(), hold=job_ended)  # answers, but only after the deadline
    async with Client(build_server(lab.service), mode="legacy", elicitation_callback=human) as client:
        result = await client.call_tool("nmap_scan", CALL)

    assert result.is_error
    assert body(result)["rule"] == "approval_declined"
    assert "no answer within 1 s" in body(result)["message"]
    job = only_job(lab)
    assert job.state == "failed" and lab.runner.calls == []
    assert [line["decision"] for line in events(lab, "approval")] == ["timed_out"]
    assert len(refusals(lab, "approval_declined")) == 1


async def test_unanswered_input_request_times_out_and_a_late_answer_is_refused(
    lab_service: Callable[..., LabService],
) -> None:
    lab = lab_service(SHORT, runner=SpyRunner(), privilege_mode="connect")
    async with Client(build_server(lab.service), mode="2026-07-28", elicitation_callback=Human(approve())) as client:
        first = await client.session.call_tool("nmap_scan", CALL, allow_input_required=True)
        assert isinstance(first, InputRequiredResult) and first.request_state is not None
        job = only_job(lab)
        assert job.state == "awaiting_approval"
        assert APPROVAL_KEY in (first.input_requests or {})
        await eventually(lambda: _jobs(lab)[0].finished, within=10, what="the approval deadline")
        late = await client.session.call_tool(
            "nmap_scan",
            CALL,
            input_responses={APPROVAL_KEY: approve()},
            request_state=first.request_state,
            allow_input_required=True,
        )

    job = only_job(lab)
    assert job.state == "failed" and job.error is not None and "no answer within 1 s" in job.error["message"]
    assert isinstance(late, CallToolResult) and late.is_error
    assert body(late)["rule"] == "approval_state_mismatch"
    assert lab.runner.calls == []
    assert [line["decision"] for line in events(lab, "approval")] == ["timed_out"]
    assert len(refusals(lab, "approval_declined")) == 1


@pytest.mark.parametrize("mode", ERAS)
async def test_client_without_elicitation_gets_approval_unavailable(
    lab_service: Callable[..., LabService], mode: str
) -> None:
    lab = lab_service(APPROVAL, runner=SpyRunner(), privilege_mode="connect")
    async with Client(build_server(lab.service), mode=mode) as client:
        result = await client.call_tool("nmap_scan", CALL)

    assert result.is_error
    error = body(result)
    assert error["rule"] == "approval_unavailable" and error["error_type"] == "permission_denied"
    assert "NSE scripts (banner)" in error["message"]
    assert "elicitation" in error["recovery_suggestion"]
    assert _jobs(lab) == []  # nothing waits for an answer that cannot come
    assert lab.runner.calls == []
    [line] = refusals(lab, "approval_unavailable")
    assert line["argv"][-1] == "10.20.0.5"
    assert lab.metric("appliance_scope_refusals_total", tool="nmap_scan", rule="approval_unavailable") == 1


@pytest.mark.parametrize("mode", ERAS)
async def test_a_call_that_needs_no_approval_is_never_asked(lab_service: Callable[..., LabService], mode: str) -> None:
    lab = lab_service(APPROVAL, runner=finished_runner(), privilege_mode="connect")
    human = Human(refuse())
    async with Client(build_server(lab.service), mode=mode, elicitation_callback=human) as client:
        result = await client.call_tool("nmap_scan", {"target": "10.20.0.5", "ports": "18081-18083"})
    assert not result.is_error
    assert human.questions == [] and events(lab, "approval_requested") == []


async def test_refused_call_is_never_asked(lab_service: Callable[..., LabService]) -> None:
    lab = lab_service(APPROVAL, runner=SpyRunner(), privilege_mode="connect")
    human = Human(approve())
    async with Client(build_server(lab.service), mode="legacy", elicitation_callback=human) as client:
        result = await client.call_tool("nmap_scan", {**CALL, "scripts": ["http-brute"]})
    assert body(result)["rule"] == "script_not_allowed"
    assert human.questions == [] and lab.runner.calls == []


async def first_round(client: Client) -> InputRequiredResult:
    first = await client.session.call_tool("nmap_scan", CALL, allow_input_required=True)
    assert isinstance(first, InputRequiredResult) and first.request_state is not None
    return first


async def test_tampered_request_state_is_refused_by_the_sdk(lab_service: Callable[..., LabService]) -> None:
    lab = lab_service(APPROVAL, runner=SpyRunner(), privilege_mode="connect")
    async with Client(build_server(lab.service), mode="2026-07-28", elicitation_callback=Human(approve())) as client:
        first = await first_round(client)
        assert first.request_state is not None
        forged = json.dumps({"kind": "scan_approval", "v": 1, "scan_id": only_job(lab).scan_id, "argv_sha256": "0"})
        for state in (forged, first.request_state[:-2] + "AA"):
            with pytest.raises(MCPError) as refused:
                await client.session.call_tool(
                    "nmap_scan", CALL, input_responses={APPROVAL_KEY: approve()}, request_state=state
                )
            assert refused.value.error.code == INVALID_PARAMS
    assert only_job(lab).state == "awaiting_approval"  # neither answer reached it
    assert lab.runner.calls == []
    assert events(lab, "approval") == []


async def test_retry_with_changed_arguments_is_refused_by_the_sdk(lab_service: Callable[..., LabService]) -> None:
    lab = lab_service(APPROVAL, runner=SpyRunner(), privilege_mode="connect")
    async with Client(build_server(lab.service), mode="2026-07-28", elicitation_callback=Human(approve())) as client:
        first = await first_round(client)
        with pytest.raises(MCPError) as refused:
            await client.session.call_tool(
                "nmap_scan",
                {**CALL, "ports": "1-1024"},  # approve one command, run another
                input_responses={APPROVAL_KEY: approve()},
                request_state=first.request_state,
            )
    assert refused.value.error.code == INVALID_PARAMS
    assert lab.runner.calls == []
    assert events(lab, "approval") == []


async def test_retry_whose_argv_changed_with_the_policy_is_refused(
    lab_service: Callable[..., LabService], tmp_path: Path
) -> None:
    lab = lab_service(APPROVAL, runner=SpyRunner(), privilege_mode="connect")
    async with Client(build_server(lab.service), mode="2026-07-28", elicitation_callback=Human(approve())) as client:
        first = await first_round(client)
        # Same arguments, but a reload changed the argv they plan to (nmap's rate cap).
        policy = lab.service.settings.policy_path
        policy.write_text(policy.read_text().replace("max_rate: 1000", "max_rate: 900", 1))
        assert lab.service.store.reload()
        retried = await client.session.call_tool(
            "nmap_scan", CALL, input_responses={APPROVAL_KEY: approve()}, request_state=first.request_state
        )
    assert retried.is_error
    assert body(retried)["rule"] == "approval_state_mismatch"
    assert only_job(lab).state == "awaiting_approval"  # its own deadline ends it
    assert lab.runner.calls == []
    assert len(refusals(lab, "approval_state_mismatch")) == 1


async def test_cancel_scan_ends_a_job_awaiting_approval(lab_service: Callable[..., LabService]) -> None:
    lab = lab_service(APPROVAL, runner=SpyRunner(), privilege_mode="connect")
    async with Client(build_server(lab.service), mode="2026-07-28", elicitation_callback=Human(approve())) as client:
        await first_round(client)
        scan_id = only_job(lab).scan_id
        listed = await client.call_tool("list_scans", {"status": "awaiting_approval"})
        assert [scan["scan_id"] for scan in body(listed)["scans"]] == [scan_id]
        cancelled = await client.call_tool("cancel_scan", {"scan_id": scan_id})
    assert body(cancelled)["status"] == "cancelled"
    assert only_job(lab).state == "cancelled"
    assert lab.service.approvals.pending == {}
    [end] = events(lab, "end")
    assert end["outcome"] == "cancelled" and end["scan_id"] == scan_id
    assert lab.runner.calls == []


async def test_client_error_to_the_question_declines_the_scan(lab_service: Callable[..., LabService]) -> None:
    lab = lab_service(APPROVAL, runner=SpyRunner(), privilege_mode="connect")

    async def broken(context: Any, params: Any) -> ErrorData:
        return ErrorData(code=INTERNAL_ERROR, message="the approval dialog crashed")

    async with Client(build_server(lab.service), mode="legacy", elicitation_callback=broken) as client:
        result = await client.call_tool("nmap_scan", CALL)

    assert body(result)["rule"] == "approval_declined"
    assert "could not ask" in body(result)["message"] and "dialog crashed" in body(result)["message"]
    [decided] = events(lab, "approval")
    assert decided["decision"] == "unanswerable"
    assert lab.runner.calls == []


@pytest.mark.parametrize("mode", ERAS)
async def test_approved_real_version_scan_of_loopback(tmp_path: Path, mode: str) -> None:
    # A real nmap: -sV needs approval on any host; the one port is closed, so no probe is sent.
    service = loopback_service(tmp_path, {"approval": {"nmap_version_detection_max_hosts": 0}})
    human = Human(approve())
    port = closed_port()
    async with Client(build_server(service), mode=mode, elicitation_callback=human) as client:
        result = await client.call_tool(
            "nmap_scan", {"target": "127.0.0.1", "ports": str(port), "scan_type": "version"}
        )

    assert not result.is_error, result.content
    report = body(result)
    assert report["status"] == "completed" and "-sV" in report["argv"]
    assert [host["address"] for host in report["hosts"]] == ["127.0.0.1"]
    assert shlex.join(report["argv"]) in human.questions[0]
