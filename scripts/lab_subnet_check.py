"""Does the compose lab subnet overlap a route of this host? The check behind scripts/up.

Usage: ip -j -4 route show | python3 scripts/lab_subnet_check.py SUBNET [OWN_BRIDGE]

Prints each route that overlaps SUBNET ("DST dev DEV") and exits 1; exits 0 when none does;
exits 2 when SUBNET is not an IPv4 network address. A lab on a subnet the host already routes
would put real hosts into the scan scope. Not counted: default routes (every address overlaps
them, and the lab is an internal network that never uses them) and the routes of OWN_BRIDGE,
this deployment's own lab bridge (a second `scripts/up`). Standard library only: it runs on the
host's python3 before any venv exists.
"""

from __future__ import annotations

import ipaddress
import json
import sys


def overlapping(routes: list[dict[str, object]], lab: ipaddress.IPv4Network, own_bridge: str) -> list[str]:
    found = []
    for route in routes:
        destination, device = str(route.get("dst", "")), str(route.get("dev", ""))
        if destination == "default" or (own_bridge and device == own_bridge):
            continue
        if ipaddress.ip_network(destination, strict=False).overlaps(lab):
            found.append(f"{destination} dev {device}")
    return found


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        lab = ipaddress.IPv4Network(argv[0])
    except ValueError as exc:
        print(f"not an IPv4 network address: {exc}", file=sys.stderr)
        return 2
    found = overlapping(json.load(sys.stdin), lab, argv[1] if len(argv) == 2 else "")
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
