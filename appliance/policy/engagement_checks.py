"""Per-call engagement checks: which engagement a call runs in, and whether it may run there now.

Pure functions over a loaded policy, the caller and an injected time; each refusal names its
rule and what to do. They run after the global checks (`ScanService.check`), on a plan whose
target the global scope already accepted, so they only ever narrow.

Not covered: budgets (`appliance.resilience.budgets`, they need state) and stopping a scan at
the window's end (the service's run path).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from appliance.errors import ValidationError
from appliance.policy.engagements import Engagement
from appliance.policy.model import Policy
from appliance.policy.targets import CheckedTarget

# Wall-clock time as POSIX seconds; injected so tests can stand before, in and after a window.
Clock = Callable[[], float]


@dataclass(frozen=True)
class Caller:
    """Who calls, as far as engagements care: the job owner, the token's subject, claims and scopes."""

    principal: str
    subject: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    scopes: tuple[str, ...] = ()

    @property
    def who(self) -> str:
        """The name engagements list in `principals.subjects`: the subject, else the principal."""
        return self.subject or self.principal


def is_member(engagement: Engagement, caller: Caller) -> bool:
    """A listed subject, or a claim whose value (or one of whose list values) the engagement lists."""
    wanted = engagement.principals
    if caller.who in wanted.subjects:
        return True
    for name, values in wanted.claims.items():
        held = caller.claims.get(name)
        held_values = held if isinstance(held, list) else [held]
        if any(isinstance(v, str) and v in values for v in held_values):
            return True
    return False


def engagements_of(policy: Policy, caller: Caller) -> list[Engagement]:
    return [e for e in policy.engagements or () if is_member(e, caller)]


def choose(policy: Policy, caller: Caller, requested: str | None) -> Engagement | None:
    """The engagement this call runs in; None when the policy has no engagements (global scope only)."""
    if policy.engagements is None:
        if requested is not None:
            raise ValidationError(
                f"this appliance's policy has no engagements, so engagement {requested[:64]!r} does not exist",
                rule="engagement_unknown",
                recovery_suggestion="Call again without the engagement argument.",
            )
        return None
    mine = engagements_of(policy, caller)
    names = ", ".join(e.name for e in mine)
    if requested is not None:
        chosen = next((e for e in mine if e.name == requested), None)
        if chosen is None:
            # The same answer for an engagement that does not exist and one the caller is not in.
            raise ValidationError(
                f"you are in no engagement named {requested[:64]!r}",
                rule="engagement_unknown",
                recovery_suggestion=f"Your engagements: {names}." if mine else "Ask the operator to add you to one.",
            )
        return chosen
    if not mine:
        raise ValidationError(
            f"{caller.who} is in no engagement of this appliance's policy, and every scan runs in one",
            rule="no_engagement",
            recovery_suggestion="Ask the operator to add your subject or group to an engagement of the policy.",
        )
    if len(mine) > 1:
        raise ValidationError(
            f"you are in several engagements ({names}); the call must name one",
            rule="engagement_required",
            recovery_suggestion=f"Pass the argument engagement with one of: {names}.",
        )
    return mine[0]


def _local(timestamp: float, engagement: Engagement) -> str:
    zone = ZoneInfo(engagement.window.timezone)
    return datetime.fromtimestamp(timestamp, UTC).astimezone(zone).isoformat(timespec="minutes")


def check_window(engagement: Engagement, now: float) -> None:
    start, end = engagement.window.bounds()
    zone = engagement.window.timezone
    if now < start:
        raise ValidationError(
            f"engagement {engagement.name} starts at {_local(start, engagement)} ({zone}); it is "
            f"{_local(now, engagement)} now",
            rule="engagement_not_started",
            recovery_suggestion=f"Scan from {_local(start, engagement)} on, or ask the operator to move the window.",
        )
    if now >= end:
        raise ValidationError(
            f"engagement {engagement.name} ended at {_local(end, engagement)} ({zone}); no scan runs in it any more",
            rule="engagement_ended",
            recovery_suggestion="Ask the operator for a new window or another engagement; earlier scans stay readable.",
        )


def check_tool(engagement: Engagement, tool: str, arguments: Mapping[str, Any]) -> None:
    """The tool must be named by the engagement, and each restricted option take a listed value."""
    if tool not in engagement.tools:
        allowed = ", ".join(sorted(engagement.tools)) or "none"
        raise ValidationError(
            f"engagement {engagement.name} does not include {tool}",
            rule="tool_not_in_engagement",
            recovery_suggestion=f"Tools of this engagement: {allowed}.",
        )
    for option, allowed_values in engagement.tools[tool].items():
        value = arguments.get(option)
        for item in _option_items(option, value):
            if item not in allowed_values:
                shown = ", ".join(str(v) for v in allowed_values) or "none"
                raise ValidationError(
                    f"{tool} {option} {item!r} is not allowed in engagement {engagement.name}",
                    rule="option_not_in_engagement",
                    recovery_suggestion=f"{option} may be: {shown}.",
                )


def _option_items(option: str, value: Any) -> Sequence[Any]:
    """The values of one option a caller chose: list items, extra_args' flag names, or the value."""
    if value is None:
        return ()
    if option == "extra_args":
        # Flags by name (`--max-rate=5` is `--max-rate`); their values were checked globally.
        return [arg.partition("=")[0] for arg in value if isinstance(arg, str) and arg.startswith("-")]
    return list(value) if isinstance(value, list) else [value]


def check_target(engagement: Engagement, target: CheckedTarget) -> None:
    """Every address the scan reaches in the engagement's networks, none in its denials; a name
    under one of its suffixes. (The global checks already passed: this only narrows.)"""
    scope = engagement.scope
    if target.hostname is not None:
        name = target.hostname
        if not any(name.endswith(s) or name == s[1:] for s in scope.allow_hostname_suffixes):
            raise _outside(engagement, f"{name!r} is not under its names ({_list(scope.allow_hostname_suffixes)})")
    addresses = [ipaddress.ip_network(a) for a in target.addresses]
    if target.kind == "cidr":
        addresses = [ipaddress.ip_network(target.scan_arg)]
    for net in addresses:
        for denied in scope.denied():
            if net.version == denied.version and net.overlaps(denied):
                raise _outside(engagement, f"{net} is on its deny list ({denied})")
        if not any(net.version == a.version and net.subnet_of(a) for a in scope.allowed()):  # type: ignore[arg-type]
            raise _outside(engagement, f"{net} is not inside its networks ({_list(scope.allow_networks)})")


def _list(items: Sequence[str]) -> str:
    return ", ".join(items) or "none"


def _outside(engagement: Engagement, why: str) -> ValidationError:
    return ValidationError(
        f"the target is outside engagement {engagement.name}: {why}",
        rule="target_outside_engagement",
        recovery_suggestion=f"Scan inside the engagement: networks {_list(engagement.scope.allow_networks)}, "
        f"names {_list(engagement.scope.allow_hostname_suffixes)}.",
    )
