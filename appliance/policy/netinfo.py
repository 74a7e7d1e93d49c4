"""Facts about this host that the scope must deny: its own addresses, subnet broadcasts, gateways.

Read once at start (and at each policy reload). Reading is local: interface tables and
/proc/net routes, no packets.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path

import psutil

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class NetworkFacts:
    own_addresses: frozenset[IPAddress] = field(default_factory=frozenset)
    broadcasts: frozenset[IPAddress] = field(default_factory=frozenset)
    gateways: frozenset[IPAddress] = field(default_factory=frozenset)
    # (interface name, its IPv4 subnet): which lab targets are on-link, for masscan's adapter.
    interfaces: tuple[tuple[str, ipaddress.IPv4Network], ...] = ()

    def onlink_interface(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str | None:
        """The interface whose subnet holds all of `network`, if any."""
        for name, subnet in self.interfaces:
            if isinstance(network, ipaddress.IPv4Network) and network.subnet_of(subnet):
                return name
        return None


def parse_ipv4_routes(text: str) -> set[IPAddress]:
    """Default gateways from /proc/net/route (hex, little-endian). Only default routes count."""
    gateways: set[IPAddress] = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 3 or fields[1] != "00000000":
            continue
        gateway = int(fields[2], 16)
        if gateway:
            gateways.add(ipaddress.IPv4Address(gateway.to_bytes(4, "little")))
    return gateways


def parse_ipv6_routes(text: str) -> set[IPAddress]:
    """Default gateways from /proc/net/ipv6_route (destination ::/0 with a next hop)."""
    gateways: set[IPAddress] = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[0] != "0" * 32 or fields[1] != "00":
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


def read_network_facts(proc: Path = Path("/proc/net")) -> NetworkFacts:
    own: set[IPAddress] = set()
    broadcasts: set[IPAddress] = set()
    interfaces: list[tuple[str, ipaddress.IPv4Network]] = []
    for name, addresses in psutil.net_if_addrs().items():
        for entry in addresses:
            if entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            address = ipaddress.ip_address(entry.address.split("%", 1)[0])
            own.add(address)
            if entry.family == socket.AF_INET and entry.netmask:
                network = ipaddress.IPv4Network(f"{address}/{entry.netmask}", strict=False)
                if not network.is_loopback:
                    interfaces.append((name, network))
                if network.prefixlen < 31:
                    broadcasts.add(network.broadcast_address)
    gateways = parse_ipv4_routes(_read(proc / "route")) | parse_ipv6_routes(_read(proc / "ipv6_route"))
    return NetworkFacts(frozenset(own), frozenset(broadcasts), frozenset(gateways), tuple(interfaces))
