"""What every tool shares: the plan a request turns into, its findings stream, and the common checks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from appliance.config import Settings
from appliance.errors import ExecutionError, ValidationError
from appliance.parsers.lines import output_lines
from appliance.policy.model import Policy
from appliance.policy.netinfo import NetworkFacts
from appliance.policy.targets import CheckedTarget, Resolver, Scope
from appliance.results import PartialReason, ScanReport
from appliance.runner import RunResult

# How much of stderr an execution error quotes.
STDERR_QUOTED_BYTES = 2048


@dataclass(frozen=True)
class PlanContext:
    """Everything a planner may consult: one policy snapshot, its scope, the resolver, settings."""

    policy: Policy
    scope: Scope
    # None on a fleet front: names are routed by suffix and resolved by the segment that runs them.
    resolve: Resolver | None
    settings: Settings
    facts: NetworkFacts = field(default_factory=NetworkFacts)


class FindingStream(Protocol):
    """A scanner's findings parsed while it runs: fed each line as the runner reads it."""

    def feed(self, line: bytes) -> bool:
        """One line of the scanner's findings stream, newline removed (the runner's line callback:
        lines over 64 KiB arrive in 64 KiB pieces). True when it completed at least one finding
        (an nmap host, a masscan record, a gobuster line)."""
        ...

    def fields(self) -> dict[str, Any]:
        """The tool-specific result fields so far, ready for the result model: {"hosts": [...]},
        {"findings": [...]}, ... (models, not dicts, as the result model takes them)."""
        ...


@dataclass(frozen=True)
class ScanPlan:
    """A checked request: the exact argv and budget, ready for the runner (or a dry run)."""

    tool: str
    target: CheckedTarget
    argv: tuple[str, ...]
    timeout_seconds: int
    arguments: Mapping[str, Any]
    findings: Callable[[], FindingStream]  # a fresh stream for each run
    findings_stream: Literal["stdout", "stderr"] = "stdout"
    env: Mapping[str, str] = field(default_factory=dict)
    progress_stream: Literal["stdout", "stderr"] = "stdout"
    progress: Callable[[bytes], float | None] | None = None
    rate: int = 0  # packets per second this plan claims from the shared masscan budget
    engagement: str | None = None  # the engagement the checks placed it in (None: no engagements)
    segment: str | None = None  # on a fleet front: the segment it is routed to
    shards: tuple[str, ...] = ()  # on a fleet front: the blocks it is split into (README "Fleet", Sharding)


def check_timeout(requested: int | None, policy: Policy) -> int:
    limits = policy.limits
    if requested is None:
        return limits.default_timeout_seconds
    if not 1 <= requested <= limits.max_timeout_seconds:
        raise ValidationError(
            f"timeout_seconds {requested} is outside 1-{limits.max_timeout_seconds}",
            rule="timeout_out_of_bounds",
            recovery_suggestion=f"Use at most {limits.max_timeout_seconds} seconds, or scan less per call.",
        )
    return requested


def binary(path: Path) -> str:
    """The scanner's absolute path as an argv[0] (the runner refuses relative ones)."""
    return str(path)


def report_fields(plan: ScanPlan, request_id: str, run: RunResult | None) -> dict[str, Any]:
    """The `ScanReport` fields every tool fills the same way."""
    fields: dict[str, Any] = {
        "tool": plan.tool,
        "request_id": request_id,
        "target": plan.target.requested,
        "scanned_address": plan.target.scan_arg,
        "argv": list(plan.argv),
        "dry_run": run is None,
    }
    if run is None:
        return fields
    reason: PartialReason | None = None
    if run.timed_out:
        reason = "timeout"
    elif run.stdout_truncated:
        reason = "output_cap"
    elif run.stopped:
        reason = "shutdown"
    # The raw output is not part of the result: the job store keeps it (scan://{id}/raw).
    fields.update(
        exit_code=run.exit_code,
        duration_seconds=round(run.duration_seconds, 3),
        partial=reason is not None,
        partial_reason=reason,
    )
    return fields


def fed_stream(plan: ScanPlan, run: RunResult, stream: FindingStream | None) -> FindingStream:
    """The stream the service fed during the run, or, without one (a caller holding only a
    RunResult), a fresh stream fed the captured output line by line: one parser either way."""
    if stream is not None:
        return stream
    stream = plan.findings()
    for line in output_lines(run.stdout if plan.findings_stream == "stdout" else run.stderr):
        stream.feed(line)
    return stream


def scanner_failed(plan: ScanPlan, run: RunResult) -> ExecutionError:
    """An error for a scanner that exited non-zero without output we can use."""
    quoted = run.stderr[-STDERR_QUOTED_BYTES:].decode("utf-8", errors="replace").strip()
    return ExecutionError(
        f"{plan.argv[0]} exited with status {run.exit_code}: {quoted or 'no error output'}",
        rule="scanner_exit_status",
    )


def summary_line(report: ScanReport, found: str) -> str:
    state = "dry run, nothing started" if report.dry_run else f"finished in {report.duration_seconds:.2f}s"
    if report.partial:
        state = f"PARTIAL ({report.partial_reason}) after {report.duration_seconds:.2f}s"
    return f"{report.tool} {report.target} -> {report.scanned_address}: {state}. {found}"
