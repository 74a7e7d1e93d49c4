"""Which checked plans need a human's approval before they run: a pure function of the plan and
the policy's `approval` section, each reason named.

Decided from the plan, not the request: the argv is what would run, so a flag that reaches the
scanner by any route (scan_type, scripts, a default the policy adds) is seen the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.policy.approval_rules import ApprovalRules, stricter
from appliance.policy.model import Policy
from appliance.tools.base import ScanPlan


@dataclass(frozen=True)
class ApprovalReason:
    """Why a plan needs approval: `rule` is the policy key that asks for it, `text` the human's."""

    rule: str
    text: str


def approval_reasons(plan: ScanPlan, rules: ApprovalRules) -> tuple[ApprovalReason, ...]:
    """The reasons `plan` needs approval under `rules`; empty when it runs without one.

    Does not cover whether the plan is allowed at all (the scope check ran before and refused what
    the policy forbids) nor who may approve (the caller's own client answers).
    """
    reasons: list[ApprovalReason] = []
    argv = plan.argv
    hosts = plan.target.host_count
    limit = rules.nmap_version_detection_max_hosts
    if plan.tool == "nmap_scan" and limit is not None and "-sV" in argv and hosts > limit:
        reasons.append(
            ApprovalReason(
                "nmap_version_detection_max_hosts",
                f"version detection (-sV) on {hosts} host(s), more than the policy's {limit} without approval",
            )
        )
    if plan.tool == "nmap_scan" and rules.nmap_scripts and "--script" in argv:
        scripts = argv[argv.index("--script") + 1]
        reasons.append(ApprovalReason("nmap_scripts", f"NSE scripts ({scripts}) need approval"))
    above = rules.masscan_rate_above
    if plan.tool == "masscan_scan" and above is not None and plan.rate > above:
        reasons.append(
            ApprovalReason(
                "masscan_rate_above", f"masscan at {plan.rate} packets/s, above the policy's {above} without approval"
            )
        )
    return tuple(reasons)


def approval_rules(policy: Policy, engagement: str | None) -> ApprovalRules:
    """The rules a plan in `engagement` (None: no engagements) is judged by."""
    found = None if engagement is None else policy.engagement(engagement)
    return stricter(policy.approval, None if found is None else found.approval)
