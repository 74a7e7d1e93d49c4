"""Shared pytest fixtures."""

from __future__ import annotations

import copy
import io
import ipaddress
import os
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import settings as hypothesis_settings
from prometheus_client import CollectorRegistry
from support import FakeResolver, LabService, SpyRunner, merge
from support.nats import NatsServer, nats_server

from appliance.audit import AuditSink
from appliance.config import Settings
from appliance.metrics import Metrics
from appliance.policy.model import Policy
from appliance.policy.netinfo import NetworkFacts
from appliance.policy.scope import compile_scope
from appliance.policy.store import PolicyStore
from appliance.policy.targets import Scope
from appliance.service import ScanService
from appliance.tools import TOOLS


@pytest.fixture(scope="session")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One real nats-server with JetStream on 127.0.0.1 for the session; tests keep apart by
    using buckets and subjects of their own."""
    with nats_server(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture
def anyio_backend() -> str:
    """The runner and the MCP server run on asyncio; anyio tests use that backend only."""
    return "asyncio"


# Scope-policy tests: the lab policy, this host's facts and fakes. Nothing here sends a packet.

# Property tests: 200 examples each by default; HYPOTHESIS_PROFILE=long searches much deeper.
hypothesis_settings.register_profile("standard", max_examples=200, deadline=None)
hypothesis_settings.register_profile("long", max_examples=20_000, deadline=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "standard"))

# The lab every policy test uses: two allowed networks, one policy deny, one lab suffix.
LAB_POLICY_DATA: dict[str, Any] = {
    "version": 2,
    "scope": {
        "allow_networks": ["10.20.0.0/16", "192.168.56.0/24"],
        "allow_hostname_suffixes": [".lab.internal"],
        "deny_networks": ["10.20.99.0/24"],
        "deny_default_gateways": True,
        "deny_own_addresses": True,
        "insecure_allow_loopback": False,
    },
    "limits": {
        "max_hosts_per_call": 256,
        "max_ports_per_call": 1024,
        "default_timeout_seconds": 120,
        "max_timeout_seconds": 600,
    },
    "tools": {
        "nmap_scan": {
            "allowed_scripts": ["banner", "http-title", "ssl-cert"],
            "max_rate": 1000,
            "min_timing": 1,
            "max_timing": 4,
        },
        "masscan_scan": {"default_rate": 100, "max_rate": 1000, "max_wait_seconds": 5},
        "gobuster_scan": {"default_threads": 4, "max_threads": 10, "dns_resolver": "10.20.0.53:53"},
    },
}

# This host as the scope sees it: its own addresses (one loopback), a broadcast, the default
# gateway and the next hop of a static route, and its subnets (an IPv4 /16 and an IPv6 /64).
LAB_FACTS = NetworkFacts(
    own_addresses=frozenset(
        {
            ipaddress.ip_address("10.20.0.2"),
            ipaddress.ip_address("fd00:20::2"),
            ipaddress.ip_address("127.0.0.1"),
            ipaddress.ip_address("::1"),
        }
    ),
    broadcasts=frozenset({ipaddress.ip_address("10.20.255.255")}),
    gateways=frozenset({ipaddress.ip_address("10.20.0.1"), ipaddress.ip_address("10.20.5.254")}),
    subnets=frozenset({ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("fd00:20::/64")}),
)

# Entries in nmap's script.db format for the lab allowlist (banner, http-title, ssl-cert).
LAB_SCRIPT_DB = """\
Entry { filename = "banner.nse", categories = { "discovery", "safe", } }
Entry { filename = "http-title.nse", categories = { "default", "discovery", "safe", } }
Entry { filename = "ssl-cert.nse", categories = { "default", "discovery", "safe", } }
Entry { filename = "http-brute.nse", categories = { "brute", "intrusive", } }
Entry { filename = "broadcast-dhcp-discover.nse", categories = { "broadcast", "safe", } }
"""


@pytest.fixture(scope="session")
def lab_policy() -> Policy:
    return Policy.model_validate(LAB_POLICY_DATA)


@pytest.fixture(scope="session")
def lab_scope(lab_policy: Policy) -> Scope:
    return compile_scope(lab_policy, LAB_FACTS)


@pytest.fixture
def lab_policy_data() -> dict[str, Any]:
    """A fresh copy of the lab policy as data, to change and write to a file."""
    return copy.deepcopy(LAB_POLICY_DATA)


@pytest.fixture
def lab_facts() -> NetworkFacts:
    return LAB_FACTS


@pytest.fixture
def lab_script_db(tmp_path: Path) -> Path:
    """A script.db holding the lab allowlist (and two scripts no policy may allow)."""
    path = tmp_path / "script.db"
    path.write_text(LAB_SCRIPT_DB, encoding="utf-8")
    # The scripts themselves, for the private --datadir the store builds (nse.build_nmap_datadir).
    for name in re.findall(r'filename = "([^"]+)"', LAB_SCRIPT_DB):
        (tmp_path / name).write_text(f"-- {name}: a stand-in, never run\n", encoding="utf-8")
    return path


@pytest.fixture
def make_resolver() -> Callable[..., FakeResolver]:
    return FakeResolver


@pytest.fixture
def spy_runner() -> SpyRunner:
    """The one spy runner (tests/support/runners.py): fails the test if a scanner would start."""
    return SpyRunner()


@pytest.fixture
def lab_service(
    tmp_path: Path, lab_policy_data: dict[str, Any], lab_facts: NetworkFacts, lab_script_db: Path
) -> Callable[..., LabService]:
    """Build a LabService: the lab policy with `policy` merged in, a dict resolver answering
    `resolves` (never a real lookup) and, unless a test gives its own, the spy runner."""

    def build(
        policy: Mapping[str, Any] | None = None,
        *,
        resolves: Mapping[str, Sequence[str]] | None = None,
        resolve: Callable[[str], Awaitable[list[str]]] | None = None,
        runner: Any = None,
        privilege_mode: str = "raw",
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> LabService:
        path = tmp_path / "policy.yaml"
        path.write_text(yaml.safe_dump(merge(lab_policy_data, dict(policy or {})), sort_keys=False), encoding="utf-8")
        audit, registry, resolver = io.StringIO(), CollectorRegistry(), FakeResolver(resolves)
        runner = SpyRunner() if runner is None else runner
        service = ScanService(
            Settings(privilege_mode=privilege_mode, policy_path=path),  # type: ignore[arg-type]
            PolicyStore(path, facts=lambda: lab_facts, script_db=lab_script_db),
            AuditSink(stream=audit),
            resolve=resolve or resolver,
            runner=runner,
            metrics=Metrics(registry, TOOLS, process=False),
            **({} if clock is None else {"clock": clock}),
            **({} if wall_clock is None else {"wall_clock": wall_clock}),
        )
        return LabService(service, audit, registry, resolver, runner)

    return build


@pytest.fixture(autouse=True)
def own_data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test's appliances (in-process and child processes) keep jobs in a directory of its
    own: never the host's /var/lib/appliance, never a store another test recovers."""
    path = tmp_path_factory.mktemp("data")
    monkeypatch.setenv("APPLIANCE_DATA_DIR", str(path))
    return path
