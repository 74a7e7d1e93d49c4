"""scripts/lab_subnet_check.py: scripts/up refuses a compose lab subnet that the host routes.

The routes are handed in as `ip -j -4 route show` would print them; nothing is read from (or
sent to) the host's network.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support import REPO

CHECK = REPO / "scripts" / "lab_subnet_check.py"
HOST_ROUTES = [
    {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
    {"dst": "192.0.2.0/24", "dev": "eth0", "protocol": "kernel", "scope": "link", "prefsrc": "192.0.2.2"},
    {"dst": "172.17.0.0/16", "dev": "docker0", "protocol": "kernel", "scope": "link"},
    {"dst": "10.77.0.0/24", "dev": "br-0123456789ab", "protocol": "kernel", "scope": "link"},
    {"dst": "10.200.0.0/16", "gateway": "192.0.2.254", "dev": "eth0"},
]


def check(subnet: str, own_bridge: str = "", routes: list[dict[str, str]] = HOST_ROUTES) -> tuple[int, str]:
    args = [sys.executable, str(CHECK), subnet, *([own_bridge] if own_bridge else [])]
    done = subprocess.run(args, input=json.dumps(routes), capture_output=True, text=True, timeout=30, check=False)
    return done.returncode, done.stdout


@pytest.mark.parametrize(
    ("subnet", "overlap"),
    [
        # unsafe
        ("10.77.0.0/24", "10.77.0.0/24 dev br-0123456789ab"),  # another deployment's bridge
        ("172.17.5.0/24", "172.17.0.0/16 dev docker0"),  # inside a wider connected route
        ("192.0.0.0/16", "192.0.2.0/24 dev eth0"),  # wider than the host's own network
        ("10.200.3.0/24", "10.200.0.0/16 dev eth0"),  # a routed (not connected) network
    ],
)
def test_lab_subnet_check_refuses_a_subnet_the_host_routes(subnet: str, overlap: str) -> None:
    assert check(subnet) == (1, overlap + "\n")


@pytest.mark.parametrize(
    "subnet",
    [
        # safe
        "10.78.0.0/24",
        "10.76.255.0/24",
        "172.31.0.0/24",
    ],
)
def test_lab_subnet_check_accepts_a_free_subnet_despite_the_default_route(subnet: str) -> None:
    assert check(subnet) == (0, "")


def test_lab_subnet_check_ignores_this_deployments_own_lab_bridge() -> None:
    assert check("10.77.0.0/24", own_bridge="br-0123456789ab") == (0, "")
    # Only that bridge: the same subnet routed elsewhere is still a conflict.
    routes = [*HOST_ROUTES, {"dst": "10.77.0.0/25", "dev": "eth1"}]
    assert check("10.77.0.0/24", "br-0123456789ab", routes) == (1, "10.77.0.0/25 dev eth1\n")


@pytest.mark.parametrize("subnet", ["10.77.0.1/24", "fd00:77::/64", "lab", ""])
def test_lab_subnet_check_refuses_what_is_not_an_ipv4_network(subnet: str) -> None:
    code, out = check(subnet)
    assert (code, out) == (2, "")
