"""Default gateways from /proc/net route tables (sample text; nothing is read from this host's tables)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from appliance.policy.netinfo import parse_ipv4_routes, parse_ipv6_routes, read_network_facts

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


def test_ipv4_default_gateways_are_read_little_endian() -> None:
    assert parse_ipv4_routes(IPV4_ROUTES) == {
        ipaddress.ip_address("172.17.0.1"),
        ipaddress.ip_address("10.20.20.1"),
    }


def test_ipv6_default_gateways_skip_routes_without_a_next_hop() -> None:
    assert parse_ipv6_routes(IPV6_ROUTES) == {ipaddress.ip_address("fe80::1")}


@pytest.mark.parametrize(
    "text",
    [
        # safe: tables without a default gateway
        "",
        "Iface\tDestination\tGateway \tFlags\n",
        "Iface\tDestination\tGateway\neth0\t000011AC\t00000000\t0001\n",  # link route only
        "Iface\tDestination\tGateway\neth0\t00000000\t00000000\t0001\n",  # default route without gateway
        "Iface\tDestination\tGateway\neth0\t00000000\n",  # truncated line
    ],
)
def test_ipv4_tables_without_default_gateway(text: str) -> None:
    assert parse_ipv4_routes(text) == set()


def test_ipv4_header_is_never_read_as_a_route() -> None:
    # A first line that looks like a default route is still the header.
    assert parse_ipv4_routes("eth0\t00000000\t010011AC\t0003\n") == set()


@pytest.mark.parametrize(
    "text",
    [
        # safe: tables without a default gateway
        "",
        "00000000000000000000000000000000 00\n",  # truncated line
        # a ::/1 route is not a default route even though its destination is ::
        ipv6_route(ZERO6, "01", "fe800000000000000000000000000001", "00000003", "eth0"),
    ],
)
def test_ipv6_tables_without_default_gateway(text: str) -> None:
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
