"""Per-call engagement checks with an injected time: membership, choice, window, tool, options, target."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from support.engagements import CLOSES, DURING, OPENS, engagement, with_engagements
from support.policies import merge

from appliance.errors import ValidationError
from appliance.policy import engagement_checks as checks
from appliance.policy.engagement_checks import Caller
from appliance.policy.engagements import Engagement
from appliance.policy.model import Policy, parse_policy
from appliance.policy.targets import CheckedTarget

ALICE = Caller("alice")


def lab_with(lab_policy_data: dict[str, Any], *engagements: dict[str, Any]) -> Policy:
    return parse_policy(yaml.safe_dump(merge(lab_policy_data, with_engagements(*engagements))))


@pytest.fixture
def red(lab_policy_data: dict[str, Any]) -> Engagement:
    tools = {
        "nmap_scan": {"scan_type": ["connect"], "scripts": ["http-title"], "extra_args": ["-Pn", "--max-rate"]},
        "gobuster_scan": {"mode": ["dir", "dns"]},
    }
    data = engagement(
        "red", ["alice"], networks=["10.20.1.0/24"], denied=["10.20.1.128/25"], suffixes=[".red.lab.internal"]
    )
    policy = lab_with(lab_policy_data, {**data, "tools": tools})
    found = policy.engagement("red")
    assert found is not None
    return found


# --- membership and choice ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("caller", "member"),
    [
        # safe: a listed subject; a claim value, as a string or in a list
        (Caller("alice"), True),
        (Caller("client-7", subject="alice"), True),
        (Caller("client-7", subject="dave", claims={"groups": "red-team"}), True),
        (Caller("client-7", subject="dave", claims={"groups": ["blue-team", "red-team"]}), True),
        # unsafe: a principal named like the subject when the subject differs; another value; a non-string
        (Caller("alice", subject="mallory"), False),
        (Caller("dave", claims={"groups": ["red-team-x"]}), False),
        (Caller("dave", claims={"groups": {"red-team": True}}), False),
        (Caller("dave", claims={"roles": ["red-team"]}), False),
    ],
)
def test_membership_by_subject_or_claim(lab_policy_data: dict[str, Any], caller: Caller, member: bool) -> None:
    policy = lab_with(lab_policy_data, engagement("red", ["alice"], claims={"groups": ["red-team"]}))
    assert policy.engagements is not None

    assert checks.is_member(policy.engagements[0], caller) is member


def test_no_engagements_means_no_choice_and_no_engagement_argument(lab_policy_data: dict[str, Any]) -> None:
    policy = parse_policy(yaml.safe_dump(lab_policy_data))

    assert checks.choose(policy, ALICE, None) is None
    with pytest.raises(ValidationError) as refused:
        checks.choose(policy, ALICE, "red")
    assert refused.value.rule == "engagement_unknown"


@pytest.mark.parametrize(
    ("caller", "requested", "chosen", "rule"),
    [
        # safe: in one (named or not), in two and naming one
        (Caller("alice"), None, "red", None),
        (Caller("alice"), "red", "red", None),
        (Caller("carol"), "blue", "blue", None),
        # unsafe: in none, in two without naming one, naming one it is not in, naming one that does not exist
        (Caller("mallory"), None, None, "no_engagement"),
        (Caller("carol"), None, None, "engagement_required"),
        (Caller("alice"), "blue", None, "engagement_unknown"),
        (Caller("alice"), "green", None, "engagement_unknown"),
    ],
)
def test_choose_the_engagement_of_a_call(
    lab_policy_data: dict[str, Any], caller: Caller, requested: str | None, chosen: str | None, rule: str | None
) -> None:
    policy = lab_with(
        lab_policy_data,
        engagement("red", ["alice", "carol"]),
        engagement("blue", ["bob", "carol"], networks=["10.20.2.0/24"]),
    )

    if rule is None:
        found = checks.choose(policy, caller, requested)
        assert found is not None
        assert found.name == chosen
        return
    with pytest.raises(ValidationError) as refused:
        checks.choose(policy, caller, requested)
    assert refused.value.rule == rule
    assert refused.value.recovery_suggestion


def test_an_unknown_and_a_foreign_engagement_get_the_same_answer(lab_policy_data: dict[str, Any]) -> None:
    policy = lab_with(lab_policy_data, engagement("red", ["alice"]), engagement("blue", ["bob"]))
    answers = []
    for name in ("blue", "green"):
        with pytest.raises(ValidationError) as refused:
            checks.choose(policy, ALICE, name)
        answers.append((refused.value.rule, refused.value.recovery_suggestion))

    assert answers[0] == answers[1]
    assert "blue" not in answers[0][1]


def test_engagement_required_names_the_callers_engagements(lab_policy_data: dict[str, Any]) -> None:
    policy = lab_with(lab_policy_data, engagement("red", ["carol"]), engagement("blue", ["carol"]))

    with pytest.raises(ValidationError) as refused:
        checks.choose(policy, Caller("carol"), None)

    assert "red, blue" in refused.value.recovery_suggestion


# --- window ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("now", "rule"),
    [
        # safe: the first second, an hour in, the last second
        (OPENS, None),
        (DURING, None),
        (CLOSES - 1, None),
        # unsafe: a second early, at the end (exclusive), a day after
        (OPENS - 1, "engagement_not_started"),
        (CLOSES, "engagement_ended"),
        (CLOSES + 86400, "engagement_ended"),
    ],
)
def test_window_with_an_injected_time(red: Engagement, now: float, rule: str | None) -> None:
    if rule is None:
        checks.check_window(red, now)
        return
    with pytest.raises(ValidationError) as refused:
        checks.check_window(red, now)
    assert refused.value.rule == rule


def test_window_refusal_shows_local_times_of_the_engagements_zone(red: Engagement) -> None:
    with pytest.raises(ValidationError) as refused:
        checks.check_window(red, OPENS - 3600)

    # 09:00 in Berlin is 08:00 UTC: the message speaks the zone the operator wrote.
    assert "2026-12-01T09:00+01:00" in refused.value.message
    assert "Europe/Berlin" in refused.value.message
    assert "2026-12-01T09:00+01:00" in refused.value.recovery_suggestion


def test_window_across_a_daylight_saving_change_counts_local_time(lab_policy_data: dict[str, Any]) -> None:
    window = {"not_before": "2026-03-28T12:00", "not_after": "2026-03-29T12:00", "timezone": "Europe/Berlin"}
    policy = lab_with(lab_policy_data, engagement("spring", ["alice"], window=window))
    found = policy.engagement("spring")
    assert found is not None

    start, end = found.window.bounds()

    assert end - start == 23 * 3600  # the clocks go forward that night


# --- tools and options -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tool", "arguments", "rule"),
    [
        # safe: listed values, unrestricted options, flags by name
        ("nmap_scan", {"scan_type": "connect", "timing": 5}, None),
        ("nmap_scan", {"scan_type": "connect", "scripts": ["http-title"]}, None),
        ("nmap_scan", {"scan_type": "connect", "extra_args": ["-Pn", "--max-rate", "50"]}, None),
        ("nmap_scan", {"scan_type": "connect", "extra_args": ["--max-rate=50"]}, None),
        ("gobuster_scan", {"mode": "dns", "wordlist": "subdomains"}, None),
        # unsafe: a tool not named, a value not listed, one script of two, a flag not listed
        ("masscan_scan", {}, "tool_not_in_engagement"),
        ("nmap_scan", {"scan_type": "version"}, "option_not_in_engagement"),
        ("nmap_scan", {"scan_type": "connect", "scripts": ["http-title", "banner"]}, "option_not_in_engagement"),
        ("nmap_scan", {"scan_type": "connect", "extra_args": ["-Pn", "--open"]}, "option_not_in_engagement"),
        ("gobuster_scan", {"mode": "vhost"}, "option_not_in_engagement"),
    ],
)
def test_tools_and_options_of_the_engagement(
    red: Engagement, tool: str, arguments: dict[str, Any], rule: str | None
) -> None:
    if rule is None:
        checks.check_tool(red, tool, arguments)
        return
    with pytest.raises(ValidationError) as refused:
        checks.check_tool(red, tool, arguments)
    assert refused.value.rule == rule
    assert refused.value.recovery_suggestion


# --- targets -----------------------------------------------------------------------------
def ip(address: str) -> CheckedTarget:
    return CheckedTarget(address, "ip", address, None, (address,), 1)


def cidr(block: str, hosts: int) -> CheckedTarget:
    return CheckedTarget(block, "cidr", block, None, (), hosts)


def name(hostname: str, *addresses: str) -> CheckedTarget:
    return CheckedTarget(hostname, "hostname", addresses[0] if addresses else hostname, hostname, addresses, 1)


@pytest.mark.parametrize(
    "target",
    [
        # safe: inside the engagement's networks and names
        ip("10.20.1.5"),
        cidr("10.20.1.0/26", 64),
        name("web.red.lab.internal", "10.20.1.9"),
        name("red.lab.internal"),  # gobuster dns mode: the engagement's own domain, no address
    ],
)
def test_target_inside_the_engagement(red: Engagement, target: CheckedTarget) -> None:
    checks.check_target(red, target)


@pytest.mark.parametrize(
    "target",
    [
        # unsafe: in the global scope, outside the engagement
        ip("10.20.2.5"),
        ip("10.20.1.200"),  # its own deny list
        cidr("10.20.1.0/24", 256),  # overlaps its deny list
        cidr("10.20.0.0/23", 512),  # wider than its network
        name("web.lab.internal", "10.20.1.9"),  # a global name outside its suffixes
        name("web.red.lab.internal", "10.20.1.9", "10.20.2.9"),  # one address outside
        name("lab.internal"),  # dns mode on the global domain
    ],
)
def test_target_outside_the_engagement(red: Engagement, target: CheckedTarget) -> None:
    with pytest.raises(ValidationError) as refused:
        checks.check_target(red, target)

    assert refused.value.rule == "target_outside_engagement"
    assert "10.20.1.0/24" in refused.value.recovery_suggestion
