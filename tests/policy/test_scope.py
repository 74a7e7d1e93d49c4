"""compile_scope: this host's own addresses, broadcasts and gateways become named denials."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from appliance.errors import ValidationError
from appliance.policy.model import Policy
from appliance.policy.netinfo import NetworkFacts
from appliance.policy.scope import compile_scope
from appliance.policy.targets import BUILTIN_DENY, Scope, check_address

FACTS = NetworkFacts(
    own_addresses=frozenset(
        ipaddress.ip_address(a) for a in ("10.20.0.2", "2001:db8::2", "127.0.0.1", "127.0.1.1", "::1")
    ),
    broadcasts=frozenset({ipaddress.ip_address("10.20.255.255")}),
    gateways=frozenset({ipaddress.ip_address("10.20.0.1"), ipaddress.ip_address("fe80::1")}),
)


def policy(lab_policy_data: dict[str, Any], **scope: object) -> Policy:
    lab_policy_data["scope"].update(scope)
    return Policy.model_validate(lab_policy_data)


def denials(scope: Scope) -> dict[str, str]:
    return {str(network): rule for network, rule in scope.denied}


def test_host_facts_become_named_denials(lab_policy_data: dict[str, Any]) -> None:
    scope = compile_scope(policy(lab_policy_data), FACTS)

    found = denials(scope)
    assert found["10.20.0.2/32"] == "target_denied_own_address"
    assert found["2001:db8::2/128"] == "target_denied_own_address"
    assert found["10.20.255.255/32"] == "target_denied_broadcast"
    assert found["10.20.0.1/32"] == "target_denied_gateway"
    assert found["fe80::1/128"] == "target_denied_gateway"
    assert found["10.20.99.0/24"] == "target_denied_policy"


def test_builtin_denials_come_first_and_stay(lab_policy_data: dict[str, Any]) -> None:
    scope = compile_scope(policy(lab_policy_data), FACTS)

    assert scope.denied[: len(BUILTIN_DENY)] == BUILTIN_DENY


def test_loopback_own_addresses_are_left_to_the_loopback_rule(lab_policy_data: dict[str, Any]) -> None:
    scope = compile_scope(policy(lab_policy_data, insecure_allow_loopback=True), FACTS)

    for loopback in ("127.0.0.1/32", "127.0.1.1/32", "::1/128"):
        assert loopback not in denials(scope)
    check_address(ipaddress.ip_address("127.0.0.1"), scope)  # opened by the insecure switch only


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        # unsafe
        ("10.20.0.2", "target_denied_own_address"),
        ("10.20.255.255", "target_denied_broadcast"),
        ("10.20.0.1", "target_denied_gateway"),
        ("10.20.99.1", "target_denied_policy"),
        ("127.0.1.1", "target_denied_loopback"),
    ],
)
def test_compiled_denials_refuse_with_their_rule(address: str, rule: str, lab_policy_data: dict[str, Any]) -> None:
    scope = compile_scope(policy(lab_policy_data), FACTS)

    with pytest.raises(ValidationError) as refused:
        check_address(ipaddress.ip_address(address), scope)

    assert refused.value.rule == rule


def test_own_address_switch_covers_own_addresses_and_broadcasts(lab_policy_data: dict[str, Any]) -> None:
    found = denials(compile_scope(policy(lab_policy_data, deny_own_addresses=False), FACTS))

    assert "10.20.0.2/32" not in found
    assert "10.20.255.255/32" not in found
    assert found["10.20.0.1/32"] == "target_denied_gateway"


def test_gateway_switch_covers_gateways_only(lab_policy_data: dict[str, Any]) -> None:
    found = denials(compile_scope(policy(lab_policy_data, deny_default_gateways=False), FACTS))

    assert "10.20.0.1/32" not in found
    assert found["10.20.0.2/32"] == "target_denied_own_address"


def test_scope_carries_the_policy_limits(lab_policy_data: dict[str, Any]) -> None:
    lab_policy_data["limits"]["max_hosts_per_call"] = 16
    scope = compile_scope(policy(lab_policy_data), NetworkFacts())

    assert scope.max_hosts == 16
    assert scope.suffixes == (".lab.internal",)
    assert scope.allow_loopback is False
    assert [str(n) for n in scope.allowed] == ["10.20.0.0/16", "192.168.56.0/24"]


# This host on a Docker --internal network (no route table gateway) and on an IPv6 /64.
SUBNET_FACTS = NetworkFacts(
    own_addresses=frozenset(ipaddress.ip_address(a) for a in ("10.20.0.2", "fd00:20::2")),
    subnets=frozenset(ipaddress.ip_network(n) for n in ("10.20.0.0/16", "fd00:20::/64", "10.20.7.0/31")),
    gateways=frozenset({ipaddress.ip_address("10.20.5.254")}),  # next hop of a static route, not the default
)


def v6_policy(lab_policy_data: dict[str, Any], **scope: object) -> Policy:
    return policy(lab_policy_data, allow_networks=["10.20.0.0/16", "fd00:20::/64"], **scope)


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        # unsafe
        ("fd00:20::", "target_denied_subnet_router_anycast"),
        ("10.20.0.1", "target_denied_gateway"),  # first host of the own IPv4 subnet (Docker's gateway)
        ("fd00:20::1", "target_denied_gateway"),  # first host of the own IPv6 subnet
        ("10.20.5.254", "target_denied_gateway"),  # next hop of a non-default route
    ],
)
def test_target_rejects_routers_of_own_subnets(address: str, rule: str, lab_policy_data: dict[str, Any]) -> None:
    scope = compile_scope(v6_policy(lab_policy_data), SUBNET_FACTS)

    with pytest.raises(ValidationError) as refused:
        check_address(ipaddress.ip_address(address), scope)

    assert refused.value.rule == rule


def test_target_rejects_ipv6_subnet_router_anycast(lab_policy_data: dict[str, Any]) -> None:
    scope = compile_scope(v6_policy(lab_policy_data), SUBNET_FACTS)

    with pytest.raises(ValidationError) as refused:
        check_address(ipaddress.ip_address("fd00:20::"), scope)

    assert refused.value.rule == "target_denied_subnet_router_anycast"
    assert refused.value.recovery_suggestion


@pytest.mark.parametrize(
    "address",
    [
        # safe: ordinary hosts of the same subnets
        "10.20.0.5",
        "fd00:20::5",
        # a /31 has no first-host gateway (point-to-point: both addresses are hosts)
        "10.20.7.0",
        "10.20.7.1",
    ],
)
def test_other_hosts_of_own_subnets_stay_in_scope(address: str, lab_policy_data: dict[str, Any]) -> None:
    check_address(ipaddress.ip_address(address), compile_scope(v6_policy(lab_policy_data), SUBNET_FACTS))


def test_gateway_switch_also_covers_first_hosts_and_anycast(lab_policy_data: dict[str, Any]) -> None:
    found = denials(compile_scope(v6_policy(lab_policy_data, deny_default_gateways=False), SUBNET_FACTS))

    for address in ("10.20.0.1/32", "fd00:20::1/128", "fd00:20::/128", "10.20.5.254/32"):
        assert address not in found
    assert found["fd00:20::2/128"] == "target_denied_own_address"


def test_custom_gateway_goes_into_deny_networks(lab_policy_data: dict[str, Any]) -> None:
    # A router the host's tables do not show (not a next hop, not a first host) is the operator's to list.
    scope = compile_scope(policy(lab_policy_data, deny_networks=["10.20.0.254/32"]), SUBNET_FACTS)

    with pytest.raises(ValidationError) as refused:
        check_address(ipaddress.ip_address("10.20.0.254"), scope)

    assert refused.value.rule == "target_denied_policy"
