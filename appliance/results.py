"""Typed results of the three tools. Their JSON schemas are the tools' `outputSchema`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Self

from pydantic import BaseModel, Field, PrivateAttr

PartialReason = Literal["timeout", "output_cap", "shutdown", "engagement_ended", "shards_incomplete"]
# The job states (appliance.jobs.model.JobState) plus `dry_run`, which starts no job.
ScanStatus = Literal[
    "queued",
    "running",
    "awaiting_approval",
    "completed",
    "partial",
    "failed",
    "cancelled",
    "interrupted",
    "dry_run",
]
# 2: scans are jobs (scan_id, status), raw output moved to scan://{id}/raw, nmap ports compact.
RESULT_SCHEMA_VERSION = 2


class ScanReport(BaseModel):
    """What every tool result carries, whatever the scanner."""

    tool: str = Field(description="The tool that produced this result.")
    scan_id: str | None = Field(default=None, description="The job's id (get_scan, scan://{id}); null for a dry run.")
    status: ScanStatus = Field(
        default="completed", description="The job's state; running/queued: ask again with get_scan(scan_id)."
    )
    result_schema_version: int = Field(default=RESULT_SCHEMA_VERSION, description="Version of this result shape.")
    resource_uri: str | None = Field(default=None, description="scan://{scan_id}: this result as a resource.")
    progress: float | None = Field(default=None, description="Percent done, as the scanner reported it.")
    retry_after_seconds: int | None = Field(
        default=None, description="For an unfinished scan: when to call get_scan again (it can also wait)."
    )
    changes_since_previous: dict[str, Any] | None = Field(
        default=None,
        description="For a finished rescan: what changed since the previous completed scan of this tool and "
        "target (summary, previous_scan_id, entries; diff_scans has them all).",
    )
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
        default=None,
        description="Why the result is partial: the time budget, the output cap, shutdown, the end of its "
        "engagement's window, or (a sharded fleet scan) shards that did not complete.",
    )
    # This report as JSON when the job's end already built it (the stored result): the answer
    # reuses it instead of dumping the same report again. Not a field: never in the schema.
    _json: dict[str, Any] | None = PrivateAttr(default=None)

    def keep_json(self, dumped: dict[str, Any]) -> None:
        """Remember `dumped`, which must be `self.model_dump(mode="json")`, for `as_json`."""
        self._json = dumped

    def as_json(self) -> dict[str, Any]:
        """`model_dump(mode="json")`, built once: a copy of a report (`model_copy`) dumps afresh."""
        return self._json if self._json is not None else self.model_dump(mode="json")

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        # pydantic copies private attributes too: a changed copy must not answer with the old JSON.
        copy = super().model_copy(update=update, deep=deep)
        copy._json = None
        return copy


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


class AnyScanResult(ScanReport):
    """get_scan's and cancel_scan's result: one shape for the three tools, told apart by `tool`
    (nmap fills `hosts`; masscan and gobuster `findings`; gobuster also `mode`)."""

    hosts: list[NmapHost] | None = None
    findings: list[dict[str, Any]] | None = None
    mode: Literal["dir", "vhost", "dns"] | None = None
