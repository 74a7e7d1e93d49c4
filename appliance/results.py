"""Typed results of the three tools. Their JSON schemas are the tools' `outputSchema`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

PartialReason = Literal["timeout", "output_cap", "shutdown"]


class ScanReport(BaseModel):
    """What every tool result carries, whatever the scanner."""

    tool: str = Field(description="The tool that produced this result.")
    request_id: str = Field(description="Correlation id of this call; it is in the logs and the audit trail.")
    target: str = Field(description="The target as the caller gave it.")
    scanned_address: str = Field(
        description="The checked IP literal or CIDR block handed to the scanner (hostnames are resolved first)."
    )
    argv: list[str] = Field(description="The exact argument vector that was (or, for a dry run, would be) run.")
    dry_run: bool = Field(description="True when nothing was started: the result only shows the verdict and argv.")
    verdict: Literal["allowed"] = Field(
        default="allowed", description="Refusals come back as errors; a result means the policy allowed it."
    )
    exit_code: int | None = Field(default=None, description="Scanner exit status; null for a dry run or a kill.")
    duration_seconds: float = Field(default=0.0, description="Wall-clock time the scanner ran.")
    partial: bool = Field(default=False, description="True when the scanner was stopped before it finished.")
    partial_reason: PartialReason | None = Field(
        default=None, description="Why the result is partial: the time budget, the output cap, or shutdown."
    )


class NmapScript(BaseModel):
    id: str
    output: str


class NmapPort(BaseModel):
    port: int
    protocol: str
    state: str = Field(description="open: other states are only counted in port_counts.")
    reason: str | None = None
    service: str | None = Field(default=None, description="Service name nmap guessed or detected.")
    product: str | None = None
    version: str | None = None
    extrainfo: str | None = None
    scripts: list[NmapScript] = Field(default_factory=list)


class NmapHost(BaseModel):
    address: str
    status: str = Field(description="up or down, as nmap reported it.")
    hostnames: list[str] = Field(default_factory=list)
    ports: list[NmapPort] = Field(default_factory=list, description="Open ports only.")
    port_counts: dict[str, int] = Field(
        default_factory=dict,
        description='Ports seen per state, open included: {"open": 2, "closed": 98}.',
    )


class NmapResult(ScanReport):
    hosts: list[NmapHost] = Field(default_factory=list)


class MasscanFinding(BaseModel):
    ip: str
    port: int
    protocol: str
    status: str
    reason: str | None = None
    ttl: int | None = None


class MasscanResult(ScanReport):
    findings: list[MasscanFinding] = Field(default_factory=list)


class GobusterFinding(BaseModel):
    kind: Literal["path", "vhost", "subdomain"]
    value: str = Field(description="The path (dir mode), virtual host (vhost) or name (dns) that was found.")
    status: int | None = Field(default=None, description="HTTP status (dir and vhost modes).")
    size: int | None = Field(default=None, description="Response size in bytes (dir and vhost modes).")
    addresses: list[str] = Field(default_factory=list, description="Resolved addresses (dns mode).")


class GobusterResult(ScanReport):
    mode: Literal["dir", "vhost", "dns"]
    findings: list[GobusterFinding] = Field(default_factory=list)
