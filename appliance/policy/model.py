"""The scope policy as typed data, loaded from a versioned YAML file and validated once.

A policy that loads is internally consistent: the checks in `appliance.policy` never have to
defend against a half-valid policy.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from appliance import yamlload
from appliance.errors import PolicyError
from appliance.policy.approval_rules import ApprovalRules
from appliance.policy.engagements import Engagement, engagement_problems
from appliance.policy.fields import NetworkLists, Strict
from appliance.policy.migrate import Moved, from_version_1, refuse_version_1_keys
from appliance.policy.targets import LOOPBACK

log = logging.getLogger(__name__)

# 3 adds `engagements`; 2 is the same layout without them; 1 is converted at load.
POLICY_VERSION = 3
ENGAGEMENTS_VERSION = 3
SCRIPT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
RESOLVER = re.compile(r"^(?P<ip>\d{1,3}(?:\.\d{1,3}){3})(?::(?P<port>\d{1,5}))?$")

# Default NSE allowlist: each script is in the "safe" and "default"/"discovery" categories of
# nmap 7.93's script.db and talks only to the scanned host and port.
DEFAULT_SCRIPTS = ("banner", "http-title", "http-headers", "http-server-header", "ssl-cert", "ssh-hostkey")
# NSE categories whose scripts talk to third parties, flood the segment or attack the target.
FORBIDDEN_SCRIPT_CATEGORIES = frozenset(
    {"external", "broadcast", "intrusive", "dos", "exploit", "brute", "malware", "fuzzer"}
)


class ScopeRules(NetworkLists):
    allow_networks: list[str] = Field(
        default_factory=lambda: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
        description="Every scanned address must lie in one of these. IPv6 only when a v6 range is listed.",
    )
    allow_hostname_suffixes: list[str] = Field(
        default_factory=lambda: [".lab.internal"],
        description="Hostnames must end in one of these; other names are refused without a lookup.",
    )
    deny_networks: list[str] = Field(
        default_factory=list, description="Extra never-scan ranges on top of the built-in deny list."
    )
    deny_default_gateways: bool = Field(
        default=True,
        description="Refuse the appliance's routers: every next hop of its routing tables, the first host of "
        "each own subnet (Docker's gateway: the host) and each own IPv6 subnet-router anycast address. "
        "A custom gateway that is neither belongs in deny_networks.",
    )
    deny_own_addresses: bool = Field(default=True, description="Refuse the appliance's own addresses.")
    insecure_allow_loopback: bool = Field(
        default=False,
        strict=True,  # only a real YAML true opens loopback, never "yes" or 1
        description="TEST/DEMO ONLY: allow 127.0.0.0/8 and ::1. Logged loudly, shown in health.",
    )


class ToolConcurrency(Strict):
    running: int = Field(default=2, ge=1, le=64, description="Scans of this tool running at once.")
    queued: int = Field(default=4, ge=0, le=1024, description="Calls that may wait for a slot; more are refused.")


class PerToolConcurrency(Strict):
    """Order 1: a call over its tool's queue is refused with `queue_full`."""

    nmap_scan: ToolConcurrency = Field(default_factory=ToolConcurrency)
    masscan_scan: ToolConcurrency = Field(default_factory=ToolConcurrency)
    gobuster_scan: ToolConcurrency = Field(default_factory=ToolConcurrency)


class GlobalConcurrency(Strict):
    """Order 2: all tools and principals together. A call over `running` waits in its tool's queue."""

    running: int = Field(default=4, ge=1, le=256, description="Scans running at once, all tools.")
    # 256 is also the transport's fixed ceiling (appliance.http.MAX_SESSIONS).
    sessions: int = Field(default=256, ge=1, le=256, description="Open MCP sessions, all principals (`sessions_full`).")


