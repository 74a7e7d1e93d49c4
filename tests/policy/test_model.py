"""Policy files: a file that loads is consistent; every problem is a PolicyError naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.config import DEFAULT_POLICY_PATH
from appliance.errors import PolicyError
from appliance.policy.model import load_policy, parse_policy

SHIPPED_POLICY = DEFAULT_POLICY_PATH
DELETE = object()


def changed(data: dict[str, Any], path: tuple[str, ...], value: object) -> str:
    """`data` as YAML with the key at `path` set to `value` (or removed, for DELETE)."""
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return yaml.safe_dump(data)


# --- files that load ----------------------------------------------------------------------------


def test_minimal_policy_takes_the_safe_defaults() -> None:
    policy = parse_policy("version: 2\n")

    assert policy.scope.insecure_allow_loopback is False
    assert policy.scope.deny_own_addresses is True
    assert policy.scope.deny_default_gateways is True
    assert policy.tools.gobuster_scan.dns_resolver is None


def test_lab_policy_round_trips_through_yaml(lab_policy_data: dict[str, Any]) -> None:
    policy = parse_policy(yaml.safe_dump(lab_policy_data))

    assert policy.scope.allow_networks == ["10.20.0.0/16", "192.168.56.0/24"]
    assert policy.tools.gobuster_scan.dns_resolver == "10.20.0.53:53"


def test_shipped_policy_loads_with_secure_switches() -> None:
    policy = load_policy(SHIPPED_POLICY)

    assert policy.version == 2
    assert policy.scope.insecure_allow_loopback is False
    assert policy.scope.deny_own_addresses and policy.scope.deny_default_gateways


# --- files that do not load ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        # unsafe: unknown keys (a typo must not silently widen the scope)
        pytest.param(("scopes",), {"allow_networks": ["0.0.0.0/0"]}, "scopes", id="unknown_top_level_key"),
        pytest.param(("scope", "allow_network"), ["0.0.0.0/0"], "scope.allow_network", id="unknown_scope_key"),
        pytest.param(
            ("scope", "insecure_allow_loopbak"), True, "scope.insecure_allow_loopbak", id="misspelled_insecure_flag"
        ),
        pytest.param(("limits", "max_host"), 5, "limits.max_host", id="unknown_limits_key"),
        pytest.param(
            ("tools", "nmap_scan", "allow_scripts"), [], "tools.nmap_scan.allow_scripts", id="unknown_tool_key"
        ),
        pytest.param(("tools", "hydra_scan"), {"enabled": True}, "tools.hydra_scan", id="unknown_tool"),
        # unsafe: the insecure switch must be a real boolean
        pytest.param(
            ("scope", "insecure_allow_loopback"), "maybe", "scope.insecure_allow_loopback", id="insecure_flag_text"
        ),
        pytest.param(
            ("scope", "insecure_allow_loopback"), 2, "scope.insecure_allow_loopback", id="insecure_flag_number"
        ),
        pytest.param(
            ("scope", "insecure_allow_loopback"), [True], "scope.insecure_allow_loopback", id="insecure_flag_list"
        ),
        # unsafe: networks
        pytest.param(("scope", "allow_networks"), ["10.20.0.1/16"], "scope.allow_networks", id="allow_cidr_host_bits"),
        pytest.param(("scope", "deny_networks"), ["10.20.99.5/24"], "scope.deny_networks", id="deny_cidr_host_bits"),
        pytest.param(("scope", "allow_networks"), ["lab"], "scope.allow_networks", id="allow_not_a_network"),
        pytest.param(("scope", "allow_networks"), ["10.0.0.0/33"], "scope.allow_networks", id="allow_prefix_too_long"),
        pytest.param(("scope", "allow_networks"), "10.0.0.0/8", "scope.allow_networks", id="allow_networks_not_a_list"),
        # unsafe: hostname suffixes
        pytest.param(
            ("scope", "allow_hostname_suffixes"), ["lab.internal"], "allow_hostname_suffixes", id="suffix_without_dot"
        ),
        pytest.param(
            ("scope", "allow_hostname_suffixes"), [".LAB.internal"], "allow_hostname_suffixes", id="suffix_upper_case"
        ),
        pytest.param(
            ("scope", "allow_hostname_suffixes"), ["*.lab.internal"], "allow_hostname_suffixes", id="suffix_wildcard"
        ),
        pytest.param(
            ("scope", "allow_hostname_suffixes"),
            [".lab.internal."],
            "allow_hostname_suffixes",
            id="suffix_trailing_dot",
        ),
        pytest.param(("scope", "allow_hostname_suffixes"), ["."], "allow_hostname_suffixes", id="suffix_root"),
        # unsafe: defaults above their maximum, and bounds
        pytest.param(
            ("limits", "default_timeout_seconds"), 700, "default_timeout_seconds", id="default_timeout_over_max"
        ),
        pytest.param(("tools", "masscan_scan", "default_rate"), 5000, "default_rate", id="default_rate_over_max"),
        pytest.param(
            ("tools", "gobuster_scan", "default_threads"), 50, "default_threads", id="default_threads_over_max"
        ),
        pytest.param(("tools", "nmap_scan", "min_timing"), 5, "min_timing", id="min_timing_over_max"),
        pytest.param(("limits", "max_hosts_per_call"), 0, "limits.max_hosts_per_call", id="zero_hosts"),
        pytest.param(("limits", "max_hosts_per_call"), 1 << 24, "limits.max_hosts_per_call", id="hosts_over_bound"),
        pytest.param(("limits", "max_ports_per_call"), 70000, "limits.max_ports_per_call", id="ports_over_bound"),
        pytest.param(("tools", "nmap_scan", "max_rate"), 10**6, "tools.nmap_scan.max_rate", id="nmap_rate_over_bound"),
        pytest.param(("tools", "nmap_scan", "max_hostgroup"), 0, "tools.nmap_scan.max_hostgroup", id="hostgroup_zero"),
        pytest.param(
            ("tools", "nmap_scan", "max_hostgroup"), 1025, "tools.nmap_scan.max_hostgroup", id="hostgroup_over_bound"
        ),
        # unsafe: the concurrency table (its bounds as before the table)
        pytest.param(
            ("limits", "concurrency"),
            {"global": {"sessions": 257}},
            "limits.concurrency.global.sessions",
            id="sessions_over_transport_ceiling",
        ),
        pytest.param(
            ("limits", "concurrency"),
            {"per_principal": {"sesions": 4}},
            "limits.concurrency.per_principal.sesions",
            id="share_typo",
        ),
        pytest.param(
            ("limits", "concurrency"),
            {"per_principal": {"running": 0}},
            "limits.concurrency.per_principal.running",
            id="share_zero",
        ),
        pytest.param(
            ("limits", "concurrency"),
            {"per_tool": {"nmap_scan": {"running": 65}}},
            "limits.concurrency.per_tool.nmap_scan.running",
            id="tool_running_over_bound",
        ),
        pytest.param(
            ("limits", "concurrency"),
            {"per_tool": {"nmap_scan": {"queued": -1}}},
            "limits.concurrency.per_tool.nmap_scan.queued",
            id="tool_queue_negative",
        ),
        pytest.param(
            ("limits", "concurrency"),
            {"per_tool": {"nmpa_scan": {"running": 1}}},
            "limits.concurrency.per_tool.nmpa_scan",
            id="tool_name_typo",
        ),
        pytest.param(
            ("limits", "concurrency"), {"global": {"running": 0}}, "limits.concurrency.global.running", id="global_zero"
        ),
        pytest.param(
            ("limits", "concurrency"), {"global_": {"running": 2}}, "limits.concurrency.global_", id="python_name"
        ),
        pytest.param(
            ("limits", "concurrency"),
            {"per_engagement": {"running": 0}},
            "limits.concurrency.per_engagement.running",
            id="per_engagement_zero",
        ),
        # unsafe: resolver and scripts
        pytest.param(("tools", "gobuster_scan", "dns_resolver"), "lab-dns:53", "dns_resolver", id="resolver_name"),
        pytest.param(
            ("tools", "gobuster_scan", "dns_resolver"), "10.20.0.53:99999", "dns_resolver", id="resolver_port"
        ),
        pytest.param(("tools", "gobuster_scan", "dns_resolver"), "010.20.0.53", "dns_resolver", id="resolver_octal"),
        pytest.param(
            ("tools", "gobuster_scan", "dns_resolver"),
            "\u0661\u0660.\u0662\u0660.\u0660.\u0665\u0663",
            "dns_resolver",
            id="resolver_arabic_digits",
        ),
        pytest.param(("tools", "gobuster_scan", "dns_resolver"), "[::1]:53", "dns_resolver", id="resolver_ipv6"),
        pytest.param(("tools", "nmap_scan", "allowed_scripts"), ["../evil"], "allowed_scripts", id="script_path"),
        pytest.param(
            ("tools", "nmap_scan", "allowed_scripts"), ["HTTP-Title"], "allowed_scripts", id="script_upper_case"
        ),
        # unsafe: version
        pytest.param(("version",), DELETE, "version", id="version_missing"),
        pytest.param(("version",), 4, "version", id="version_unknown"),
        pytest.param(("version",), "2", "version", id="version_as_string"),
        pytest.param(("version",), True, "version", id="version_yaml_true_is_not_1"),
    ],
)
def test_invalid_policy_names_the_field(
    path: tuple[str, ...], value: object, named: str, lab_policy_data: dict[str, Any]
) -> None:
    text = changed(lab_policy_data, path, value)

    with pytest.raises(PolicyError) as refused:
        parse_policy(text, source="lab.yaml")

    assert refused.value.rule == "policy_invalid"
    assert refused.value.message.startswith("lab.yaml: ")
    assert named in refused.value.message


def test_every_problem_is_named_in_one_error(lab_policy_data: dict[str, Any]) -> None:
    lab_policy_data["scope"]["allow_networks"] = ["10.20.0.1/16"]
    lab_policy_data["scope"]["allow_hostname_suffixes"] = ["lab.internal"]

    with pytest.raises(PolicyError) as refused:
        parse_policy(yaml.safe_dump(lab_policy_data))

    assert "scope.allow_networks" in refused.value.message
    assert "scope.allow_hostname_suffixes" in refused.value.message


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        # unsafe
        pytest.param("version: [1\n", "policy_yaml", id="broken_yaml"),
        pytest.param("", "policy_shape", id="empty_file"),
        pytest.param("- version: 1\n", "policy_shape", id="list_instead_of_mapping"),
        pytest.param("version\n", "policy_shape", id="scalar_instead_of_mapping"),
        pytest.param("!!python/object/apply:os.system ['true']\n", "policy_yaml", id="python_object_tag"),
    ],
)
def test_policy_document_shape(text: str, rule: str) -> None:
    with pytest.raises(PolicyError) as refused:
        parse_policy(text)

    assert refused.value.rule == rule


def test_unreadable_policy_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as refused:
        load_policy(tmp_path / "missing.yaml")

    assert refused.value.rule == "policy_unreadable"
    assert "missing.yaml" in refused.value.message
