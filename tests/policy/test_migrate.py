"""Version 1 policy files load with the limits they always meant; version 2 refuses the old keys."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.config import DEFAULT_POLICY_PATH
from appliance.errors import PolicyError
from appliance.policy.migrate import TOOL_NAMES, from_version_1
from appliance.policy.model import PerToolConcurrency, load_document, load_policy, parse_document, parse_policy
from appliance.service import principal_limit, tool_limits

# The shipped scope.yaml as it was in version 1, the file an operator has today.
SHIPPED_V1 = Path(__file__).resolve().parents[1] / "fixtures" / "policies" / "scope-v1.yaml"

# A careful operator's version 1 file: every old concurrency key set, none to its default.
V1_LIMITS: dict[str, Any] = {
    "version": 1,
    "limits": {
        "max_hosts_per_call": 16,
        "max_sessions": 40,
        "per_principal": {"max_running_scans": 2, "max_queued_calls": 1, "max_sessions": 5},
    },
    "tools": {
        "nmap_scan": {"max_concurrent": 3, "max_queued": 7, "max_rate": 500},
        "masscan_scan": {"max_concurrent": 1, "max_queued": 0},
        "gobuster_scan": {"max_concurrent": 5, "max_queued": 9, "enabled": False},
    },
    "resilience": {"max_concurrent_scans": 6, "breaker_failure_threshold": 2},
}


# --- version 1 files: same meaning --------------------------------------------------------------


def test_version_1_file_keeps_every_limit_it_set() -> None:
    policy = parse_policy(yaml.safe_dump(V1_LIMITS))

    table = policy.limits.concurrency
    assert policy.version == 2
    assert table.model_dump(by_alias=True) == {
        "per_tool": {
            "nmap_scan": {"running": 3, "queued": 7},
            "masscan_scan": {"running": 1, "queued": 0},
            "gobuster_scan": {"running": 5, "queued": 9},
        },
        "global": {"running": 6, "sessions": 40},
        "per_principal": {"running": 2, "queued": 1, "sessions": 5, "stored_jobs": 1000},  # a v2 default
        "per_engagement": {"running": 4},  # a version 3 default
    }
    # The keys that did not move are untouched.
    assert policy.limits.max_hosts_per_call == 16
    assert policy.tools.nmap_scan.max_rate == 500
    assert policy.tools.gobuster_scan.enabled is False
    assert policy.resilience.breaker_failure_threshold == 2


def test_version_1_file_gives_the_limiter_the_same_limits() -> None:
    policy = parse_policy(yaml.safe_dump(V1_LIMITS))

    limits = tool_limits(policy)
    assert {name: (limit.max_concurrent, limit.max_queued) for name, limit in limits.items()} == {
        "nmap_scan": (3, 7),
        "masscan_scan": (1, 0),
        "gobuster_scan": (5, 9),
    }
    share = principal_limit(policy)
    assert (share.max_running, share.max_queued) == (2, 1)


def test_shipped_version_1_policy_means_what_the_version_2_policy_means() -> None:
    assert load_policy(SHIPPED_V1) == load_policy(DEFAULT_POLICY_PATH)


def test_version_1_file_without_limit_keys_takes_the_version_2_defaults() -> None:
    assert parse_policy("version: 1\n") == parse_policy("version: 2\n")


def test_version_1_load_logs_one_warning_naming_the_new_layout(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="appliance.policy.model"):
        document = load_document(SHIPPED_V1)

    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "version 1" in record.getMessage() and "limits.concurrency" in record.getMessage()
    assert record.policy_path == str(SHIPPED_V1)
    assert "limits.per_principal.max_queued_calls -> limits.concurrency.per_principal.queued" in record.moved_keys
    assert document.file_version == 1


def test_version_2_load_logs_no_layout_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="appliance.policy.model"):
        document = load_document(DEFAULT_POLICY_PATH)

    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert (document.file_version, document.moved) == (2, ())


def test_conversion_leaves_the_parsed_document_unchanged() -> None:
    data = copy.deepcopy(V1_LIMITS)

    converted, moved = from_version_1(data, "v1.yaml")

    assert data == V1_LIMITS
    assert converted["version"] == 2
    assert "max_concurrent_scans" not in converted["resilience"]
    assert len(moved) == 11  # 3 tools x 2, the global running and sessions, 3 principal keys


def test_converted_tools_are_the_tables_tools() -> None:
    assert set(TOOL_NAMES) == set(PerToolConcurrency.model_fields)


# --- version 1 files: problems are named at both keys --------------------------------------------


@pytest.mark.parametrize(
    ("limits", "new", "old"),
    [
        # unsafe: a v1 value out of its (unchanged) bounds
        pytest.param(
            {"tools": {"nmap_scan": {"max_concurrent": 0}}},
            "limits.concurrency.per_tool.nmap_scan.running",
            "tools.nmap_scan.max_concurrent",
            id="tool_running_zero",
        ),
        pytest.param(
            {"limits": {"max_sessions": 257}},
            "limits.concurrency.global.sessions",
            "limits.max_sessions",
            id="sessions_over_transport_ceiling",
        ),
        pytest.param(
            {"resilience": {"max_concurrent_scans": 257}},
            "limits.concurrency.global.running",
            "resilience.max_concurrent_scans",
            id="global_running_over_bound",
        ),
        # unsafe: a typo that version 1 refused is still refused, named at both places
        pytest.param(
            {"limits": {"per_principal": {"max_sesions": 4}}},
            "limits.concurrency.per_principal.max_sesions",
            "limits.per_principal.max_sesions",
            id="share_typo",
        ),
        pytest.param(
            {"limits": {"per_principal": 3}},
            "limits.concurrency.per_principal",
            "limits.per_principal",
            id="share_not_a_mapping",
        ),
    ],
)
def test_version_1_invalid_limit_names_the_new_and_the_old_key(limits: dict[str, Any], new: str, old: str) -> None:
    with pytest.raises(PolicyError) as refused:
        parse_policy(yaml.safe_dump({"version": 1, **limits}), source="v1.yaml")

    assert refused.value.rule == "policy_invalid"
    assert f"{new} (version 1 key {old})" in refused.value.message


def test_version_1_limits_not_a_mapping_is_named_and_nothing_moves() -> None:
    text = yaml.safe_dump({"version": 1, "limits": 5, "tools": {"nmap_scan": {"max_concurrent": 3}}})

    with pytest.raises(PolicyError) as refused:
        parse_policy(text)

    assert refused.value.rule == "policy_invalid"
    assert "limits:" in refused.value.message
    assert "tools.nmap_scan.max_concurrent" in refused.value.message


def test_version_1_file_holding_the_version_2_table_is_refused() -> None:
    text = yaml.safe_dump({"version": 1, "limits": {"max_sessions": 8, "concurrency": {"global": {"sessions": 16}}}})

    with pytest.raises(PolicyError) as refused:
        parse_policy(text, source="mixed.yaml")

    assert refused.value.rule == "policy_version_mismatch"
    assert refused.value.message.startswith("mixed.yaml: ")
    assert "version: 2" in refused.value.recovery_suggestion


# --- version 2 files: an old key is an error naming the new key ---------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # unsafe: each version 1 key in a version 2 file
        pytest.param(
            ("tools", "nmap_scan", "max_concurrent"), "limits.concurrency.per_tool.nmap_scan.running", id="tool_running"
        ),
        pytest.param(
            ("tools", "gobuster_scan", "max_queued"),
            "limits.concurrency.per_tool.gobuster_scan.queued",
            id="tool_queued",
        ),
        pytest.param(("resilience", "max_concurrent_scans"), "limits.concurrency.global.running", id="global_running"),
        pytest.param(("limits", "max_sessions"), "limits.concurrency.global.sessions", id="global_sessions"),
        pytest.param(
            ("limits", "per_principal", "max_running_scans"),
            "limits.concurrency.per_principal.running",
            id="share_running",
        ),
        pytest.param(
            ("limits", "per_principal", "max_queued_calls"),
            "limits.concurrency.per_principal.queued",
            id="share_queued",
        ),
        pytest.param(
            ("limits", "per_principal", "max_sessions"),
            "limits.concurrency.per_principal.sessions",
            id="share_sessions",
        ),
    ],
)
def test_version_2_file_with_a_version_1_key_names_the_new_key(old: tuple[str, ...], new: str) -> None:
    data: dict[str, Any] = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    node = data
    for key in old[:-1]:
        node = node.setdefault(key, {})
    node[old[-1]] = 1

    with pytest.raises(PolicyError) as refused:
        parse_document(yaml.safe_dump(data), source="v2.yaml")

    assert refused.value.rule == "policy_key_moved"
    assert f"{'.'.join(old)} is now {new}" in refused.value.message
    assert refused.value.recovery_suggestion


def test_version_2_file_with_an_empty_old_principal_block_is_refused() -> None:
    with pytest.raises(PolicyError) as refused:
        parse_policy("version: 2\nlimits:\n  per_principal: {}\n")

    assert refused.value.rule == "policy_key_moved"
    assert "limits.per_principal is now limits.concurrency.per_principal" in refused.value.message
