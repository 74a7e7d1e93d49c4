"""Engagements in the policy file (version 3): what loads, and every bad engagement named at load."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from support.engagements import engagement, with_engagements
from support.policies import REPO, merge

from appliance.errors import PolicyError
from appliance.policy.engagements import OPTION_FIELDS
from appliance.policy.model import load_document, parse_document, parse_policy
from appliance.tools import TOOLS

EXAMPLE = REPO / "policies" / "engagements.example.yaml"


def policy_text(lab_policy_data: dict[str, Any], *engagements: dict[str, Any], **top: Any) -> str:
    return yaml.safe_dump(merge(merge(lab_policy_data, with_engagements(*engagements)), top))


def test_the_shipped_two_engagement_example_loads() -> None:
    document = load_document(EXAMPLE)

    engagements = document.policy.engagements
    assert document.file_version == 3
    assert engagements is not None
    assert [e.name for e in engagements] == ["red-team-q4", "webapp-audit"]
    assert engagements[0].principals.claims == {"groups": ["red-team"]}
    start, end = engagements[0].window.bounds()
    assert start < end
    # The README shows this file as it is.
    assert EXAMPLE.read_text() in (REPO / "README.md").read_text()


# safe
def test_a_policy_without_engagements_has_none(lab_policy_data: dict[str, Any]) -> None:
    assert parse_policy(yaml.safe_dump(lab_policy_data)).engagements is None
    assert parse_policy(yaml.safe_dump({**lab_policy_data, "version": 3})).engagements is None


def test_an_engagement_inside_the_global_scope_loads(lab_policy_data: dict[str, Any]) -> None:
    text = policy_text(
        lab_policy_data,
        engagement("red", ["alice"], networks=["10.20.1.0/24", "192.168.56.0/25"], suffixes=[".red.lab.internal"]),
        engagement("blue", ["bob"], networks=["10.20.2.0/24"], budget={"masscan_max_rate": 1000}),
    )

    policy = parse_policy(text)

    assert policy.engagement("red") is not None
    assert policy.engagement("blue") is not None
    assert policy.engagement("green") is None


def test_a_loopback_engagement_loads_only_when_the_global_scope_opens_loopback(
    lab_policy_data: dict[str, Any],
) -> None:
    loopback = engagement("local", ["alice"], networks=["127.0.0.0/8"])
    opened = merge(lab_policy_data, {"scope": {"insecure_allow_loopback": True}})

    assert parse_policy(policy_text(opened, loopback)).engagements is not None
    with pytest.raises(PolicyError, match=r"127\.0\.0\.0/8 is outside the global scope"):
        parse_policy(policy_text(lab_policy_data, loopback))


# unsafe: each bad engagement is refused at load, naming the key and the value
@pytest.mark.parametrize(
    ("changes", "named"),
    [
        pytest.param({"scope": {"allow_networks": ["10.30.0.0/24"]}}, "10.30.0.0/24 is outside the global", id="wider"),
        pytest.param({"scope": {"allow_networks": ["10.0.0.0/8"]}}, "10.0.0.0/8 is outside", id="wider_than_allowed"),
        pytest.param({"scope": {"allow_networks": ["10.20.1.1/24"]}}, "host bits", id="host_bits_set"),
        pytest.param(
            {"scope": {"allow_hostname_suffixes": [".corp.example"]}}, ".corp.example is not under", id="suffix"
        ),
        pytest.param({"budget": {"masscan_max_rate": 5000}}, "exceeds the global tools.masscan_scan", id="rate"),
        pytest.param({"budget": {"hosts_per_hour": 0}}, "hosts_per_hour", id="budget_zero"),
        pytest.param({"window": {"timezone": "Mars/Olympus"}}, "not a time zone", id="zone_unknown"),
        pytest.param({"window": {"not_before": "2026-12-01T09:00+01:00"}}, "carries an offset", id="offset_with_zone"),
        pytest.param({"window": {"not_before": "tomorrow"}}, "not an ISO date", id="not_iso"),
        pytest.param(
            {"window": {"not_before": "2026-12-02T09:00", "not_after": "2026-12-01T09:00"}},
            "not_before must be earlier",
            id="window_reversed",
        ),
        pytest.param({"tools": {"nmap": {}}}, "'nmap' is not a scan tool", id="tool_unknown"),
        pytest.param({"tools": {"nmap_scan": {"target": ["10.20.1.5"]}}}, "'target' cannot be restricted", id="opt"),
        pytest.param({"principals": {"subjects": []}}, "at least one subject or claim", id="nobody"),
        pytest.param({"principals": {"claims": {"groups": []}}}, "lists no value", id="claim_without_values"),
        pytest.param({"name": "Red Team"}, "is not an engagement name", id="name_form"),
        pytest.param({"windw": {}}, "windw", id="typo_key"),
    ],
)
def test_bad_engagement_is_a_policy_error_naming_it(
    lab_policy_data: dict[str, Any], changes: dict[str, Any], named: str
) -> None:
    bad = engagement("red", ["alice"])
    for key, value in changes.items():
        bad[key] = {**bad[key], **value} if isinstance(value, dict) and isinstance(bad.get(key), dict) else value
    if "principals" in changes:
        bad["principals"] = changes["principals"]

    with pytest.raises(PolicyError, match="engagements") as refused:
        parse_policy(policy_text(lab_policy_data, bad))

    assert refused.value.rule == "policy_invalid"
    assert named in refused.value.message


def test_two_engagements_of_one_name_are_refused(lab_policy_data: dict[str, Any]) -> None:
    with pytest.raises(PolicyError, match=r"engagements\.red: the name is used twice"):
        parse_policy(policy_text(lab_policy_data, engagement("red", ["alice"]), engagement("red", ["bob"])))


def test_engagements_in_a_version_2_file_are_refused(lab_policy_data: dict[str, Any]) -> None:
    data = merge(lab_policy_data, with_engagements(engagement("red", ["alice"])))
    data["version"] = 2

    with pytest.raises(PolicyError, match="engagements need version: 3"):
        parse_document(yaml.safe_dump(data))


def test_a_version_2_file_keeps_its_version(lab_policy_data: dict[str, Any]) -> None:
    document = parse_document(yaml.safe_dump(copy.deepcopy(lab_policy_data)))

    assert document.file_version == 2
    assert document.policy.engagements is None


def test_restrictable_options_are_fields_of_the_tools_requests() -> None:
    assert set(OPTION_FIELDS) == set(TOOLS)
    for tool, fields in OPTION_FIELDS.items():
        assert set(fields) <= set(TOOLS[tool].request_model.model_fields), tool
