"""Name resolution for lab hostnames: the name asked is exactly the name checked, never a search-list variant.

glibc applies the resolv.conf `search` list (and `ndots`, 5 under Kubernetes) to a relative name:
`ghost.lab.internal` may be asked as `ghost.lab.internal.corp.example` first, and that answer
used. An absolute name (trailing dot) skips the search list. glibc 2.36's files backend does not
match `name.` against an /etc/hosts entry `name` (checked by hand: see the CHANGELOG), so
/etc/hosts is read here first, as glibc's `hosts: files dns` order would. Not covered: other NSS
sources (mdns, myhostname) an operator may list in nsswitch.conf, which the absolute name still
goes through.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HOSTS_FILE = Path("/etc/hosts")
# A lab DNS answer arrives in milliseconds; a slow one must not hold a call slot for long.
RESOLVE_TIMEOUT_SECONDS = 5.0

GetAddrInfo = Callable[..., Awaitable[list[tuple[Any, ...]]]]


def absolute_name(name: str) -> str:
    """`name` with the trailing dot that makes the resolver skip the search list."""
    return name if name.endswith(".") else f"{name}."


def hosts_lookup(name: str, text: str) -> list[str]:
    """Addresses /etc/hosts text gives `name` (case-insensitive, every matching line), sorted."""
    wanted = name.rstrip(".").lower()
    found: set[str] = set()
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or wanted not in (alias.lower() for alias in fields[1:]):
            continue
        try:
            found.add(str(ipaddress.ip_address(fields[0])))
        except ValueError:
            continue  # a malformed line: glibc skips it too
    return sorted(found)


def _read_hosts(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""  # no hosts file (a minimal container): the resolver alone answers


async def system_resolve(
    name: str, *, hosts_file: Path = HOSTS_FILE, getaddrinfo: GetAddrInfo | None = None
) -> list[str]:
    """Resolve a lab name: /etc/hosts first, then the system resolver with the absolute name."""
    from_hosts = hosts_lookup(name, await asyncio.to_thread(_read_hosts, hosts_file))
    if from_hosts:
        return from_hosts
    lookup = getaddrinfo or asyncio.get_running_loop().getaddrinfo
    try:
        infos = await asyncio.wait_for(
            lookup(absolute_name(name), None, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_SECONDS
        )
    except (OSError, TimeoutError):
        return []
    return sorted({str(info[4][0]) for info in infos})
