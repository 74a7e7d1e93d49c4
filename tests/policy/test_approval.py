"""Which plans need a human's approval: the pure check, as tables of plans and policy rules."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.policy.approval import approval_reasons
from appliance.policy.approval_rules import ApprovalRules, EngagementApproval, stricter
from appliance.policy.targets import CheckedTarget
from appliance.tools.base import ScanPlan

NMAP = ("/usr/bin/nmap", "-n", "-oX", "-", "-sT")


def plan(tool: str, argv: tuple[str, ...], hosts: int = 1, rate: int = 0) -> ScanPlan:
    kind = "ip" if hosts == 1 else "cidr"
    target = CheckedTarget("10.20.0.0/28", kind, "10.20.0.0/28", None, (), hosts)  # type: ignore[arg-type]
    return ScanPlan(tool, target, argv, 60, {}, findings=lambda: None, rate=rate)  # type: ignore[arg-type,return-value]


ANY_VERSION_SCAN: dict[str, Any] = {"nmap_version_detection_max_hosts": 0}
STRICT: dict[str, Any] = {"nmap_version_detection_max_hosts": 16, "nmap_scripts": True, "masscan_rate_above": 500}

SAFE = [
    # safe: the default policy asks for nothing, whatever the plan
    ({}, plan("nmap_scan", (*NMAP, "-sV", "--script", "banner", "10.20.0.0/24"), hosts=256)),
    ({}, plan("masscan_scan", ("/usr/bin/masscan", "10.20.0.0/24", "--rate", "100000"), rate=100000)),
    # safe: version detection on exactly the limit
    (STRICT, plan("nmap_scan", (*NMAP, "-sV", "10.20.0.0/28"), hosts=16)),
    # safe: many hosts without -sV
    (STRICT, plan("nmap_scan", (*NMAP, "10.20.0.0/24"), hosts=256)),
    # safe: scripts while the policy does not ask for scripts
    ({"nmap_scripts": False}, plan("nmap_scan", (*NMAP, "--script", "banner", "10.20.0.5"))),
    # safe: masscan at the threshold itself
    (STRICT, plan("masscan_scan", ("/usr/bin/masscan", "10.20.0.5", "--rate", "500"), rate=500)),
    # safe: a masscan plan is never judged by nmap's rules (its argv may not hold -sV anyway)
    (ANY_VERSION_SCAN, plan("masscan_scan", ("/usr/bin/masscan", "-sV"), hosts=2, rate=1)),
    # safe: gobuster has no approval rules
    (STRICT, plan("gobuster_scan", ("/usr/bin/gobuster", "dir", "-u", "http://10.20.0.5/"), rate=0)),
]

UNSAFE = [
    # unsafe: version detection on one host more than the limit
    (STRICT, plan("nmap_scan", (*NMAP, "-sV", "10.20.0.0/27"), hosts=17), ["nmap_version_detection_max_hosts"]),
    # unsafe: limit 0 means any version scan
    (ANY_VERSION_SCAN, plan("nmap_scan", (*NMAP, "-sV", "10.20.0.5")), ["nmap_version_detection_max_hosts"]),
    # unsafe: any NSE script
    (STRICT, plan("nmap_scan", (*NMAP, "--script", "banner", "10.20.0.5")), ["nmap_scripts"]),
    # unsafe: masscan one packet/s above the threshold
    (STRICT, plan("masscan_scan", ("masscan", "10.20.0.5", "--rate", "501"), rate=501), ["masscan_rate_above"]),
    # unsafe: two reasons at once, each named
    (
        STRICT,
        plan("nmap_scan", (*NMAP, "-sV", "--script", "http-title", "10.20.0.0/24"), hosts=256),
        ["nmap_version_detection_max_hosts", "nmap_scripts"],
    ),
]


@pytest.mark.parametrize(("rules", "checked"), SAFE)
def test_plan_needs_no_approval(rules: dict[str, Any], checked: ScanPlan) -> None:
    assert approval_reasons(checked, ApprovalRules(**rules)) == ()


@pytest.mark.parametrize(("rules", "checked", "expected"), UNSAFE)
def test_plan_needs_approval_with_named_reasons(rules: dict[str, Any], checked: ScanPlan, expected: list[str]) -> None:
    reasons = approval_reasons(checked, ApprovalRules(**rules))
    assert [reason.rule for reason in reasons] == expected
    assert all(reason.text for reason in reasons)


def test_script_reason_names_the_scripts() -> None:
    checked = plan("nmap_scan", (*NMAP, "--script", "banner,ssl-cert", "10.20.0.5"))
    [reason] = approval_reasons(checked, ApprovalRules(nmap_scripts=True))
    assert "banner,ssl-cert" in reason.text


@pytest.mark.parametrize("timeout", [0, 601])
def test_approval_timeout_is_bounded_by_the_request_state_lifetime(timeout: int) -> None:
    with pytest.raises(ValueError, match="approval_timeout_seconds"):
        ApprovalRules(approval_timeout_seconds=timeout)


GLOBAL = ApprovalRules(approval_timeout_seconds=300, nmap_version_detection_max_hosts=16, masscan_rate_above=500)


@pytest.mark.parametrize(
    ("engagement", "expected"),
    [
        # unsafe attempts to loosen: an engagement's higher limits, longer timeout or scripts off change nothing
        (
            {"nmap_version_detection_max_hosts": 256, "masscan_rate_above": 10000, "approval_timeout_seconds": 600},
            {"nmap_version_detection_max_hosts": 16, "masscan_rate_above": 500, "approval_timeout_seconds": 300},
        ),
        ({"nmap_scripts": False}, {"nmap_scripts": False}),
        # safe tightening: lower limits, scripts on, a shorter timeout
        (
            {"nmap_version_detection_max_hosts": 4, "masscan_rate_above": 100, "approval_timeout_seconds": 60},
            {"nmap_version_detection_max_hosts": 4, "masscan_rate_above": 100, "approval_timeout_seconds": 60},
        ),
        ({"nmap_scripts": True}, {"nmap_scripts": True}),
    ],
)
def test_engagement_approval_rules_only_tighten(engagement: dict[str, Any], expected: dict[str, Any]) -> None:
    merged = stricter(GLOBAL, EngagementApproval(**engagement))
    assert {key: getattr(merged, key) for key in expected} == expected


def test_engagement_sets_a_rule_the_global_policy_leaves_off() -> None:
    merged = stricter(ApprovalRules(), EngagementApproval(masscan_rate_above=200))
    assert merged.masscan_rate_above == 200 and merged.nmap_version_detection_max_hosts is None
