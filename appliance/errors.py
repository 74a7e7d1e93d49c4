"""The one error hierarchy of the appliance.

Every failure a caller can see is an `ApplianceError` subclass. Each class carries the
taxonomy name (`error_type`) that the MCP boundary (`appliance.server`) turns into a tool
result; nothing else in the package formats errors for the wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar


class ApplianceError(Exception):
    """Base of every error the appliance reports to a caller.

    `rule` names the check or condition that produced the error (for refusals, the policy rule);
    `recovery_suggestion` tells the caller what to do instead.
    """

    error_type: ClassVar[str] = "unknown"
    default_recovery: ClassVar[str] = "Retry later; if the error persists, contact the appliance operator."

    def __init__(
        self,
        message: str,
        *,
        rule: str = "unspecified",
        recovery_suggestion: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.rule = rule
        self.recovery_suggestion = recovery_suggestion or self.default_recovery
        # Added by the layer that knows them, e.g. the scan_id and status of the job that failed.
        self.details: dict[str, Any] = {}

    def to_dict(
        self,
        *,
        tool: str | None = None,
        target: str | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """The error as the JSON object a caller receives (the taxonomy of the seed)."""
        return {
            "error_type": self.error_type,
            "rule": self.rule,
            "message": self.message,
            "recovery_suggestion": self.recovery_suggestion,
            "tool": tool,
            "target": target,
            "request_id": request_id,
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
            **self.details,
        }


class ValidationError(ApplianceError):
    """The request breaks the scope policy or is malformed; nothing was started."""

    error_type = "validation_error"
    default_recovery = "Change the arguments to satisfy the named rule."


class ScanTimeoutError(ApplianceError):
    """The scanner ran past its time budget and was stopped."""

    error_type = "timeout"
    default_recovery = "Scan fewer ports or hosts, or raise timeout_seconds within the policy limit."


class NotFoundError(ApplianceError):
    """A named thing (tool, scanner binary, wordlist, host) does not exist or is not available."""

    error_type = "not_found"
    default_recovery = "Call tools/list to see which tools and options this appliance offers."


class ExecutionError(ApplianceError):
    """The scanner could not be started or failed in a way its output does not explain."""

    error_type = "execution_error"
    default_recovery = "Check the arguments with dry_run; if they are right, the operator should read the logs."


class ResourceExhaustedError(ApplianceError):
    """A concurrency, queue or output limit refused or cut the call."""

    error_type = "resource_exhausted"
    default_recovery = "Wait for running scans to finish, then retry with a smaller scan."


class PermissionDeniedError(ApplianceError):
    """The caller's token lacks a scope the call needs; nothing was started."""

    error_type = "permission_denied"
    default_recovery = "Ask for a token with the scope the message names."


class CircuitOpenError(ApplianceError):
    """The tool's circuit breaker is open after repeated execution failures."""

    error_type = "circuit_breaker_open"
    default_recovery = "Wait until the breaker's next probe time, then retry."


class PolicyError(ApplianceError):
    """A policy file is missing, unreadable or invalid. Raised at load and reload, not per call."""

    error_type = "validation_error"
    default_recovery = "Fix the policy file; `appliance policy validate FILE` shows every problem."


class ConfigError(ApplianceError):
    """A process setting (environment or secret file) is invalid; the appliance does not start."""

    error_type = "validation_error"
    default_recovery = "Fix the APPLIANCE_* setting named in the message and restart."


class UnexpectedError(ApplianceError):
    """Something the appliance did not foresee (a bug). The caller gets this, never a traceback;
    the operator's log has the traceback under the same request id."""

    error_type = "unknown"
    default_recovery = "Retry once; if it fails again, give the operator the request id."

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"the appliance failed unexpectedly while handling request {request_id}; "
            "the operator's log has the details",
            rule="unexpected_exception",
        )


# The class a caller's error object names, for an error another appliance recorded (a fleet
# segment's failed job, answered by the front that queued it). The first class of each type wins.
_BY_TYPE: dict[str, type[ApplianceError]] = {}
for _cls in (
    ValidationError,
    ScanTimeoutError,
    NotFoundError,
    ExecutionError,
    ResourceExhaustedError,
    PermissionDeniedError,
    CircuitOpenError,
):
    _BY_TYPE.setdefault(_cls.error_type, _cls)


def error_from_dict(body: Mapping[str, Any]) -> ApplianceError:
    """The error an error object (`ApplianceError.to_dict`) describes, with its details kept."""
    cls = _BY_TYPE.get(str(body.get("error_type")), ApplianceError)
    error = cls(
        str(body.get("message", "the scan failed")),
        rule=str(body.get("rule", "unspecified")),
        recovery_suggestion=body.get("recovery_suggestion"),
    )
    # What to_dict adds around the details is added again by whoever reports this error.
    framing = {"error_type", "rule", "message", "recovery_suggestion", "timestamp", "tool", "target", "request_id"}
    error.details.update({k: v for k, v in body.items() if k not in framing})
    return error