class PrincipalConcurrency(Strict):
    """Order 3: what one authenticated principal may hold, so it cannot lock the others out."""

    running: int = Field(default=3, ge=1, le=256, description="Scans of all tools running at once.")
    queued: int = Field(
        default=6, ge=0, le=1024, description="Calls waiting for a slot, all tools (`principal_queue_full`)."
    )
    sessions: int = Field(
        default=32, ge=1, le=256, description="Open MCP sessions, handshake era (`principal_sessions_full`)."
    )
    stored_jobs: int = Field(
        default=1000, ge=1, le=1_000_000, description="Finished scans kept per principal; the oldest go first."
    )


class EngagementConcurrency(Strict):
    """Order 4: what one engagement may hold (its `budget.concurrent_scans` overrides `running`)."""

    running: int = Field(
        default=4, ge=1, le=256, description="Scans queued or running at once (`engagement_budget_exhausted`)."
    )


class Concurrency(Strict):
    """The one limits table, checked in field order: per tool, global, per principal, per engagement."""

    per_tool: PerToolConcurrency = Field(default_factory=PerToolConcurrency)
    # `global` is a Python keyword; the file says `global`, the code `global_`.
    global_: GlobalConcurrency = Field(default_factory=GlobalConcurrency, alias="global")
    per_principal: PrincipalConcurrency = Field(default_factory=PrincipalConcurrency)
    per_engagement: EngagementConcurrency = Field(default_factory=EngagementConcurrency)


class Limits(Strict):
    max_hosts_per_call: int = Field(default=256, ge=1, le=65536, description="Addresses one CIDR target may cover.")
    max_ports_per_call: int = Field(default=1024, ge=1, le=65535, description="Ports one call may name.")
    default_timeout_seconds: int = Field(default=120, ge=1, le=3600)
    max_timeout_seconds: int = Field(default=600, ge=1, le=86400)
    output_cap_bytes: int = Field(default=4 * 1024 * 1024, ge=4096, le=256 * 1024 * 1024)
    default_wait_seconds: int = Field(
        default=20, ge=0, le=3600, description="How long a scan call waits for its result when it names no wait."
    )
    max_wait_seconds: int = Field(
        default=120, ge=0, le=3600, description="Upper bound of wait_seconds (scan calls and get_scan)."
    )
    stored_raw_bytes: int = Field(
        default=256 * 1024, ge=0, le=64 * 1024 * 1024, description="Raw scanner output kept per job (scan://{id}/raw)."
    )
    concurrency: Concurrency = Field(default_factory=Concurrency)

    @model_validator(mode="after")
    def _timeouts_ordered(self) -> Limits:
        if self.default_timeout_seconds > self.max_timeout_seconds:
            raise ValueError("default_timeout_seconds must not exceed max_timeout_seconds")
        if self.default_wait_seconds > self.max_wait_seconds:
            raise ValueError("default_wait_seconds must not exceed max_wait_seconds")
        return self


class _ToolRules(Strict):
    enabled: bool = Field(default=True, description="A disabled tool leaves the tool list; clients are told.")
    breaker_force: Literal["open", "closed"] | None = Field(
        default=None, description="Operator override of the circuit breaker: open refuses every call."
    )


class NmapRules(_ToolRules):
    allowed_scripts: list[str] = Field(default_factory=lambda: list(DEFAULT_SCRIPTS))
    default_top_ports: int = Field(default=100, ge=1, le=1000, description="Ports scanned when none are named.")
    max_rate: int = Field(default=1000, ge=1, le=100000, description="Upper bound for --max-rate/--min-rate (pps).")
    min_timing: int = Field(default=1, ge=0, le=5)
    max_timing: int = Field(default=4, ge=0, le=5)
    max_hostgroup: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="nmap --max-hostgroup: nmap reports a host when its group is done, so this bounds how "
        "many hosts a running scan's findings so far lag behind. Set by the server, never by callers.",
    )

    @field_validator("allowed_scripts")
    @classmethod
    def _script_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not SCRIPT_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an NSE script name")
        return value

    @model_validator(mode="after")
    def _timing_ordered(self) -> NmapRules:
        if self.min_timing > self.max_timing:
            raise ValueError("min_timing must not exceed max_timing")
        return self


