"""Compile a policy and this host's network facts into the `Scope` the target checks use."""

from __future__ import annotations

import ipaddress

from appliance.policy.model import Policy
from appliance.policy.netinfo import NetworkFacts, first_host, subnet_router_anycast
from appliance.policy.targets import BUILTIN_DENY, LOOPBACK, IPNetwork, Scope


def compile_scope(policy: Policy, facts: NetworkFacts) -> Scope:
    rules = policy.scope
    denied: list[tuple[IPNetwork, str]] = list(BUILTIN_DENY)
    denied.extend((network, "target_denied_policy") for network in rules.denied())
    if rules.deny_own_addresses:
        # Loopback addresses are the loopback rule's business (insecure_allow_loopback may open them).
        own = (a for a in facts.own_addresses if not any(a in net for net in LOOPBACK))
        denied.extend((ipaddress.ip_network(a), "target_denied_own_address") for a in own)
        denied.extend((ipaddress.ip_network(a), "target_denied_broadcast") for a in facts.broadcasts)
    if rules.deny_default_gateways:
        denied.extend((ipaddress.ip_network(a), "target_denied_gateway") for a in sorted(facts.gateways, key=_order))
        # Docker (and most lab setups) put the gateway on a subnet's first host, also on internal
        # networks whose route table shows no gateway at all.
        subnets = sorted(facts.subnets, key=lambda n: (n.version, int(n.network_address), n.prefixlen))
        firsts = (first_host(subnet) for subnet in subnets)
        denied.extend((ipaddress.ip_network(a), "target_denied_gateway") for a in firsts if a is not None)
        anycasts = (subnet_router_anycast(subnet) for subnet in subnets)
        denied.extend(
            (ipaddress.ip_network(a), "target_denied_subnet_router_anycast") for a in anycasts if a is not None
        )
    return Scope(
        allowed=rules.allowed(),
        denied=tuple(denied),
        suffixes=tuple(rules.allow_hostname_suffixes),
        allow_loopback=rules.insecure_allow_loopback,
        max_hosts=policy.limits.max_hosts_per_call,
    )


def _order(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, int]:
    return (address.version, int(address))
