"""Facts about this host that the scope must deny: its own addresses, subnets, broadcasts, next hops.

Read at start, at each policy reload and whenever the kernel reports a change (`netwatch.py`,
`store.py`). Reading is local: interface tables and /proc/net files, no packets.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path

import psutil

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PROC_NET = Path("/proc/net")
# The kernel files that change when an address, a subnet or a route changes: IPv4 addresses and
# their subnets show in fib_trie's local and main tables, IPv6 addresses in if_inet6 (prefix
# lengths included), next hops in the two route tables.
SIGNATURE_FILES = ("fib_trie", "if_inet6", "route", "ipv6_route")


@dataclass(frozen=True)
class NetworkFacts:
    own_addresses: frozenset[IPAddress] = field(default_factory=frozenset)
    broadcasts: frozenset[IPAddress] = field(default_factory=frozenset)
    # Every next hop of the routing tables (default route or not).
    gateways: frozenset[IPAddress] = field(default_factory=frozenset)
    # The subnets of this host's own non-loopback addresses, both families.
    subnets: frozenset[IPNetwork] = field(default_factory=frozenset)
    # (interface name, its IPv4 subnet): which lab targets are on-link, for masscan's adapter.
    interfaces: tuple[tuple[str, ipaddress.IPv4Network], ...] = ()

    def onlink_interface(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str | None:
        """The interface whose subnet holds all of `network`, if any."""
        for name, subnet in self.interfaces:
            if isinstance(network, ipaddress.IPv4Network) and network.subnet_of(subnet):
                return name
        return None


def first_host(subnet: IPNetwork) -> IPAddress | None:
    """The subnet's first host address (Docker puts its gateway there), if the subnet has one."""
    if subnet.num_addresses <= 2:  # /31, /32, /127, /128: point-to-point or a single host
        return None
    return subnet.network_address + 1


def subnet_router_anycast(subnet: IPNetwork) -> IPAddress | None:
    """The IPv6 subnet-router anycast address (all-zero host, RFC 4291 2.6.1): the routers answer it."""
    if subnet.version != 6 or subnet.num_addresses <= 2:
        return None
    return subnet.network_address


def parse_ipv4_routes(text: str) -> set[IPAddress]:
    """Every next hop in /proc/net/route (hex, little-endian): all routes with a gateway."""
    gateways: set[IPAddress] = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 3:
            continue
        gateway = int(fields[2], 16)
        if gateway:
            gateways.add(ipaddress.IPv4Address(gateway.to_bytes(4, "little")))
    return gateways


def parse_ipv6_routes(text: str) -> set[IPAddress]:
    """Every next hop in /proc/net/ipv6_route: all routes whose next hop is not ::."""
    gateways: set[IPAddress] = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        hop = ipaddress.IPv6Address(bytes.fromhex(fields[4]))
        if int(hop):
            gateways.add(hop)
    return gateways


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""  # no such table (no IPv6 in this namespace): nothing to deny from it


def facts_signature(proc: Path = PROC_NET) -> bytes:
    """A cheap fingerprint of the kernel's address and route tables: equal means no change to read.

    Does not cover an IPv4 address added without a kernel route (the kernel always adds one).
    """
    parts = []
    for name in SIGNATURE_FILES:
        try:
            parts.append((proc / name).read_bytes())
        except OSError:
            parts.append(b"")
    return b"\0".join(parts)


def _prefixlen(netmask: str) -> int:
    return bin(int(ipaddress.ip_address(netmask))).count("1")


def read_network_facts(proc: Path = PROC_NET) -> NetworkFacts:
    own: set[IPAddress] = set()
    broadcasts: set[IPAddress] = set()
    subnets: set[IPNetwork] = set()
    interfaces: list[tuple[str, ipaddress.IPv4Network]] = []
    for name, addresses in psutil.net_if_addrs().items():
        for entry in addresses:
            if entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            address = ipaddress.ip_address(entry.address.split("%", 1)[0])
            own.add(address)
            if not entry.netmask:
                continue
            network = ipaddress.ip_network(f"{address}/{_prefixlen(entry.netmask)}", strict=False)
            if network.is_loopback or network.is_link_local:
                continue  # loopback has its own rule; fe80::/10 and 169.254/16 are denied whole
            subnets.add(network)
            if isinstance(network, ipaddress.IPv4Network):
                interfaces.append((name, network))
                if network.prefixlen < 31:
                    broadcasts.add(network.broadcast_address)
    gateways = parse_ipv4_routes(_read(proc / "route")) | parse_ipv6_routes(_read(proc / "ipv6_route"))
    return NetworkFacts(
        frozenset(own), frozenset(broadcasts), frozenset(gateways), frozenset(subnets), tuple(interfaces)
    )
