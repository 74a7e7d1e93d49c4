"""Prometheus metrics on an injected registry (a fresh one per test), children created up front.

Without a registry of its caller's, the families (appliance.metric_families) are built at their
first use, and only then is prometheus_client imported, with its exposition stack (http.server,
wsgiref, urllib: ~15 ms): `serve` on stdio answers its first `tools/list` before a call is
counted or the sidecar asks for the registry. A caller that passes a registry (tests, to read
it) gets them built at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

    from appliance.audit import AuditFigures
    from appliance.metric_families import Families

OUTCOMES = ("ok", "partial", "refused", "error", "cancelled", "dry_run")
RELOAD_RESULTS = ("ok", "rejected")
# Refusals of no tool: unknown tools, oversized messages, and resources (scan://) not visible or malformed.
PROTOCOL_REFUSAL_RULES = (
    "tool_unknown",
    "message_too_large",
    "scan_not_found",
    "resource_unknown",
    "cursor_invalid",
    "subscribe_unsupported",
)
BREAKER_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}
# Scans run from milliseconds (a refused port) to minutes (a slow sweep).
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Scan jobs last from a second to hours.
JOB_DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)


@dataclass(frozen=True)
class ServingState:
    """What the alert rules ask of a running appliance, read when scraped (never stale):
    readiness as /readyz says it, each sink's writability, each tool's queue capacity beside its
    depth, and the longest time a job may run (the policy's max_timeout_seconds)."""

    ready: Callable[[], bool]
    sinks_writable: Callable[[], Mapping[str, bool]]
    queue_capacity: Callable[[], Mapping[str, int]]
    max_job_seconds: Callable[[], float]


class Metrics:
    """The appliance's metric families. `job_counts` (read at scrape time, with `job_states`)
    and `oldest_running` feed the job gauges; `audit` the audit chain's head and failures."""

    def __init__(
        self,
        registry: CollectorRegistry | None,
        tools: Iterable[str],
        *,
        process: bool = True,
        job_counts: Callable[[], Mapping[str, int]] | None = None,
        job_states: Iterable[str] = (),
        oldest_running: Callable[[], float] | None = None,
        serving: ServingState | None = None,
        audit: Callable[[], AuditFigures] | None = None,
    ) -> None:
        self._registry = registry
        self._tools = tuple(tools)
        self._process = process
        self._job_counts = job_counts
        self._job_states = tuple(job_states)
        self._oldest_running = oldest_running
        self._serving = serving
        self._audit = audit
        self._families: Families | None = None
        if registry is not None:
            self._built()

    @property
    def built(self) -> bool:
        return self._families is not None

    def _built(self) -> Families:
        if self._families is None:
            from prometheus_client import CollectorRegistry

            from appliance.metric_families import AuditChain, Families, JobCounts

            counts = None if self._job_counts is None else JobCounts(self._job_counts, self._job_states)
            self._families = Families(
                self._registry if self._registry is not None else CollectorRegistry(),
                self._tools,
                process=self._process,
                job_counts=counts,
                oldest_running=self._oldest_running,
                serving=self._serving,
                audit=None if self._audit is None else AuditChain(self._audit),
            )
        return self._families

    @property
    def registry(self) -> CollectorRegistry:
        return self._built().registry

    @property
    def calls(self) -> Counter:
        return self._built().calls

    @property
    def duration(self) -> Histogram:
        return self._built().duration

    @property
    def in_flight(self) -> Gauge:
        return self._built().in_flight

    @property
    def queue_depth(self) -> Gauge:
        return self._built().queue_depth

    @property
    def circuit_state(self) -> Gauge:
        return self._built().circuit_state

    @property
    def scope_refusals(self) -> Counter:
        return self._built().scope_refusals

    @property
    def protocol_refusals(self) -> Counter:
        return self._built().protocol_refusals

    @property
    def policy_reloads(self) -> Counter:
        return self._built().policy_reloads

    @property
    def job_duration(self) -> Histogram:
        return self._built().job_duration

    @property
    def oldest_running(self) -> Gauge:
        return self._built().oldest_running

    @property
    def build_info(self) -> Info:
        return self._built().build_info

    def set_circuit(self, tool: str, state: str) -> None:
        self.circuit_state.labels(tool).set(BREAKER_STATE_VALUE[state])
