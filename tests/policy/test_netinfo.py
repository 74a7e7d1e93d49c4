"""Next hops, subnets and the change signature from /proc/net (sample text; nothing is read from this host's tables)."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from appliance.policy import netinfo
from appliance.policy.netinfo import (
    SIGNATURE_FILES,
    facts_signature,
    parse_ipv4_routes,
    parse_ipv6_routes,
    read_network_facts,
)

# /proc/net/route of a container on a Docker bridge, plus a second default route via a VPN.
IPV4_ROUTES = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
tun0\t00000000\t0114140A\t0003\t0\t0\t100\t00000000\t0\t0\t0
tun0\t0014140A\t0114140A\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""

ZERO6 = "0" * 32


def ipv6_route(destination: str, prefix: str, next_hop: str, flags: str, device: str) -> str:
    """One /proc/net/ipv6_route line: dest, prefix, source, source prefix, next hop, metric, refs, use, flags, dev."""
    return f"{destination} {prefix} {ZERO6} 00 {next_hop} 00000400 00000001 00000000 {flags} {device}"


# /proc/net/ipv6_route: a link route, a default route via fe80::1, the loopback host route and the
# kernel's unreachable default on lo (next hop ::).
IPV6_ROUTES = "\n".join(
    [
        ipv6_route("20010db8000000000000000000000000", "40", ZERO6, "00000001", "eth0"),
        ipv6_route(ZERO6, "00", "fe800000000000000000000000000001", "00000003", "eth0"),
        ipv6_route("00000000000000000000000000000001", "80", ZERO6, "80200001", "lo"),
        ipv6_route(ZERO6, "00", ZERO6, "00200200", "lo"),
    ]
)


def test_ipv4_next_hops_are_read_little_endian() -> None:
    assert parse_ipv4_routes(IPV4_ROUTES) == {
        ipaddress.ip_address("172.17.0.1"),
        ipaddress.ip_address("10.20.20.1"),
    }


def test_ipv4_gateway_of_a_non_default_route_is_a_next_hop() -> None:
    # A static route to another lab segment goes through a router that the default route never names.
    table = "Iface\tDestination\tGateway\neth1\t0000A8C0\tFE0114AC\t0003\n"

    assert parse_ipv4_routes(table) == {ipaddress.ip_address("172.20.1.254")}


def test_ipv6_next_hops_skip_routes_without_one() -> None:
    assert parse_ipv6_routes(IPV6_ROUTES) == {ipaddress.ip_address("fe80::1")}


def test_ipv6_gateway_of_a_non_default_route_is_a_next_hop() -> None:
    route = ipv6_route("fd000030000000000000000000000000", "40", "fd000020000000000000000000000001", "00000003", "eth0")

    assert parse_ipv6_routes(route) == {ipaddress.ip_address("fd00:20::1")}


@pytest.mark.parametrize(
    "text",
    [
        # safe: tables without a next hop
        "",
        "Iface\tDestination\tGateway \tFlags\n",
        "Iface\tDestination\tGateway\neth0\t000011AC\t00000000\t0001\n",  # link route only
        "Iface\tDestination\tGateway\neth0\t00000000\t00000000\t0001\n",  # default route without gateway
        "Iface\tDestination\tGateway\neth0\t00000000\n",  # truncated line
    ],
)
def test_ipv4_tables_without_next_hop(text: str) -> None:
    assert parse_ipv4_routes(text) == set()


def test_ipv4_header_is_never_read_as_a_route() -> None:
    # A first line that looks like a default route is still the header.
    assert parse_ipv4_routes("eth0\t00000000\t010011AC\t0003\n") == set()


@pytest.mark.parametrize(
    "text",
    [
        # safe: tables without a next hop
        "",
        "00000000000000000000000000000000 00\n",  # truncated line
        ipv6_route("20010db8000000000000000000000000", "40", ZERO6, "00000001", "eth0"),  # on-link route
    ],
)
def test_ipv6_tables_without_next_hop(text: str) -> None:
    assert parse_ipv6_routes(text) == set()


def test_read_network_facts_takes_gateways_from_the_given_tables(tmp_path: Path) -> None:
    (tmp_path / "route").write_text(IPV4_ROUTES)
    (tmp_path / "ipv6_route").write_text(IPV6_ROUTES)

    facts = read_network_facts(tmp_path)

    assert facts.gateways == {
        ipaddress.ip_address("172.17.0.1"),
        ipaddress.ip_address("10.20.20.1"),
        ipaddress.ip_address("fe80::1"),
    }
    assert all(address.version in (4, 6) for address in facts.own_addresses)


def test_read_network_facts_without_route_tables_has_no_gateways(tmp_path: Path) -> None:
    assert read_network_facts(tmp_path).gateways == frozenset()


def test_read_network_facts_takes_subnets_of_both_families_from_the_interfaces(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {
        "lo": [addr(socket.AF_INET, "127.0.0.1", "255.0.0.0"), addr(socket.AF_INET6, "::1", "ffff:" * 7 + "ffff")],
        "eth0": [
            addr(socket.AF_INET, "10.20.0.2", "255.255.0.0"),
            addr(socket.AF_INET6, "fd00:20::2", "ffff:ffff:ffff:ffff::"),
            addr(socket.AF_INET6, "fe80::42:acff:fe14:2%eth0", "ffff:ffff:ffff:ffff::"),
        ],
    }
    monkeypatch.setattr(netinfo.psutil, "net_if_addrs", lambda: table)

    facts = read_network_facts(Path("/nonexistent"))

    # Loopback and link-local subnets are left out: their rules deny them whole.
    assert facts.subnets == {ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("fd00:20::/64")}
    assert ipaddress.ip_address("fd00:20::2") in facts.own_addresses
    assert facts.broadcasts == {ipaddress.ip_address("10.20.255.255")}
    assert facts.interfaces == (("eth0", ipaddress.IPv4Network("10.20.0.0/16")),)


def addr(family: int, address: str, netmask: str) -> SimpleNamespace:
    """One psutil.net_if_addrs() entry."""
    return SimpleNamespace(family=family, address=address, netmask=netmask)


def test_facts_signature_changes_with_each_table(tmp_path: Path) -> None:
    for name in SIGNATURE_FILES:
        (tmp_path / name).write_text("a\n")
    before = facts_signature(tmp_path)
    assert facts_signature(tmp_path) == before

    seen = {before}
    for name in SIGNATURE_FILES:
        (tmp_path / name).write_text("b\n")
        changed = facts_signature(tmp_path)
        assert changed not in seen, name
        seen.add(changed)


def test_facts_signature_of_missing_tables_is_stable(tmp_path: Path) -> None:
    assert facts_signature(tmp_path) == facts_signature(tmp_path)
