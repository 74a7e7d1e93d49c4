"""The policy's approval rules: what needs a human's yes, globally and, stricter only, per
engagement (README "Approval"). Data only; `appliance.policy.approval` applies them to a plan."""

from __future__ import annotations

from pydantic import Field

from appliance.policy.fields import Strict

# The SDK's default requestState lifetime (RequestStateSecurity ttl, 600 s): a 2026-07-28 answer
# must come back while the sealed state that names its job is still valid.
MAX_APPROVAL_TIMEOUT_SECONDS = 600


class ApprovalRules(Strict):
    """What needs a human's approval before it runs (README "Approval"). Unset: nothing does."""

    approval_timeout_seconds: int = Field(
        default=300,
        ge=1,
        le=MAX_APPROVAL_TIMEOUT_SECONDS,
        description="How long a scan waits in awaiting_approval; without an answer it ends approval_declined.",
    )
    nmap_version_detection_max_hosts: int | None = Field(
        default=None,
        ge=0,
        le=65536,
        description="nmap version detection (-sV) on more hosts than this needs approval (0: on any). Unset: never.",
    )
    nmap_scripts: bool = Field(default=False, description="Any NSE script (--script) needs approval.")
    masscan_rate_above: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="masscan above this rate (packets/s) needs approval. Unset: never.",
    )


class EngagementApproval(Strict):
    """An engagement's own approval rules: each can only add to the global ones (a lower host
    count or rate, scripts on, a shorter timeout); unset keys leave the global rule as it is."""

    approval_timeout_seconds: int | None = Field(
        default=None, ge=1, le=MAX_APPROVAL_TIMEOUT_SECONDS, description="Shorter than the global timeout only."
    )
    nmap_version_detection_max_hosts: int | None = Field(default=None, ge=0, le=65536)
    nmap_scripts: bool = Field(default=False, description="true: NSE scripts need approval in this engagement.")
    masscan_rate_above: int | None = Field(default=None, ge=0, le=1_000_000)


def _lower(first: int | None, second: int | None) -> int | None:
    present = [value for value in (first, second) if value is not None]
    return min(present) if present else None


def stricter(rules: ApprovalRules, engagement: EngagementApproval | None) -> ApprovalRules:
    """The global rules tightened by an engagement's: never looser than either."""
    if engagement is None:
        return rules
    timeout = engagement.approval_timeout_seconds
    return ApprovalRules(
        approval_timeout_seconds=rules.approval_timeout_seconds
        if timeout is None
        else min(timeout, rules.approval_timeout_seconds),
        nmap_version_detection_max_hosts=_lower(
            rules.nmap_version_detection_max_hosts, engagement.nmap_version_detection_max_hosts
        ),
        nmap_scripts=rules.nmap_scripts or engagement.nmap_scripts,
        masscan_rate_above=_lower(rules.masscan_rate_above, engagement.masscan_rate_above),
    )
