"""One tool call, end to end: policy check -> argv -> runner -> parser -> result, audited.

Transport-independent: the MCP server, the `check` CLI and the tests all come through here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from pydantic import BaseModel

from appliance.audit import AuditSink, output_digest
from appliance.config import Settings
from appliance.errors import ApplianceError, NotFoundError, ResourceExhaustedError, UnexpectedError, ValidationError
from appliance.metrics import Metrics
from appliance.policy.model import Policy
from appliance.policy.resolve import system_resolve
from appliance.policy.store import PolicySnapshot, PolicyStore
from appliance.resilience.breaker import BreakerSettings, BreakerState, CircuitBreaker
from appliance.resilience.limits import ConcurrencyLimiter, PrincipalLimit, ToolLimit
from appliance.resilience.retry import retry_transient
from appliance.results import ScanReport
from appliance.runner import RunLimits, RunResult, run
from appliance.tools import TOOLS, ToolSpec
from appliance.tools.arguments import parse_arguments
from appliance.tools.base import PlanContext, ScanPlan

log = logging.getLogger(__name__)

# Progress notifications at most this often: scanners report every second or faster.
PROGRESS_INTERVAL_SECONDS = 1.0

# Metric outcome of an admitted call that did not return a result: cancels apart, all else `error`.
SCANNER_FAILURES = ("execution_error", "not_found")
METRIC_OUTCOME = {"ok": "ok", "partial": "partial", "cancelled": "cancelled"}

ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]


class Runner(Protocol):
    async def __call__(
        self,
        argv: Sequence[str],
        limits: RunLimits,
        *,
        env: dict[str, str] | None = ...,
        on_stdout_line: Callable[[bytes], Awaitable[None]] | None = ...,
        on_stderr_line: Callable[[bytes], Awaitable[None]] | None = ...,
        stop: asyncio.Event | None = ...,
    ) -> RunResult: ...


def _best_effort(progress: ProgressFn | None) -> ProgressFn | None:
    """Progress that cannot fail the scan: a notification that cannot be sent (the client's stream
    broke) is logged once and the rest are dropped; the scan runs on and is recorded."""
    if progress is None:
        return None
    broken = False

    async def send(done: float, total: float | None, message: str | None) -> None:
        nonlocal broken
        if broken:
            return
        try:
            await progress(done, total, message)
        except Exception as exc:  # noqa: BLE001 - any transport failure; logged, and the scan goes on
            broken = True
            log.warning("progress notification failed; no more are sent for this call", extra={"reason": repr(exc)})

    return send


class RateBudget:
    """Packets per second shared by every running masscan call (policy: tools.masscan_scan.max_rate)."""

    def __init__(self) -> None:
        self.in_use = 0

    def claim(self, rate: int, cap: int) -> None:
        if self.in_use + rate > cap:
            raise ResourceExhaustedError(
                f"running masscan calls already use {self.in_use} of {cap} packets/s; {rate} more would exceed it",
                rule="rate_budget_exhausted",
                recovery_suggestion="Wait for running masscan calls to finish, or ask for a lower rate.",
            )
        self.in_use += rate

    def release(self, rate: int) -> None:
        self.in_use -= rate


def breaker_settings(policy: Policy, tool: str) -> BreakerSettings:
    rules = policy.resilience
    return BreakerSettings(
        failure_threshold=rules.breaker_failure_threshold,
        recovery_seconds=rules.breaker_recovery_seconds,
        max_recovery_seconds=rules.breaker_max_recovery_seconds,
        force=getattr(policy.tools, tool).breaker_force,
    )


def tool_limits(policy: Policy) -> dict[str, ToolLimit]:
    table = policy.limits.concurrency.per_tool
    return {name: ToolLimit(getattr(table, name).running, getattr(table, name).queued) for name in TOOLS}


def principal_limit(policy: Policy) -> PrincipalLimit:
    share = policy.limits.concurrency.per_principal
    return PrincipalLimit(share.running, share.queued)


class ScanService:
    def __init__(
        self,
        settings: Settings,
        store: PolicyStore,
        audit: AuditSink,
        *,
        resolve: Callable[[str], Awaitable[list[str]]] = system_resolve,
        runner: Runner = run,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.audit = audit
        self.metrics = metrics
        self._resolve = resolve
        self._run = runner
        self._clock = clock
        self._rates = RateBudget()
        # Tools whose scanner could not be run at start, with the reason (set by the app).
        self.unavailable: dict[str, str] = {}
        # Set at shutdown once the drain window is over: running scans stop and report partial.
        self.stop_scans = asyncio.Event()
        policy = store.current.policy
        self.breakers = {
            name: CircuitBreaker(name, breaker_settings(policy, name), clock, on_transition=self._breaker_moved)
            for name in TOOLS
        }
        self.limiter = ConcurrencyLimiter(
            tool_limits(policy),
            policy.limits.concurrency.global_.running,
            clock=clock,
            on_change=self._slots_changed,
            per_principal=principal_limit(policy),
        )

    def apply_policy(self) -> None:
        """Push the current policy's limits and breaker settings to the running appliance."""
        policy = self.store.current.policy
        for name, breaker in self.breakers.items():
            breaker.update_settings(breaker_settings(policy, name))
        self.limiter.update(tool_limits(policy), policy.limits.concurrency.global_.running, principal_limit(policy))

    def _breaker_moved(self, tool: str, old: BreakerState, new: BreakerState) -> None:
        if self.metrics is not None:
            self.metrics.set_circuit(tool, new.value)

    def _slots_changed(self, tool: str) -> None:
        if self.metrics is not None:
            self.metrics.in_flight.labels(tool).set(self.limiter.in_flight(tool))
            self.metrics.queue_depth.labels(tool).set(self.limiter.queued(tool))

    def _count(self, tool: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.calls.labels(tool, outcome).inc()

    async def check(self, spec: ToolSpec, request: BaseModel, snapshot: PolicySnapshot | None = None) -> ScanPlan:
        """The whole policy check for one request; raises ValidationError naming the rule."""
        snapshot = snapshot or self.store.current
        if spec.name in self.unavailable:
            raise NotFoundError(
                f"{spec.name} is unavailable: {self.unavailable[spec.name]}",
                rule="tool_unavailable",
                recovery_suggestion="Use another tool; the operator must install the scanner or fix its path.",
            )
        if not getattr(snapshot.policy.tools, spec.name).enabled:
            raise ValidationError(
                f"{spec.name} is disabled by the policy",
                rule="tool_disabled",
                recovery_suggestion="Use another tool, or ask the operator to enable it in the policy.",
            )
        ctx = PlanContext(snapshot.policy, snapshot.scope, self._resolve, self.settings, snapshot.facts)
        return await spec.plan(request, ctx)

    def refuse(self, error: ApplianceError, record: dict[str, Any], *, tool: str | None) -> None:
        """Bookkeeping for a call refused before anything ran: one audit line, one count.

        `tool` is None for a refusal no tool is known for (an unknown tool name, an oversized
        message); those count under `appliance_protocol_refusals_total` instead.
        """
        if self.metrics is not None:
            if tool is None:
                self.metrics.protocol_refusals.labels(error.rule).inc()
            else:
                self.metrics.calls.labels(tool, "refused").inc()
                self.metrics.scope_refusals.labels(tool, error.rule).inc()
        self.audit.write({**record, "verdict": "refused", "rule": error.rule, "error_type": error.error_type})

    async def call(
        self,
        spec: ToolSpec,
        arguments: BaseModel | Mapping[str, Any],
        request_id: str,
        progress: ProgressFn | None = None,
        *,
        principal: str | None = None,
    ) -> ScanReport:
        """One call, end to end. `arguments` are the raw arguments a client sent (validated here,
        so a bad one is refused, audited and counted like any other refusal), or a request model
        an internal caller already built."""
        started = self._clock()
        record: dict[str, Any] = {
            "request_id": request_id,
            "principal": principal,
            "tool": spec.name,
            "arguments": arguments.model_dump() if isinstance(arguments, BaseModel) else arguments,
        }
        try:
            # One snapshot for the whole call: a reload mid-call never changes its rules or limits.
            snapshot = self.store.current
            if not isinstance(arguments, BaseModel):
                request = parse_arguments(spec.request_model, arguments)
                record["arguments"] = request.model_dump()  # as validated, not as sent
            else:
                request = arguments
            plan = await self.check(spec, request, snapshot)
        except ApplianceError as exc:
            self.refuse(exc, record, tool=spec.name)
            raise
        except Exception as exc:
            # A bug in a check (a resolver or parser raising): still one audit line and one count.
            self.refuse(UnexpectedError(request_id), record, tool=spec.name)
            log.error("policy check ended in an unexpected exception", exc_info=exc, extra={"tool": spec.name})
            raise
        record.update(argv=list(plan.argv), verdict="allowed", scanned_address=plan.target.scan_arg)
        if getattr(request, "dry_run", False):
            self.audit.write({**record, "dry_run": True})
            self._count(spec.name, "dry_run")
            return spec.finish(plan, request_id, None)
        breaker = self.breakers[spec.name]
        try:
            breaker.before_call()
        except ApplianceError as exc:
            self._count(spec.name, "error")
            self.audit.write({**record, "verdict": "refused", "rule": exc.rule, "error_type": exc.error_type})
            raise
        # From here on the breaker may hold a probe slot: every way out goes through _finish_run.
        report: ScanReport | None = None
        run_result: RunResult | None = None
        started_run = False
        try:
            async with self.limiter.slot(spec.name, started + plan.timeout_seconds, principal) as remaining:
                # Audit before starting: a scan the trail does not show must not run (fails closed).
                self.audit.write({**record, "event": "start"})
                started_run = True
                report, run_result = await self._execute(spec, plan, snapshot.policy, request_id, progress, remaining)
        except BaseException as exc:
            if not started_run and isinstance(exc, ApplianceError):
                # Refused before it ran (queue full, the principal's share, the queue wait ran
                # out, shutting down, the audit sink failed): a refusal line, not an `end`.
                breaker.record_neutral()
                self.refuse(exc, record, tool=spec.name)
            else:
                self._finish_run(spec.name, breaker, record, started, None, None, exc)
            raise
        self._finish_run(spec.name, breaker, record, started, report, run_result, None)
        return report

    def _finish_run(
        self,
        tool: str,
        breaker: CircuitBreaker,
        record: dict[str, Any],
        started: float,
        report: ScanReport | None,
        run_result: RunResult | None,
        failure: BaseException | None,
    ) -> None:
        """The one end of every admitted call: breaker, metric and the audit end line.

        Covers a result, an appliance error, a cancel and anything unexpected (a bug, a stream
        that broke under us): the breaker never keeps a probe slot and the trail never keeps a
        `start` without an `end`.
        """
        rule: str | None = None
        if failure is None and report is not None:
            outcome = "partial" if report.partial else "ok"
            breaker.record_neutral() if report.partial else breaker.record_success()
            if self.metrics is not None:
                self.metrics.duration.labels(tool).observe(report.duration_seconds)
        elif isinstance(failure, ApplianceError):
            # Only a scanner that failed to run says something about the scanner's health.
            scanner_failed = failure.error_type in SCANNER_FAILURES and failure.rule != "audit_unwritable"
            (breaker.record_failure if scanner_failed else breaker.record_neutral)()
            outcome, rule = failure.error_type, failure.rule
        elif isinstance(failure, asyncio.CancelledError):
            breaker.record_neutral()
            outcome = "cancelled"
        else:
            breaker.record_neutral()
            outcome, rule = "unknown", "unexpected_exception"
            log.error("tool call ended in an unexpected exception", exc_info=failure, extra={"tool": tool})
        self._count(tool, METRIC_OUTCOME.get(outcome, "error"))
        self._audit_end(record, started, outcome=outcome, rule=rule, run=run_result)

    async def _execute(
        self,
        spec: ToolSpec,
        plan: ScanPlan,
        policy: Policy,
        request_id: str,
        progress: ProgressFn | None,
        remaining: float,
    ) -> tuple[ScanReport, RunResult]:
        progress = _best_effort(progress)
        # Queue wait counted against the call's budget: the scanner gets what is left.
        limits = RunLimits(timeout_seconds=max(remaining, 0.001), output_cap_bytes=policy.limits.output_cap_bytes)
        on_line = self._progress_callback(plan, progress)
        if plan.rate:
            self._rates.claim(plan.rate, policy.tools.masscan_scan.max_rate)
        try:
            run_result = await retry_transient(
                lambda: self._run(
                    plan.argv,
                    limits,
                    env=dict(plan.env),
                    on_stdout_line=on_line if plan.progress_stream == "stdout" else None,
                    on_stderr_line=on_line if plan.progress_stream == "stderr" else None,
                    stop=self.stop_scans,
                )
            )
        finally:
            if plan.rate:
                self._rates.release(plan.rate)
        if progress is not None:
            await progress(100.0, 100.0, "finished")
        return spec.finish(plan, request_id, run_result), run_result

    @staticmethod
    def _progress_callback(plan: ScanPlan, progress: ProgressFn | None) -> Callable[[bytes], Awaitable[None]] | None:
        if progress is None or plan.progress is None:
            return None
        parse = plan.progress
        last_sent = 0.0

        async def on_line(line: bytes) -> None:
            nonlocal last_sent
            percent = parse(line)
            now = time.monotonic()
            if percent is None or now - last_sent < PROGRESS_INTERVAL_SECONDS:
                return
            last_sent = now
            await progress(percent, 100.0, f"{plan.tool}: {percent:.0f}% done")

        return on_line

    def _audit_end(
        self,
        record: dict[str, Any],
        started: float,
        *,
        outcome: str,
        rule: str | None = None,
        run: RunResult | None = None,
    ) -> None:
        end = {**record, "event": "end", "outcome": outcome, "duration_seconds": round(self._clock() - started, 3)}
        if rule is not None:
            end["rule"] = rule
        if run is not None:
            end.update(exit_code=run.exit_code, output_sha256=output_digest(run.stdout), output_bytes=len(run.stdout))
        self.audit.write(end)
