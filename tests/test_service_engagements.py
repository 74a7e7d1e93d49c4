"""Engagements through ScanService's one check path, with an injected wall clock.

Refusals use the spy runner (no scanner may start); admitted scans use the gated fake scanner
(tests/support/runners.GatedRunner), so a scan crossing the window's end is decided by the
test, not by a real network. Lab addresses only; nothing is sent anywhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import GatedRunner, LabService
from support.engagements import CLOSES, DURING, OPENS, WINDOW, FixedClock, engagement, with_engagements

from appliance.errors import ApplianceError
from appliance.jobs.queries import GetScanRequest, JobQueries
from appliance.policy.engagement_checks import Caller
from appliance.tools import TOOLS

pytestmark = pytest.mark.anyio

NMAP = TOOLS["nmap_scan"]
XML = (Path(__file__).resolve().parent / "fixtures" / "nmap" / "connect.xml").read_bytes()
TWO = with_engagements(
    engagement(
        "red",
        ["alice", "carol"],
        networks=["10.20.1.0/24"],
        suffixes=[".red.lab.internal"],
        tools={"nmap_scan": {"scan_type": ["connect"]}},
        budget={"hosts_per_hour": 8, "concurrent_scans": 1},
    ),
    engagement("blue", ["bob", "carol"], networks=["10.20.2.0/24"], tools={"nmap_scan": {}, "gobuster_scan": {}}),
)


def lab_in(lab_service: Callable[..., LabService], clock: FixedClock, runner: Any = None, **policy: Any) -> LabService:
    return lab_service({**TWO, **policy}, runner=runner, privilege_mode="connect", wall_clock=clock)


async def refusal(lab: LabService, arguments: dict[str, Any], who: str, tool: str = "nmap_scan") -> ApplianceError:
    with pytest.raises(ApplianceError) as refused:
        await lab.service.call(TOOLS[tool], arguments, "r1", principal=who)
    return refused.value


@pytest.mark.parametrize(
    ("now", "who", "arguments", "tool", "rule"),
    [
        # unsafe: every engagement rule, one call each; the spy runner must stay unused
        (OPENS - 60, "alice", {"target": "10.20.1.5"}, "nmap_scan", "engagement_not_started"),
        (CLOSES, "alice", {"target": "10.20.1.5"}, "nmap_scan", "engagement_ended"),
        (DURING, "alice", {"target": "10.20.2.5"}, "nmap_scan", "target_outside_engagement"),
        (DURING, "alice", {"target": "10.20.1.0/28"}, "nmap_scan", "engagement_budget_exhausted"),
        (DURING, "alice", {"target": "10.20.1.5", "scan_type": "ping"}, "nmap_scan", "option_not_in_engagement"),
        (DURING, "alice", {"target": "http://10.20.1.5/"}, "gobuster_scan", "tool_not_in_engagement"),
        (DURING, "mallory", {"target": "10.20.1.5"}, "nmap_scan", "no_engagement"),
        (DURING, "carol", {"target": "10.20.1.5"}, "nmap_scan", "engagement_required"),
        (DURING, "alice", {"target": "10.20.1.5", "engagement": "blue"}, "nmap_scan", "engagement_unknown"),
        # the global policy first: a globally denied target never reaches the engagement checks
        (CLOSES, "alice", {"target": "10.20.99.5"}, "nmap_scan", "target_denied_policy"),
    ],
)
async def test_engagement_refusal_is_named_audited_and_counted(
    lab_service: Callable[..., LabService], now: float, who: str, arguments: dict[str, Any], tool: str, rule: str
) -> None:
    lab = lab_in(lab_service, FixedClock(now))

    error = await refusal(lab, arguments, who, tool)

    assert error.rule == rule
    assert error.message
    assert error.recovery_suggestion
    assert lab.runner.calls == []
    audited = [line for line in lab.audit_lines() if line.get("verdict") == "refused"]
    assert [(line["rule"], line["principal"]) for line in audited] == [(rule, who)]
    assert lab.metric("appliance_scope_refusals_total", tool=tool, rule=rule) == 1


# safe
async def test_a_call_inside_its_engagement_is_allowed_and_names_it(lab_service: Callable[..., LabService]) -> None:
    lab = lab_in(lab_service, FixedClock())

    report = await lab.service.call(NMAP, {"target": "10.20.1.5", "dry_run": True}, "r1", principal="alice")
    named = await lab.service.call(
        NMAP, {"target": "10.20.2.5", "engagement": "blue", "dry_run": True}, "r2", principal="carol"
    )

    assert report.status == named.status == "dry_run"
    allowed = [line for line in lab.audit_lines() if line.get("verdict") == "allowed"]
    assert [line["engagement"] for line in allowed] == ["red", "blue"]
    assert lab.runner.calls == []


async def test_a_claim_of_the_token_places_the_caller(lab_service: Callable[..., LabService]) -> None:
    caller = Caller("client-9", subject="dave", claims={"groups": ["red-team"]})
    policy = with_engagements(engagement("red", claims={"groups": ["red-team"]}))
    lab = lab_service(policy, privilege_mode="connect", wall_clock=FixedClock())

    report = await lab.service.call(NMAP, {"target": "10.20.1.5", "dry_run": True}, "r1", caller=caller)

    assert report.status == "dry_run"


async def test_without_engagements_an_engagement_argument_is_refused(lab_service: Callable[..., LabService]) -> None:
    lab = lab_service(privilege_mode="connect")

    error = await refusal(lab, {"target": "10.20.1.5", "engagement": "red", "dry_run": True}, "alice")
    allowed = await lab.service.call(NMAP, {"target": "10.20.7.5", "dry_run": True}, "r2", principal="alice")

    assert error.rule == "engagement_unknown"
    assert allowed.status == "dry_run"


async def test_the_job_records_its_engagement_and_the_budget_is_given_back(
    lab_service: Callable[..., LabService],
) -> None:
    runner = GatedRunner(XML)
    lab = lab_in(lab_service, FixedClock(), runner)
    first = await lab.service.call(NMAP, {"target": "10.20.1.5", "wait_seconds": 0}, "r1", principal="alice")
    await asyncio.wait_for(runner.started.wait(), 5)

    # concurrent_scans 1: carol's call in red is refused while alice's runs, not queued
    busy = await refusal(lab, {"target": "10.20.1.6", "engagement": "red", "wait_seconds": 0}, "carol")
    runner.gate.set()
    assert first.scan_id is not None
    done = await JobQueries(lab.service.jobs, lambda: lab.service.store.current.policy).get_scan(
        GetScanRequest(scan_id=first.scan_id, wait_seconds=10), "alice"
    )
    again = await lab.service.call(NMAP, {"target": "10.20.1.6", "wait_seconds": 10}, "r3", principal="alice")

    assert busy.rule == "engagement_budget_exhausted"
    assert "concurrent" in busy.message
    assert done.state == "completed"
    assert done.engagement == "red"
    assert again.status == "completed"


async def test_hosts_per_hour_counts_admitted_scans_not_dry_runs(lab_service: Callable[..., LabService]) -> None:
    runner = GatedRunner(XML)
    runner.gate.set()
    clock = FixedClock()
    lab = lab_in(lab_service, clock, runner)
    for _ in range(3):
        await lab.service.call(NMAP, {"target": "10.20.1.0/30", "dry_run": True}, "dry", principal="alice")
    await lab.service.call(NMAP, {"target": "10.20.1.0/30", "wait_seconds": 10}, "r1", principal="alice")
    await lab.service.call(NMAP, {"target": "10.20.1.4/30", "wait_seconds": 10}, "r2", principal="alice")

    spent = await refusal(lab, {"target": "10.20.1.8", "wait_seconds": 10}, "alice")
    clock.now += 3600
    later = await lab.service.call(NMAP, {"target": "10.20.1.8", "wait_seconds": 10}, "r4", principal="alice")

    assert spent.rule == "engagement_budget_exhausted"
    assert "8 of its 8 hosts per hour" in spent.message
    assert later.status == "completed"
    assert len(runner.calls) == 3


async def test_a_scan_running_at_the_windows_end_stops_and_keeps_its_findings(
    lab_service: Callable[..., LabService],
) -> None:
    runner = GatedRunner(XML)  # runs until the gate opens, which this test never does
    clock = FixedClock(CLOSES - 0.2)  # the window ends 0.2 s into the scan
    lab = lab_in(lab_service, clock, runner)

    report = await lab.service.call(NMAP, {"target": "10.20.1.5", "wait_seconds": 30}, "r1", principal="alice")

    assert runner.started.is_set()
    assert not runner.gate.is_set()
    assert report.status == "partial"
    assert report.partial
    assert report.partial_reason == "engagement_ended"
    assert report.hosts  # type: ignore[attr-defined]
    assert report.scan_id is not None
    job = lab.service.jobs.visible(report.scan_id, "alice")
    assert job.state == "partial"
    assert job.result is not None
    assert job.result["partial_reason"] == "engagement_ended"
    end = [line for line in lab.audit_lines() if line.get("event") == "end"]
    assert [(line["outcome"], line["state"], line["engagement"]) for line in end] == [("partial", "partial", "red")]


async def test_a_shutdown_during_an_engagement_scan_is_still_a_shutdown(
    lab_service: Callable[..., LabService],
) -> None:
    runner = GatedRunner(XML)
    lab = lab_in(lab_service, FixedClock(), runner)
    call = asyncio.create_task(
        lab.service.call(NMAP, {"target": "10.20.1.5", "wait_seconds": 30}, "r1", principal="alice")
    )
    await asyncio.wait_for(runner.started.wait(), 5)

    lab.service.stop_scans.set()
    report = await asyncio.wait_for(call, 10)

    assert report.partial_reason == "shutdown"
    assert report.status == "interrupted"


async def test_a_job_queued_past_its_windows_end_never_starts(lab_service: Callable[..., LabService]) -> None:
    # One nmap slot: bob's blue scan holds it while alice's red call waits; red's window ends first.
    runner = GatedRunner(XML)
    clock = FixedClock()
    early = engagement("red", ["alice"], window={**WINDOW, "not_after": "2026-12-01T11:00"})
    policy = with_engagements(early, engagement("blue", ["bob"], networks=["10.20.2.0/24"]))
    one_slot = {"limits": {"concurrency": {"per_tool": {"nmap_scan": {"running": 1, "queued": 4}}}}}
    lab = lab_service({**policy, **one_slot}, runner=runner, privilege_mode="connect", wall_clock=clock)
    await lab.service.call(NMAP, {"target": "10.20.2.5", "wait_seconds": 0}, "r1", principal="bob")
    await asyncio.wait_for(runner.started.wait(), 5)
    queued = await lab.service.call(NMAP, {"target": "10.20.1.5", "wait_seconds": 0}, "r2", principal="alice")
    assert queued.status == "queued"
    assert queued.scan_id is not None

    clock.now = CLOSES - 6 * 3600  # 12:00 in Berlin: red ended an hour ago, blue goes on
    runner.gate.set()
    job = await JobQueries(lab.service.jobs, lambda: lab.service.store.current.policy).get_scan(
        GetScanRequest(scan_id=queued.scan_id, wait_seconds=10), "alice"
    )

    assert job.state == "failed"
    assert job.error is not None
    assert job.error["rule"] == "engagement_ended"
    assert len(runner.calls) == 1  # bob's scan only
    refused = [line for line in lab.audit_lines() if line.get("rule") == "engagement_ended"]
    assert [(line["scan_id"], line["engagement"]) for line in refused] == [(queued.scan_id, "red")]
