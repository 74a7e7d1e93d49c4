"""Engagements: who may scan what, when, with which tools, under which budget (policy version 3).

An engagement only ever narrows the global scope. Its networks must lie inside the global
`allow_networks` (or inside loopback when the global scope opens it): a network outside is a
policy error naming it, never silently intersected, because an operator who wrote a range
expects it to be scannable, and a typo must not pass as a narrower scope. Its hostname
suffixes must sit under a global suffix. Its budget and options can only tighten what the
global policy allows (the global checks still run first, on every call).

Not covered here: whether a caller is in an engagement and what a call may do in it (that is
`engagement_checks.py`, run per call); the global deny list, which always applies.
"""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from appliance.policy.approval_rules import EngagementApproval
from appliance.policy.fields import IPNetwork, NetworkLists, Strict, within

ENGAGEMENT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
CLAIM_NAME = re.compile(r"[A-Za-z0-9_:.-]{1,64}")
# The request fields an engagement may restrict, per tool (a test keeps them equal to the
# request models' fields; named here because the policy loads before the tools do).
OPTION_FIELDS: dict[str, tuple[str, ...]] = {
    "nmap_scan": ("scan_type", "timing", "scripts", "extra_args"),
    "masscan_scan": ("extra_args",),
    "gobuster_scan": ("mode", "wordlist", "extensions", "extra_args"),
}
OptionValue = str | int


class Principals(Strict):
    """Who is in the engagement: a token subject listed, or a token claim holding a listed value."""

    subjects: list[str] = Field(
        default_factory=list,
        description="Token subjects (static tokens: the tokens file's principal; stdio: 'stdio').",
    )
    claims: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Claim name -> values: a token whose claim equals one of them (or, for a list claim, "
        "holds one) is in, e.g. groups: [red-team].",
    )

    @field_validator("claims")
    @classmethod
    def _claim_names(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, wanted in value.items():
            if not CLAIM_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a claim name")
            if not wanted:
                raise ValueError(f"claim {name!r} lists no value")
        return value

    @model_validator(mode="after")
    def _someone(self) -> Principals:
        if not self.subjects and not self.claims:
            raise ValueError("an engagement needs at least one subject or claim")
        return self


class EngagementScope(NetworkLists):
    allow_networks: list[str] = Field(
        default_factory=list, description="Inside the global allow_networks; addresses outside are refused."
    )
    deny_networks: list[str] = Field(default_factory=list, description="Never scanned in this engagement.")
    allow_hostname_suffixes: list[str] = Field(
        default_factory=list, description="Under a global suffix; names outside are refused before any lookup."
    )


class Window(Strict):
    """When the engagement may scan: from `not_before` to `not_after`, local times in `timezone`."""

    not_before: str = Field(description="ISO date and time without offset, e.g. 2026-12-01T09:00, in timezone.")
    not_after: str = Field(description="ISO date and time without offset; scans still running then are stopped.")
    timezone: str = Field(description="An IANA time zone (zoneinfo), e.g. Europe/Berlin or UTC.")

    @field_validator("timezone")
    @classmethod
    def _zone_known(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not a time zone this system knows (tzdata)") from exc
        return value

    @field_validator("not_before", "not_after")
    @classmethod
    def _local_time(cls, value: str) -> str:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an ISO date and time such as 2026-12-01T09:00") from exc
        if parsed.tzinfo is not None:
            raise ValueError(f"{value!r} carries an offset; write the local time and name the zone in timezone")
        return value

    def bounds(self) -> tuple[float, float]:
        """The window as POSIX timestamps (start inclusive, end exclusive)."""
        zone = ZoneInfo(self.timezone)
        start = datetime.fromisoformat(self.not_before).replace(tzinfo=zone)
        end = datetime.fromisoformat(self.not_after).replace(tzinfo=zone)
        return start.timestamp(), end.timestamp()

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        start, end = self.bounds()
        if start >= end:
            raise ValueError("not_before must be earlier than not_after")
        return self


class Budget(Strict):
    """What the engagement may spend; unset values fall back to the limits table and the tool rules."""

    hosts_per_hour: int | None = Field(
        default=None, ge=1, le=16_777_216, description="Addresses scanned in any 60 minutes (dry runs do not count)."
    )
    masscan_max_rate: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Packets per second shared by this engagement's masscan calls."
    )
    concurrent_scans: int | None = Field(
        default=None, ge=1, le=256, description="Scans queued or running at once (default: the limits table's)."
    )


class Engagement(Strict):
    name: str
    principals: Principals
    scope: EngagementScope = Field(default_factory=EngagementScope)
    window: Window
    tools: dict[str, dict[str, list[OptionValue]]] = Field(
        description="Tool name -> {request field: allowed values}; an empty mapping allows the tool with every "
        "option the global policy allows. Tools not named are refused."
    )
    budget: Budget = Field(default_factory=Budget)
    approval: EngagementApproval | None = Field(
        default=None, description='Stricter approval rules in this engagement (README "Approval"); unset: the global.'
    )

    @field_validator("name")
    @classmethod
    def _name_form(cls, value: str) -> str:
        if not ENGAGEMENT_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not an engagement name (lower-case letters, digits, - and _)")
        return value

    @field_validator("tools")
    @classmethod
    def _tools_known(cls, value: dict[str, dict[str, list[OptionValue]]]) -> dict[str, dict[str, list[OptionValue]]]:
        for tool, options in value.items():
            if tool not in OPTION_FIELDS:
                raise ValueError(f"{tool!r} is not a scan tool ({', '.join(OPTION_FIELDS)})")
            for option in options:
                if option not in OPTION_FIELDS[tool]:
                    raise ValueError(
                        f"{tool} option {option!r} cannot be restricted; restrictable: {', '.join(OPTION_FIELDS[tool])}"
                    )
        return value


def engagement_problems(
    engagements: list[Engagement],
    *,
    allowed: tuple[IPNetwork, ...],
    loopback: tuple[IPNetwork, ...],
    suffixes: list[str],
    masscan_max_rate: int,
) -> list[str]:
    """Every way `engagements` would widen the global scope or contradict each other, each named."""
    problems: list[str] = []
    seen: set[str] = set()
    for engagement in engagements:
        where = f"engagements.{engagement.name}"
        if engagement.name in seen:
            problems.append(f"{where}: the name is used twice")
        seen.add(engagement.name)
        outer = allowed + loopback
        for text, net in zip(engagement.scope.allow_networks, engagement.scope.allowed(), strict=True):
            if not any(within(net, globally) for globally in outer):
                problems.append(
                    f"{where}.scope.allow_networks: {text} is outside the global scope.allow_networks "
                    "(an engagement can only narrow it)"
                )
        for suffix in engagement.scope.allow_hostname_suffixes:
            if not any(suffix == g or suffix.endswith(g) for g in suffixes):
                problems.append(
                    f"{where}.scope.allow_hostname_suffixes: {suffix} is not under a global allow_hostname_suffixes"
                )
        rate = engagement.budget.masscan_max_rate
        if rate is not None and rate > masscan_max_rate:
            problems.append(
                f"{where}.budget.masscan_max_rate: {rate} exceeds the global tools.masscan_scan.max_rate "
                f"{masscan_max_rate}"
            )
    return problems
