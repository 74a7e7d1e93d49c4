"""The servers of the host comparison: how to start each one over stdio, the call that scans the
loopback listener, and the argv that call runs (timed directly as its floor).

The benchmark process builds them (bench/host.py) and hands them as JSON to its copy in the empty
network namespace (bench/host_compare.py); every path in them is absolute by then.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from appliance.config import DEFAULT_POLICY_PATH
from bench.lab import REPO

# The listener the benchmark starts inside the namespace (bench/host_compare.py); 8080 because a
# peer's summary crashes on an open port whose service has no name in nmap-services.
TARGET = "127.0.0.1"
PORT = 8080
APPLIANCE = "appliance"
BARE = "bare-sdk"  # no dot: figure paths in the JSON are dotted in tests
# The bare server's argv: the appliance's own for the same call (from a dry run), set per run.
BARE_ARGV_ENV = "BENCH_BARE_ARGV"


@dataclass(frozen=True)
class ServerSpec:
    """One server: `command` with `env` (nothing else of ours) in `cwd`; `tool` with `arguments`
    scans TARGET:PORT. `direct_argv` None: the appliance's dry-run argv for that call. A result
    counts when `open_pattern` (a regular expression) matches its text, or for None when its
    structured content reports the port open (the appliance's shape)."""

    name: str
    command: tuple[str, ...]
    env: dict[str, str]
    tool: str
    arguments: dict[str, Any]
    cwd: str | None = None
    direct_argv: tuple[str, ...] | None = None
    open_pattern: str | None = None
    notes: str = ""
    wants_argv: bool = False  # the bare server: gets the appliance's argv at start

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerSpec:
        direct = data.get("direct_argv")
        return cls(
            **{
                **data,
                "command": tuple(data["command"]),
                "direct_argv": None if direct is None else tuple(direct),
            }
        )


def base_env() -> dict[str, str]:
    """What every host server gets: a PATH that finds nmap, and no proxy or venv of ours."""
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C.UTF-8"}


def write_loopback_policy(folder: Path) -> Path:
    """The appliance's default policy opened to 127.0.0.1 only (insecure_allow_loopback: the host
    comparison runs in an empty network namespace, where loopback is all there is)."""
    policy = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    policy["scope"].update(allow_networks=[f"{TARGET}/32"], insecure_allow_loopback=True, deny_networks=[])
    policy["tools"]["nmap_scan"]["allowed_scripts"] = []  # no dependency on the host's script.db
    path = folder / "host-scope.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


def appliance(folder: Path) -> ServerSpec:
    """The appliance from .venv, stdio, its own policy and job store under `folder`."""
    env = {
        **base_env(),
        "APPLIANCE_TRANSPORT": "stdio",
        "APPLIANCE_POLICY_PATH": str(write_loopback_policy(folder)),
        "APPLIANCE_HEALTH_ENABLED": "false",
        # Its own job store: the fallback /tmp/appliance-data is shared by every host appliance.
        "APPLIANCE_DATA_DIR": str(folder / "data"),
    }
    return ServerSpec(
        name=APPLIANCE,
        command=(str(REPO / ".venv" / "bin" / "appliance"), "serve"),
        env=env,
        tool="nmap_scan",
        arguments={"target": TARGET, "ports": str(PORT)},
    )


def bare() -> ServerSpec:
    """bench/bare_server.py on this interpreter (the SDK 2.3 of .venv): the SDK's own floor."""
    return ServerSpec(
        name=BARE,
        command=(sys.executable, str(REPO / "bench" / "bare_server.py")),
        env=base_env(),
        tool="nmap",
        arguments={},
        open_pattern=rf'state="open"|{PORT}/tcp\s+open',
        wants_argv=True,
    )
