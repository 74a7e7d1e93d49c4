"""The Prometheus families of appliance.metrics, built on one registry with their children."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from appliance import __version__
from appliance.audit import AuditFigures
from appliance.metrics import (
    DURATION_BUCKETS,
    JOB_DURATION_BUCKETS,
    OUTCOMES,
    PROTOCOL_REFUSAL_RULES,
    RELOAD_RESULTS,
    ServingState,
)


class JobCounts(Collector):
    """`appliance_jobs{state}`: stored jobs by state, counted by the store when scraped (so a
    restart, a retention sweep or a CLI purge never leaves the gauge wrong)."""

    def __init__(self, counts: Callable[[], Mapping[str, int]], states: Iterable[str]) -> None:
        self._counts = counts
        self._states = tuple(states)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("appliance_jobs", "Stored scan jobs by state.", labels=["state"])
        counts = self._counts()
        for state in self._states:
            family.add_metric([state], counts.get(state, 0))
        yield family


class ServingStateCollector(Collector):
    def __init__(self, state: ServingState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "appliance_ready", "1 when /readyz answers 200 (ready for calls), else 0.", value=float(self._state.ready())
        )
        writable = GaugeMetricFamily(
            "appliance_sink_writable", "1 when the sink accepts writes, else 0.", labels=["sink"]
        )
        for sink, ok in sorted(self._state.sinks_writable().items()):
            writable.add_metric([sink], float(ok))
        yield writable
        capacity = GaugeMetricFamily(
            "appliance_tool_queue_capacity", "Calls a tool's queue holds before refusing (queue_full).", labels=["tool"]
        )
        for tool, size in sorted(self._state.queue_capacity().items()):
            capacity.add_metric([tool], float(size))
        yield capacity
        yield GaugeMetricFamily(
            "appliance_job_max_seconds",
            "The longest a scan may run by the policy (max_timeout_seconds); a job older than that is stuck.",
            value=self._state.max_job_seconds(),
        )


class AuditChain(Collector):
    """The audit chain's head as last checkpointed (start, stop, every 5 minutes: not every line,
    so the hash label changes a few times an hour, not at each call), and the sink's failures."""

    def __init__(self, figures: Callable[[], AuditFigures]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        now = self._figures()
        yield GaugeMetricFamily(
            "appliance_audit_chain_sequence", "Sequence number of the audit chain's checkpointed head.", value=now.seq
        )
        head = GaugeMetricFamily(
            "appliance_audit_chain_head_info",
            "The audit chain's checkpointed head (always 1): seq and chain value as labels, for --expect-head.",
            labels=["seq", "chain", "mode"],
        )
        head.add_metric([str(now.seq), now.chain, now.mode], 1)
        yield head
        yield CounterMetricFamily(
            "appliance_audit_syslog_failures", "Audit lines that syslog forwarding failed to send.", now.syslog_failures
        )
        yield CounterMetricFamily(
            "appliance_audit_rotation_failures", "Audit file rotations that failed.", now.rotation_failures
        )


class Families:
    def __init__(
        self,
        registry: CollectorRegistry,
        tools: Iterable[str],
        *,
        process: bool = True,
        job_counts: JobCounts | None = None,
        oldest_running: Callable[[], float] | None = None,
        serving: ServingState | None = None,
        audit: AuditChain | None = None,
    ) -> None:
        self.registry = registry
        self.calls = Counter("appliance_tool_calls", "Tool calls by outcome.", ["tool", "outcome"], registry=registry)
        self.duration = Histogram(
            "appliance_tool_duration_seconds",
            "Wall-clock time of tool calls that ran a scanner.",
            ["tool"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge("appliance_tool_in_flight", "Scanner runs in progress.", ["tool"], registry=registry)
        self.queue_depth = Gauge(
            "appliance_tool_queue_depth", "Calls waiting for a concurrency slot.", ["tool"], registry=registry
        )
        self.circuit_state = Gauge(
            "appliance_circuit_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["tool"],
            registry=registry,
        )
        self.scope_refusals = Counter(
            "appliance_scope_refusals", "Calls refused by a policy rule.", ["tool", "rule"], registry=registry
        )
        self.protocol_refusals = Counter(
            "appliance_protocol_refusals",
            "Requests refused before any tool was known: unknown tool names, oversized messages, resources.",
            ["rule"],
            registry=registry,
        )
        self.policy_reloads = Counter(
            "appliance_policy_reloads", "Policy reload attempts by result.", ["result"], registry=registry
        )
        self.job_duration = Histogram(
            "appliance_job_duration_seconds",
            "Time from a job's creation to its end, by tool and final state.",
            ["tool", "state"],
            buckets=JOB_DURATION_BUCKETS,
            registry=registry,
        )
        self.oldest_running = Gauge(
            "appliance_job_oldest_running_age_seconds",
            "Age of the oldest queued or running job; 0 when none runs.",
            registry=registry,
        )
        self.build_info = Info("appliance_build", "Version of the appliance.", registry=registry)
        self.build_info.info({"version": __version__})
        if process:
            ProcessCollector(registry=registry)
        for tool in tools:
            for outcome in OUTCOMES:
                self.calls.labels(tool, outcome)
            self.duration.labels(tool)
            self.in_flight.labels(tool)
            self.queue_depth.labels(tool)
            self.circuit_state.labels(tool)
        for rule in PROTOCOL_REFUSAL_RULES:
            self.protocol_refusals.labels(rule)
        for result in RELOAD_RESULTS:
            self.policy_reloads.labels(result)
        if job_counts is not None:
            registry.register(job_counts)
        if oldest_running is not None:
            self.oldest_running.set_function(oldest_running)
        if serving is not None:
            registry.register(ServingStateCollector(serving))
        if audit is not None:
            registry.register(audit)
