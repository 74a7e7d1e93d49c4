"""tools/list per caller: with engagements, each principal sees the scan tools its engagements allow."""

from __future__ import annotations

from collections.abc import Callable

from support import LabService
from support.engagements import FixedClock, engagement, with_engagements

from appliance.policy.engagement_checks import Caller
from appliance.server import JOB_TOOLS, ScannerServer

TWO = with_engagements(
    engagement("red", ["alice", "carol"], tools={"nmap_scan": {}, "masscan_scan": {}}),
    engagement("blue", ["bob", "carol"], networks=["10.20.2.0/24"], tools={"gobuster_scan": {}}),
)


def names(server: ScannerServer, caller: Caller) -> set[str]:
    return {tool.name for tool in server.tools_for(caller)}


def test_each_principal_sees_only_its_engagements_tools(lab_service: Callable[..., LabService]) -> None:
    server = ScannerServer(lab_service(TWO, wall_clock=FixedClock()).service)

    assert names(server, Caller("alice")) == {"nmap_scan", "masscan_scan", *JOB_TOOLS}
    assert names(server, Caller("bob")) == {"gobuster_scan", *JOB_TOOLS}
    assert names(server, Caller("carol")) == {"nmap_scan", "masscan_scan", "gobuster_scan", *JOB_TOOLS}
    assert names(server, Caller("mallory")) == set(JOB_TOOLS)


def test_with_engagements_scan_tools_take_an_engagement_argument(lab_service: Callable[..., LabService]) -> None:
    server = ScannerServer(lab_service(TWO).service)

    schema = next(t for t in server.tools_for(Caller("alice")) if t.name == "nmap_scan").input_schema

    assert "engagement" in schema["properties"]
    assert "engagement" not in schema.get("required", [])


def test_without_engagements_every_caller_sees_every_tool_and_no_engagement_argument(
    lab_service: Callable[..., LabService],
) -> None:
    server = ScannerServer(lab_service().service)

    tools = server.tools_for(Caller("mallory"))

    assert {t.name for t in tools} == set(server.tools)
    assert all("engagement" not in t.input_schema["properties"] for t in tools)