class MasscanRules(_ToolRules):
    default_rate: int = Field(default=100, ge=1, le=1_000_000)
    max_rate: int = Field(default=1000, ge=1, le=1_000_000, description="Packets per second, shared by all calls.")
    max_wait_seconds: int = Field(default=5, ge=0, le=60, description="Upper bound for masscan --wait.")

    @model_validator(mode="after")
    def _rates_ordered(self) -> MasscanRules:
        if self.default_rate > self.max_rate:
            raise ValueError("default_rate must not exceed max_rate")
        return self


class GobusterRules(_ToolRules):
    default_threads: int = Field(default=4, ge=1, le=100)
    max_threads: int = Field(default=10, ge=1, le=100)
    dns_resolver: str | None = Field(
        default=None,
        description="IP[:port] of the lab resolver for dns mode; it must be in scope. Unset: dns mode is refused.",
    )

    @field_validator("dns_resolver")
    @classmethod
    def _resolver_form(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = RESOLVER.fullmatch(value)
        if match is None:
            raise ValueError("dns_resolver must be an IPv4 literal with an optional :port, e.g. '10.20.0.53:53'")
        ipaddress.IPv4Address(match["ip"])
        if match["port"] is not None and not 1 <= int(match["port"]) <= 65535:
            raise ValueError("dns_resolver port must be 1-65535")
        return value

    @model_validator(mode="after")
    def _threads_ordered(self) -> GobusterRules:
        if self.default_threads > self.max_threads:
            raise ValueError("default_threads must not exceed max_threads")
        return self


class Resilience(Strict):
    breaker_failure_threshold: int = Field(default=5, ge=1, le=1000, description="Execution failures in a row.")
    breaker_recovery_seconds: float = Field(default=30.0, gt=0, le=3600, description="First wait before a probe.")
    breaker_max_recovery_seconds: float = Field(default=600.0, gt=0, le=86400, description="Cap of the doubling.")

    @model_validator(mode="after")
    def _recovery_ordered(self) -> Resilience:
        if self.breaker_recovery_seconds > self.breaker_max_recovery_seconds:
            raise ValueError("breaker_recovery_seconds must not exceed breaker_max_recovery_seconds")
        return self


class Retention(Strict):
    """How long finished scans are kept (running ones always are). Swept at start and each minute."""

    max_age_days: float = Field(default=30, gt=0, le=3650, description="Finished scans older than this go.")
    max_count: int = Field(default=10000, ge=1, le=10_000_000, description="Stored scans; the oldest finished go.")


class FleetRules(Strict):
    """How a fleet front splits a large nmap block into shards its segment's appliances run in
    parallel (README "Fleet", Sharding). Read by fronts only; a segment checks each shard as a job."""

    shard_above_hosts: int | None = Field(
        default=None,
        ge=2,
        le=65536,
        description="An nmap CIDR block with more addresses than this is split into shards. Unset: no sharding.",
    )
    shard_hosts: int = Field(
        default=64,
        ge=1,
        le=65536,
        description="Addresses per shard: a power of two, so each shard is one CIDR-aligned block.",
    )

    @model_validator(mode="after")
    def _shards_smaller(self) -> FleetRules:
        if self.shard_hosts & (self.shard_hosts - 1):
            raise ValueError(f"shard_hosts must be a power of two (1, 2, 4, ... 65536), not {self.shard_hosts}")
        if self.shard_above_hosts is not None and self.shard_hosts > self.shard_above_hosts:
            raise ValueError("shard_hosts must not exceed shard_above_hosts (a sharded block must split)")
        return self


class ToolRules(Strict):
    nmap_scan: NmapRules = Field(default_factory=NmapRules)
    masscan_scan: MasscanRules = Field(default_factory=MasscanRules)
    gobuster_scan: GobusterRules = Field(default_factory=GobusterRules)


class Policy(Strict):
    """One scope policy file. Unknown keys are errors: a typo must not silently widen scope."""

    version: Literal[2, 3] = Field(
        description="Format version of the policy file (3: with engagements; 1 is converted at load)."
    )
    scope: ScopeRules = Field(default_factory=ScopeRules)
    limits: Limits = Field(default_factory=Limits)
    tools: ToolRules = Field(default_factory=ToolRules)
    resilience: Resilience = Field(default_factory=Resilience)
    retention: Retention = Field(default_factory=Retention)
    approval: ApprovalRules = Field(default_factory=ApprovalRules)
    fleet: FleetRules = Field(default_factory=FleetRules)
    engagements: list[Engagement] | None = Field(
        default=None,
        description="Version 3: named engagements. Unset: every principal has the global scope (no engagements).",
    )

    @model_validator(mode="after")
    def _engagements_narrow(self) -> Policy:
        if self.engagements is None:
            return self
        if self.version < ENGAGEMENTS_VERSION:
            raise ValueError(f"engagements need version: {ENGAGEMENTS_VERSION}")
        problems = engagement_problems(
            self.engagements,
            allowed=self.scope.allowed(),
            loopback=LOOPBACK if self.scope.insecure_allow_loopback else (),
            suffixes=self.scope.allow_hostname_suffixes,
            masscan_max_rate=self.tools.masscan_scan.max_rate,
        )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def engagement(self, name: str) -> Engagement | None:
        return next((e for e in self.engagements or () if e.name == name), None)


@dataclass(frozen=True)
class PolicyDocument:
    """A validated policy and, for a version 1 file, the keys its conversion moved."""

    policy: Policy
    file_version: int
    moved: tuple[Moved, ...] = ()


def _where(loc: tuple[int | str, ...], moved: tuple[Moved, ...]) -> str:
    """A problem's dotted key, plus the version 1 key it came from when the conversion moved it."""
    key = ".".join(str(p) for p in loc) or "<root>"
    origin = next((m.old for m in moved if key == m.new or key.startswith(m.new + ".")), None)
    return key if origin is None else f"{key} (version 1 key {origin})"


def parse_document(text: str, *, source: str = "<policy>") -> PolicyDocument:
    """Parse and fully validate a policy document; every problem is named in one PolicyError.

    A version 1 document is converted to version 2 first and logs one warning naming the new layout.
    """
    try:
        data = yamlload.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}", rule="policy_yaml") from exc
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the policy must be a mapping with a 'version' key", rule="policy_shape")
    version = data.get("version")
    moved: tuple[Moved, ...] = ()
    converted = type(version) is int and version == 1  # YAML `true` is a bool, not version 1
    if converted:
        data, moved = from_version_1(data, source)
    elif version in (ENGAGEMENTS_VERSION - 1, ENGAGEMENTS_VERSION):
        refuse_version_1_keys(data, source)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{_where(e['loc'], moved)}: {e['msg']}" for e in exc.errors())
        raise PolicyError(f"{source}: {problems}", rule="policy_invalid") from exc
    if converted:
        log.warning(
            "policy file uses the version 1 layout; its limits were read into the version 2 table "
            "limits.concurrency (per_tool, global, per_principal). `appliance policy validate FILE` "
            "shows the converted form; write it with version: 2",
            extra={"policy_path": source, "moved_keys": [f"{m.old} -> {m.new}" for m in moved]},
        )
    return PolicyDocument(policy, 1 if converted else policy.version, moved)


def parse_policy(text: str, *, source: str = "<policy>") -> Policy:
    """Parse and fully validate a policy document (see `parse_document`)."""
    return parse_document(text, source=source).policy


def load_document(path: Path) -> PolicyDocument:
    """Read and validate a policy file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc.strerror}", rule="policy_unreadable") from exc
    return parse_document(text, source=str(path))


def load_policy(path: Path) -> Policy:
    """Read and validate a policy file."""
    return load_document(path).policy
