"""One tool call, end to end: policy check -> argv -> runner -> parser -> result, audited.

Transport-independent: the MCP server, the `check` CLI and the tests all come through here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from appliance.approval.desk import ApprovalDesk, PendingApproval, declined, mismatch, unavailable
from appliance.approval.model import ApprovalRequest, Approver, Decision, approval_summary, argv_digest
from appliance.audit import AuditSink, output_digest
from appliance.config import Settings
from appliance.errors import (
    ApplianceError,
    NotFoundError,
    ResourceExhaustedError,
    UnexpectedError,
    ValidationError,
    error_from_dict,
)
from appliance.fleet import approvals as front_approvals
from appliance.fleet.shards import shard_blocks, shard_job
from appliance.identity.scopes import check_scopes
from appliance.jobs.manager import JobManager, LiveJob
from appliance.jobs.model import ANONYMOUS_PRINCIPAL, STDIO_PRINCIPAL, Job, JobState, Viewer, new_scan_id
from appliance.jobs.queries import Previous, changes_since
from appliance.jobs.sqlite import SqliteJobStore
from appliance.jobs.views import job_fields, report_of, result_base
from appliance.jobs.window import WindowStop
from appliance.metrics import Metrics
from appliance.policy import engagement_checks
from appliance.policy.approval import ApprovalReason, approval_reasons, approval_rules
from appliance.policy.engagement_checks import Caller, Clock
from appliance.policy.engagements import Engagement
from appliance.policy.model import Policy
from appliance.policy.resolve import system_resolve
from appliance.policy.store import PolicySnapshot, PolicyStore
from appliance.resilience.breaker import BreakerSettings, BreakerState, CircuitBreaker
from appliance.resilience.budgets import Budgets, Claim, EngagementBudgets
from appliance.resilience.limits import ConcurrencyLimiter, PrincipalLimit, ToolLimit
from appliance.resilience.retry import retry_transient
from appliance.results import ScanReport
from appliance.runner import RunLimits, RunResult, run
from appliance.timings import CallTimings
from appliance.tools import TOOLS, ToolSpec
from appliance.tools.arguments import parse_arguments
from appliance.tools.base import FindingStream, PlanContext, ScanPlan
from appliance.tracing import spans

if TYPE_CHECKING:  # nats-py is imported by a fleet role only, never on a standalone start
    from appliance.fleet.front import FrontFleet

log = logging.getLogger(__name__)

# Progress notifications at most this often: scanners report every second or faster.
PROGRESS_INTERVAL_SECONDS = 1.0
# Findings so far are written to the store at most this often (masscan and gobuster can report
# hundreds of lines a second; nmap a host group now and then).
FINDINGS_SAVE_INTERVAL_SECONDS = 1.0

# A partial report's job state: stopped by its own budget is `partial`, by the appliance `interrupted`.
JOB_STATE_OF_PARTIAL: dict[str | None, JobState] = {
    "timeout": "partial",
    "output_cap": "partial",
    "shutdown": "interrupted",
    # The engagement's window closed under it: stopped like a cancel, findings kept.
    "engagement_ended": "partial",
}

# Metric outcome of an admitted call that did not return a result: cancels apart, all else `error`.
SCANNER_FAILURES = ("execution_error", "not_found")
METRIC_OUTCOME = {"ok": "ok", "partial": "partial", "cancelled": "cancelled"}

# Questions a fleet front keeps for the MCP boundary to send (taken at once; see `question`).
ASKED_KEPT = 256

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


def _seen(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def job_error(error: ApplianceError, live: LiveJob, state: JobState) -> dict[str, Any]:
    """The error object of a job that ended without a result: what the caller gets (the error
    names its scan_id and status) and what the job keeps for get_scan and its resource."""
    error.details.update(scan_id=live.job.scan_id, status=state)
    return error.to_dict(tool=live.job.tool, target=live.job.target, request_id=live.job.request_id)


def check_wait(requested: int | None, policy: Policy) -> float:
    """How long a scan call waits for its result before it returns the running job."""
    limits = policy.limits
    if requested is None:
        return float(limits.default_wait_seconds)
    if not 0 <= requested <= limits.max_wait_seconds:
        raise ValidationError(
            f"wait_seconds {requested} is outside 0-{limits.max_wait_seconds}",
            rule="wait_out_of_bounds",
            recovery_suggestion=f"Wait at most {limits.max_wait_seconds} seconds; the scan goes on after the call "
            "returns, and get_scan(scan_id) waits again.",
        )
    return float(requested)


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
        jobs: JobManager | None = None,
        wall_clock: Clock = time.time,
        fleet: FrontFleet | None = None,
        budgets: Budgets | None = None,
    ) -> None:
        self.settings = settings
        # A fleet front (README "Fleet"): jobs are routed to segments and followed, never run here,
        # and names are left for the segment to resolve.
        self.fleet = fleet
        # Without a store of its own (tests, `appliance check`) the service keeps jobs in memory.
        self.jobs = jobs if jobs is not None else JobManager(SqliteJobStore(None), audit)
        self.store = store
        self.audit = audit
        self.metrics = metrics
        self._resolve = resolve
        self._run = spans.TracedRunner(runner)  # a `scanner run` span per run
        self._clock = clock
        self._rates = RateBudget()
        # Engagement windows are wall-clock times; tests stand before, in and after them.
        self._now = wall_clock
        # Engagement budgets: this process's own, or a fleet's (reserved at the front, README "Fleet").
        self.budgets: Budgets = budgets if budgets is not None else EngagementBudgets(wall_clock)
        # Questions to approvers that jobs of this process wait for (README "Approval").
        self.approvals = ApprovalDesk(audit)
        # A fleet front's question of the call that just asked it, for the MCP boundary to send
        # (`question`): the question itself lives in the job's record, where any front reads it.
        self._asked: dict[str, ApprovalRequest] = {}
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
        for name, breaker in self.breakers.items():
            if breaker.settings.force is not None:  # others are closed, as the gauge starts (metrics stay lazy)
                self._breaker_moved(name, breaker.state, breaker.state)

    def apply_policy(self) -> None:
        """Push the current policy's limits and breaker settings to the running appliance."""
        policy = self.store.current.policy
        for name, breaker in self.breakers.items():
            breaker.update_settings(breaker_settings(policy, name))
            self._breaker_moved(name, breaker.state, breaker.state)  # a forced state shows at once
        self.limiter.update(tool_limits(policy), policy.limits.concurrency.global_.running, principal_limit(policy))

    def _breaker_moved(self, tool: str, old: BreakerState, new: BreakerState) -> None:
        # The gauge shows what callers meet (appliance_circuit_state): an override included.
        if self.metrics is not None:
            self.metrics.set_circuit(tool, self.breakers[tool].effective_state.value)

    def _slots_changed(self, tool: str) -> None:
        if self.metrics is not None:
            self.metrics.in_flight.labels(tool).set(self.limiter.in_flight(tool))
            self.metrics.queue_depth.labels(tool).set(self.limiter.queued(tool))

    def _count(self, tool: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.calls.labels(tool, outcome).inc()

    async def check(
        self,
        spec: ToolSpec,
        request: BaseModel,
        snapshot: PolicySnapshot | None = None,
        caller: Caller | None = None,
    ) -> ScanPlan:
        """The whole policy check for one request: the global policy, then the caller's engagement
        (when the policy has engagements); raises ValidationError naming the rule. The plan names
        the engagement it runs in."""
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
        resolve = None if self.fleet is not None else self._resolve
        ctx = PlanContext(snapshot.policy, snapshot.scope, resolve, self.settings, snapshot.facts)
        plan = await spec.plan(request, ctx)
        engagement = engagement_checks.choose(
            snapshot.policy, caller or self.caller(None), getattr(request, "engagement", None)
        )
        if engagement is not None:
            engagement_checks.check_window(engagement, self._now())
            engagement_checks.check_tool(engagement, spec.name, request.model_dump())
            engagement_checks.check_target(engagement, plan.target)
            plan = replace(plan, engagement=engagement.name)
        if self.fleet is not None:
            # Last: the rules above refuse without reading the bus; a target no segment holds is refused here.
            plan = replace(plan, segment=self.fleet.route(plan.target.requested).name)
            # A block over the policy's threshold runs as shards, each a job of the same segment.
            plan = replace(plan, shards=shard_blocks(plan, snapshot.policy))
        return plan

    async def _argv_as_fronts_plan(
        self, spec: ToolSpec, request: BaseModel, snapshot: PolicySnapshot, plan: ScanPlan
    ) -> tuple[str, ...]:
        """The argv a front planned for the request a segment re-checked into `plan`: the same,
        but for a name, which a front leaves unresolved (it has no resolver for the segment's
        network). So a human at a front approves a scan of the name with these flags; the
        addresses the segment resolved it to were checked against the segment's scope already,
        as for any name (and are in the job's argv and audit line)."""
        if plan.target.kind != "hostname":
            return plan.argv
        unresolved = PlanContext(snapshot.policy, snapshot.scope, None, self.settings, snapshot.facts)
        return (await spec.plan(request, unresolved)).argv

    def caller(self, principal: str | None) -> Caller:
        """A caller known only by its principal (stdio, `appliance check`, internal callers)."""
        return Caller(self.owner(principal))

    def viewer(self, caller: Caller) -> Viewer:
        """What `caller` may read: its own scans, its engagements' with scan:read, all with scan:admin."""
        engagements = engagement_checks.engagements_of(self.store.current.policy, caller)
        readable = frozenset(e.name for e in engagements) if "scan:read" in caller.scopes else frozenset()
        return Viewer(caller.principal, readable, "scan:admin" in caller.scopes)

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
        spans.refused(error)

    def owner(self, principal: str | None) -> str:
        """Whose job a call starts: the verified principal; over stdio the one client."""
        if principal is not None:
            return principal
        return STDIO_PRINCIPAL if self.settings.transport == "stdio" else ANONYMOUS_PRINCIPAL

    async def call(
        self,
        spec: ToolSpec,
        arguments: BaseModel | Mapping[str, Any],
        request_id: str,
        progress: ProgressFn | None = None,
        *,
        principal: str | None = None,
        caller: Caller | None = None,
        scopes: Collection[str] | None = None,
        approver: Approver | None = None,
    ) -> ScanReport:
        """One call, end to end. `arguments` are the raw arguments a client sent (validated here,
        so a bad one is refused, audited and counted like any other refusal), or a request model
        an internal caller already built.

        An admitted scan is a job that runs as its own task; the call waits for it up to
        `wait_seconds` and then returns it as it stands (status `running`, its scan_id). A cancel
        of this call before it returned ends the job too: nobody else knows its scan_id.
        `scopes` are the caller's token's (None: a caller without a token, stdio), checked before
        the policy (rule insufficient_scope). `approver` is how the caller's client answers an
        approval question (None: it cannot); a 2026-07-28 retry that brings an answer resumes the
        job it names instead of starting one.
        """
        started = self._clock()
        marked = time.perf_counter()
        if caller is None:
            caller = self.caller(principal)
        record: dict[str, Any] = {
            "request_id": request_id,
            "principal": principal,
            "tool": spec.name,
            "arguments": arguments.model_dump() if isinstance(arguments, BaseModel) else arguments,
        }
        try:
            with spans.policy_check(spec.name, request_id):
                # One snapshot for the whole call: a reload mid-call never changes its rules or limits.
                snapshot = self.store.current
                if not isinstance(arguments, BaseModel):
                    request = parse_arguments(spec.request_model, arguments)
                    record["arguments"] = request.model_dump()  # as validated, not as sent
                else:
                    request = arguments
                check_scopes(spec.name, request, scopes)
                plan = await self.check(spec, request, snapshot, caller)
                wait = check_wait(getattr(request, "wait_seconds", None), snapshot.policy)
                spans.annotate(target=plan.target.requested)
        except ApplianceError as exc:
            self.refuse(exc, record, tool=spec.name)
            raise
        except Exception as exc:
            # A bug in a check (a resolver or parser raising): still one audit line and one count.
            self.refuse(UnexpectedError(request_id), record, tool=spec.name)
            log.error("policy check ended in an unexpected exception", exc_info=exc, extra={"tool": spec.name})
            raise
        record.update(argv=list(plan.argv), verdict="allowed", scanned_address=plan.target.scan_arg)
        if plan.engagement is not None:
            record["engagement"] = plan.engagement
        if getattr(request, "dry_run", False):
            self.audit.write({**record, "dry_run": True})
            self._count(spec.name, "dry_run")
            return spec.finish(plan, request_id, None).model_copy(update={"status": "dry_run"})
        if approver is not None and approver.resumed is not None:
            if self.fleet is not None:
                return await self._resume_on_front(spec, plan, snapshot.policy, approver, record, wait, progress)
            return await self._resume(spec, plan, approver, record, wait)
        rules = approval_rules(snapshot.policy, plan.engagement)
        reasons = approval_reasons(plan, rules)
        no_approver = self._approval_refusal(reasons, approver)
        if no_approver is not None:
            self.refuse(no_approver, record, tool=spec.name)
            raise no_approver
        breaker = self.breakers[spec.name]
        try:
            breaker.before_call()
        except ApplianceError as exc:
            self._count(spec.name, "error")
            self.audit.write({**record, "verdict": "refused", "rule": exc.rule, "error_type": exc.error_type})
            raise
        # From here on the breaker may hold a probe slot: every way out frees it.
        claim: Claim | None = None
        try:
            refusal = self.limiter.refusal(spec.name, principal)
            if refusal is None and self.fleet is not None:  # a front's share of the whole fleet
                share = snapshot.policy.limits.concurrency.per_principal
                refusal = await self.fleet.share_refusal(self.owner(principal), share)
            if refusal is not None:
                raise refusal
            self.jobs.admissible()
            # The budget is reserved before the job exists (on a fleet front: in the fleet's
            # bucket, for the segment that runs it to find), under the id the job will have.
            scan_id = self.jobs.new_scan_id()
            claim = self._claim_budget(plan, snapshot.policy, scan_id)
            live = self.jobs.create(
                tool=spec.name,
                target=plan.target.requested,
                scanned_address=plan.target.scan_arg,
                owner=self.owner(principal),
                request=record["arguments"],
                argv=list(plan.argv),
                request_id=request_id,
                engagement=plan.engagement,
                state="awaiting_approval" if reasons else "queued",
                approval=approval_summary(plan.argv, reasons, rules.approval_timeout_seconds) if reasons else None,
                segment=plan.segment,
                scan_id=scan_id,
                shards=[new_scan_id() for _ in plan.shards] if plan.shards else None,
                caller=None if self.fleet is None else fleet_caller(caller, scopes, snapshot.policy),
                seal=None if self.fleet is None else self.fleet.sealer.admit,
            )
        except ApplianceError as exc:
            # Refused before a job exists (queue full, shutting down, the store cannot record it).
            if claim is not None:
                self.budgets.release(claim)
            breaker.record_neutral()
            self.refuse(exc, record, tool=spec.name)
            raise
        timings = CallTimings()
        # The store write that created the job is the `store` stage's (live.store_seconds).
        timings.add("checks", time.perf_counter() - marked - live.store_seconds)
        record["scan_id"] = live.job.scan_id
        spans.annotate(scan_id=live.job.scan_id)  # on the request span: its job's trace links back to it
        if reasons and self.fleet is not None:
            breaker.record_neutral()  # a front runs no scanner
            return self._ask_on_front(spec, plan, live, record, reasons, rules.approval_timeout_seconds)
        pending = None
        if reasons and approver is not None:
            pending = self.approvals.prepare(
                self._approval_request(live, plan, reasons, rules.approval_timeout_seconds),
                live.job.principal,
                record,
                approver,
                live.job.approval,
            )
        if self.fleet is not None:
            try:
                await self._hand_over(spec, plan, live, record)
            except ApplianceError:
                breaker.record_neutral()  # the probe slot, if it held one, is free again
                if claim is not None:  # the job ended failed, never queued: its place is free
                    self.budgets.release(claim)
                raise
            except BaseException:
                breaker.record_neutral()
                raise
        listener = _best_effort(progress)
        if listener is not None:
            live.listeners.add(listener)
        if self.fleet is not None:
            run_job = partial(self._follow_job, spec, plan, live, record, breaker)
        else:
            run_job = partial(
                self._run_job,
                spec,
                plan,
                snapshot.policy,
                live,
                record,
                started,
                breaker,
                principal,
                timings,
                claim,
                approval=pending,
            )
        task = asyncio.create_task(spans.in_job_span(run_job, live.job))
        live.task = task
        # A job that fails after its call returned (a 2026-07-28 approval's deadline) has nobody to
        # re-raise to: its end is already recorded, so its exception counts as seen.
        task.add_done_callback(_seen)
        try:
            if pending is not None:
                wait = await self.approvals.settled(pending, wait)
            await asyncio.wait({task}, timeout=wait)
        except asyncio.CancelledError:
            # The caller gave up before it saw the scan_id: nobody could follow this job.
            if self.fleet is not None:
                self.jobs.cancel(live.job)  # asks its segment to stop it
            task.cancel()
            await asyncio.wait({task})
            raise
        finally:
            if listener is not None:
                live.listeners.discard(listener)
        if not task.done() or task.cancelled():  # still running, or cancel_scan ended it
            if self.fleet is not None:
                task.cancel()  # a front follows a job only while its call waits (get_scan waits again)
            return report_of(live.job, spec.result_model, time.time())
        try:
            return task.result()  # the report, or the error the job ended with
        except ApplianceError:
            raise
        except Exception as exc:  # a bug (logged in full by _finish_run): the caller gets its job's id
            error = UnexpectedError(request_id)
            error.details.update(scan_id=live.job.scan_id, status="failed")
            raise error from exc

    async def _follow_job(
        self,
        spec: ToolSpec,
        plan: ScanPlan,
        live: LiveJob,
        record: dict[str, Any],
        breaker: CircuitBreaker,
    ) -> ScanReport:
        """A fleet front's job task, once the job is handed over (`_hand_over`): follow its record
        until the segment ends it. The segment audits and records the run."""
        breaker.record_neutral()  # the front runs no scanner: its breakers say nothing about one
        try:
            final = await self._watch_record(live)
        except asyncio.CancelledError:
            # The call's wait ended first, the caller gave up (call() then asked the segment to
            # stop it) or this front stops: the scan goes on on its segment, any front answers for it.
            self.jobs.release(live)
            raise
        if final.state == "failed" and final.error is not None:
            raise error_from_dict(final.error)
        return report_of(final, spec.result_model, time.time())

    async def _hand_over(self, spec: ToolSpec, plan: ScanPlan, live: LiveJob, record: dict[str, Any]) -> None:
        """A fleet front queues the recorded job for its segment (audited `dispatched`); when the
        queue refuses it, the job ends `failed` with that refusal. It runs to its end even when
        the call is cancelled under it (the client left): a recorded job whose message was never
        sent would stay queued with nobody to run it."""
        assert self.fleet is not None
        assert plan.segment is not None
        segment, fleet = plan.segment, self.fleet

        async def hand_over() -> None:
            if plan.shards:
                await self._hand_over_shards(spec, plan, live, record)
                return
            try:
                await fleet.dispatch(segment, live.job.scan_id, spans.carrier())
            except ApplianceError as exc:
                self.refuse(exc, {**record, "state": "failed"}, tool=spec.name)
                self.jobs.finish(live, "failed", error=job_error(exc, live, "failed"))
                raise
            self.audit.write({**record, "event": "dispatched", "segment": segment, "state": "queued"})
            self._count(spec.name, "dispatched")

        handed = asyncio.ensure_future(hand_over())
        handed.add_done_callback(_seen)  # its failure is recorded by itself, even if nobody awaits it
        await asyncio.shield(handed)

    async def _hand_over_shards(self, spec: ToolSpec, plan: ScanPlan, live: LiveJob, record: dict[str, Any]) -> None:
        """A sharded scan's hand-over: each shard recorded (audited as a job) and queued for the
        segment, one `dispatched` line each. When the store or the queue refuses one, the scan
        ends `failed` with that refusal: the shards not yet queued are ended with it and those
        queued are asked to stop (their merge then finds the scan already ended)."""
        assert self.fleet is not None
        assert plan.segment is not None
        parent = live.job
        assert parent.shards is not None
        assert len(parent.shards) == len(plan.shards)
        now = time.time()
        shards = [
            shard_job(parent, block, scan_id, index, now)
            for index, (block, scan_id) in enumerate(zip(plan.shards, parent.shards, strict=True))
        ]
        for shard in shards:
            self.fleet.sealer.admit(shard)  # each shard is a job of its own to the segment
        queued: set[str] = set()
        try:
            for shard in shards:
                self.jobs.audit_state(shard, "queued", shard.events[-1].get("note"), strict=True)
                self.jobs.store.put(shard, new=True)
                await self.fleet.dispatch(plan.segment, shard.scan_id, spans.carrier())
                queued.add(shard.scan_id)
                line = {**record, "event": "dispatched", "segment": plan.segment, "state": "queued"}
                self.audit.write({**line, "scan_id": shard.scan_id, "parent": parent.scan_id, "target": shard.target})
        except ApplianceError as exc:
            self.refuse(exc, {**record, "state": "failed"}, tool=spec.name)
            self.jobs.finish(live, "failed", error=job_error(exc, live, "failed"))
            for shard in shards:
                with contextlib.suppress(ApplianceError):  # best effort: the scan's own end is recorded
                    if shard.scan_id in queued:
                        self.jobs.store.request_cancel(shard.scan_id, "shard_hand_over_failed", time.time())
                    else:
                        shard.error = parent.error
                        shard.move("failed", time.time(), "its sharded scan could not be handed over")
                        self.jobs.store.put(shard)
            raise
        self._count(spec.name, "dispatched")

    async def _watch_record(self, live: LiveJob) -> Job:
        assert self.fleet is not None
        async for job in self.fleet.follow(live.job.scan_id):
            if job is None:  # deleted under us (an operator purge)
                raise NotFoundError(
                    f"scan {live.job.scan_id} was deleted while it ran",
                    rule="scan_not_found",
                    recovery_suggestion="Start the scan again.",
                )
            if job.progress is not None and job.progress != live.job.progress:
                live.job = job
                await self.jobs.progress(live, job.progress, 100.0, f"{job.tool}: {job.progress:.0f}% done")
            live.job = job
            if job.finished:
                self.jobs.settle(live, job)
                return job
        raise AssertionError("a key watch ends only when its caller leaves it")

    async def adopt(self, job: Job, sealed: Callable[[Job], None]) -> asyncio.Task[ScanReport] | None:
        """A fleet segment's start of a job a front queued and this appliance claimed: its front's
        seal (`sealed` raises when no front of the fleet signed what the record says of its caller,
        request and approval), then the whole check again, against this segment's own policy and
        resolver (nothing on the bus is trusted), then the same run as a standalone call. A refusal
        ends the job `failed`, audited under its rule, and starts nothing; None then. The task is
        the job's run otherwise."""
        started = self._clock()
        live = self.jobs.adopt(job)
        spec = TOOLS.get(job.tool)
        record: dict[str, Any] = {
            "request_id": job.request_id,
            "principal": job.principal,
            "tool": job.tool,
            "arguments": job.request,
            "scan_id": job.scan_id,
            "segment": job.segment,
            "runner": job.runner,
        }
        claim: Claim | None = None
        breaker: CircuitBreaker | None = None
        try:
            sealed(job)  # before anything the record says is read as the caller's
            if spec is None:
                raise NotFoundError(
                    f"no tool {job.tool!r}", rule="tool_unknown", recovery_suggestion="Queue jobs through a front."
                )
            snapshot = self.store.current
            request = parse_arguments(spec.request_model, job.request)
            caller, scopes = adopted_caller(job)
            check_scopes(spec.name, request, scopes)
            plan = await self.check(spec, request, snapshot, caller)
            if plan.engagement != job.engagement:
                raise ValidationError(
                    f"the front placed this job in engagement {job.engagement!r}; this segment's policy places it "
                    f"in {plan.engagement!r}",
                    rule="engagement_mismatch",
                    recovery_suggestion="The operator must give fronts and segments the same engagements.",
                )
            if approval_reasons(plan, approval_rules(snapshot.policy, plan.engagement)):
                # Approved at a front, for exactly the argv a front plans from this request under
                # this segment's policy (README "Approval").
                front_approvals.check_on_segment(
                    job, argv_digest(await self._argv_as_fronts_plan(spec, request, snapshot, plan))
                )
            breaker = self.breakers[spec.name]
            breaker.before_call()
            refusal = self.limiter.refusal(spec.name, job.principal)
            if refusal is not None:
                raise refusal
            # A shard runs on its parent's place (the front reserved one for the whole block); the
            # parent's end gives it back, not each shard's.
            claim = self._adopted_budget(plan, snapshot.policy, job.parent or job.scan_id)
            if job.parent is not None:
                claim = None
        except ApplianceError as exc:
            if breaker is not None:
                breaker.record_neutral()
            self.refuse(exc, {**record, "state": "failed"}, tool=job.tool if spec is not None else None)
            self.jobs.finish(live, "failed", error=job_error(exc, live, "failed"))
            if job.engagement is not None and job.parent is None:
                self.forget_budget(job.engagement, job.scan_id)
            return None
        job.argv, job.scanned_address = list(plan.argv), plan.target.scan_arg  # as this segment resolved it
        record.update(argv=list(plan.argv), verdict="allowed", scanned_address=plan.target.scan_arg)
        if plan.engagement is not None:
            record["engagement"] = plan.engagement
        timings = CallTimings()
        task = asyncio.create_task(
            spans.in_job_span(
                lambda: self._run_job(
                    spec, plan, snapshot.policy, live, record, started, breaker, job.principal, timings, claim
                ),
                job,
            )
        )
        live.task = task
        task.add_done_callback(_seen)
        return task

    def _claim_budget(self, plan: ScanPlan, policy: Policy, scan_id: str) -> Claim | None:
        return self._budget(plan, policy, scan_id, self.budgets.claim)

    def forget_budget(self, engagement: str, scan_id: str) -> None:
        """A reserved place given back by a job that will not release a claim of its own (one its
        segment refused, a sharded scan once merged); else the next full admission drops it."""
        try:
            self.budgets.forget(engagement, scan_id)
        except ApplianceError as exc:
            log.warning("budget place not given back", extra={"scan_id": scan_id, "rule": exc.rule})

    def _adopted_budget(self, plan: ScanPlan, policy: Policy, scan_id: str) -> Claim | None:
        """A segment's share of a job's budget: the place the front reserved for it (fleet
        budgets), or a claim of this process's own (budgets in memory)."""
        return self._budget(plan, policy, scan_id, self.budgets.adopted)

    @staticmethod
    def _budget(plan: ScanPlan, policy: Policy, scan_id: str, take: Callable[..., Claim]) -> Claim | None:
        """`take` (a claim, or a segment's adoption) of the plan's share of its engagement's budget."""
        engagement = None if plan.engagement is None else policy.engagement(plan.engagement)
        if engagement is None:
            return None
        return take(
            engagement,
            hosts=max(plan.target.host_count, 1),
            rate=plan.rate,
            default_concurrent=policy.limits.concurrency.per_engagement.running,
            scan_id=scan_id,
        )

    async def _run_job(
        self,
        spec: ToolSpec,
        plan: ScanPlan,
        policy: Policy,
        live: LiveJob,
        record: dict[str, Any],
        started: float,
        breaker: CircuitBreaker,
        principal: str | None,
        timings: CallTimings,
        claim: Claim | None = None,
        approval: PendingApproval | None = None,
    ) -> ScanReport:
        """The job's task: wait for its approval when it needs one, then for a slot, run, and end
        through `_finish_run` whatever happens (a declined approval ends it as a refusal). The
        engagement budget it claimed is given back at the end, however it ends."""
        report: ScanReport | None = None
        run_result: RunResult | None = None
        started_run = False
        previous: asyncio.Future[str | None] | None = None
        queued = time.perf_counter()
        try:
            if approval is not None:
                await self.approvals.verdict(approval)
                self.jobs.approved(live)
                # The time budget and the queue wait count from the approval, not from the question.
                started, queued = self._clock(), time.perf_counter()
            slot = self.limiter.slot(spec.name, started + plan.timeout_seconds, principal)
            async with spans.queue_wait(slot) as remaining:
                timings.add("queue", time.perf_counter() - queued)
                engagement = None if plan.engagement is None else policy.engagement(plan.engagement)
                if engagement is not None:
                    # The window may have closed while the job waited for a slot.
                    engagement_checks.check_window(engagement, self._now())
                # Audit before starting: a scan the trail does not show must not run (fails closed).
                self.audit.write({**record, "event": "start", "state": "running"})
                started_run = True
                self.jobs.running(live)
                # The scan a rescan's diff compares with, looked up while the scanner runs.
                previous = asyncio.ensure_future(self.jobs.previous_completed_id(live.job))
                report, run_result = await self._execute(spec, plan, policy, live, remaining, timings, engagement)
                looked_up = await _looked_up(previous, live.job.scan_id)
        except BaseException as exc:
            if not started_run and isinstance(exc, ApplianceError):
                # Refused while queued (the queue wait ran out, shutting down, the audit sink
                # failed): a refusal line, not an `end`; the job that was queued ends failed.
                breaker.record_neutral()
                # Stopped while it waited for a slot: the appliance's stop, not the scan's failure.
                state: JobState = "interrupted" if exc.rule == "shutting_down" else "failed"
                body = job_error(exc, live, state)
                self.refuse(exc, {**record, "state": state}, tool=spec.name)
                self.jobs.finish(live, state, error=body)
                timings.add("queue", time.perf_counter() - queued)  # the wait that ended in the refusal
                self._write_timings(timings, live, exc.error_type)
            else:
                self._finish_run(spec, breaker, record, started, live, policy, None, None, exc, timings)
            raise
        else:
            final = self._finish_run(
                spec, breaker, record, started, live, policy, report, run_result, None, timings, looked_up
            )
            assert final is not None  # a report and no failure: the job completed, partial or interrupted
            return final
        finally:
            if previous is not None:
                previous.cancel()  # nothing when it answered
                if previous.done() and not previous.cancelled():
                    previous.exception()  # a lookup that failed after a failed scan: seen, not logged as lost
            if claim is not None:
                self.budgets.release(claim)

    def _finish_run(
        self,
        spec: ToolSpec,
        breaker: CircuitBreaker,
        record: dict[str, Any],
        started: float,
        live: LiveJob,
        policy: Policy,
        report: ScanReport | None,
        run_result: RunResult | None,
        failure: BaseException | None,
        timings: CallTimings,
        looked_up: Previous | None = None,
    ) -> ScanReport | None:
        """The one end of every admitted call: breaker, metric, the audit end line and the job's
        final state (`looked_up`: the previous scan a completed rescan compares with, when its
        lookup at the start answered).

        Covers a result, an appliance error, a cancel and anything unexpected (a bug, a stream
        that broke under us): the breaker never keeps a probe slot, the trail never keeps a
        `start` without an `end`, and no job stays `running`. Returns the final report, or None
        when the call ended without one (the caller re-raises the failure).
        """
        tool = spec.name
        rule: str | None = None
        state: JobState
        error: ApplianceError | None = None
        if failure is None and report is not None:
            outcome = "partial" if report.partial else "ok"
            breaker.record_neutral() if report.partial else breaker.record_success()
            state = JOB_STATE_OF_PARTIAL.get(report.partial_reason, "completed") if report.partial else "completed"
            if self.metrics is not None:
                self.metrics.duration.labels(tool).observe(report.duration_seconds)
        elif isinstance(failure, ApplianceError):
            # Only a scanner that failed to run says something about the scanner's health.
            scanner_failed = failure.error_type in SCANNER_FAILURES and failure.rule != "audit_unwritable"
            (breaker.record_failure if scanner_failed else breaker.record_neutral)()
            outcome, rule, state, error = failure.error_type, failure.rule, "failed", failure
        elif isinstance(failure, asyncio.CancelledError):
            breaker.record_neutral()
            outcome, state = "cancelled", "cancelled"
        else:
            breaker.record_neutral()
            outcome, rule, state = "unknown", "unexpected_exception", "failed"
            error = UnexpectedError(record["request_id"])
            log.error("tool call ended in an unexpected exception", exc_info=failure, extra={"tool": tool})
        self._count(tool, METRIC_OUTCOME.get(outcome, "error"))
        self._audit_end({**record, "state": state}, started, outcome=outcome, rule=rule, run=run_result)
        job = live.job
        raw = None if run_result is None else run_result.stdout[: policy.limits.stored_raw_bytes]
        job.raw_bytes = None if run_result is None else len(run_result.stdout)  # scan://{id}/raw says if cut
        final: ScanReport | None = None
        if error is not None:
            self.jobs.finish(live, state, error=job_error(error, live, state), raw=raw)
        elif report is None:
            self.jobs.finish(live, state, raw=raw, note="cancelled")
        else:
            marked = time.perf_counter()
            ended = {"status": state, "progress": 100.0, "retry_after_seconds": None}
            final = report.model_copy(update={**job_fields(job, time.time()), **ended})
            dumped = final.model_dump(mode="json")  # once: the stored result, the diff's input, the answer
            if state == "completed":
                # A rescan says what changed since the last completed scan of this tool and target.
                dumped["changes_since_previous"] = changes_since(self.jobs, job, dumped, looked_up=looked_up)
                final = final.model_copy(update={"changes_since_previous": dumped["changes_since_previous"]})
            final.keep_json(dumped)
            timings.add("result", time.perf_counter() - marked)
            self.jobs.finish(live, state, result=dumped, raw=raw)
        self._write_timings(timings, live, outcome)
        return final

    @staticmethod
    def _write_timings(timings: CallTimings, live: LiveJob, outcome: str) -> None:
        timings.seconds["store"] = live.store_seconds
        job = live.job
        timings.write(request_id=job.request_id, scan_id=job.scan_id, tool=job.tool, outcome=outcome)
        spans.job_ended(outcome, timings.milliseconds())  # on the job span (the current one in its task)

    async def _execute(
        self,
        spec: ToolSpec,
        plan: ScanPlan,
        policy: Policy,
        live: LiveJob,
        remaining: float,
        timings: CallTimings,
        engagement: Engagement | None = None,
    ) -> tuple[ScanReport, RunResult]:
        async def progress(done: float, total: float | None, message: str | None) -> None:
            await self.jobs.progress(live, done, total, message)

        # Queue wait counted against the call's budget: the scanner gets what is left.
        limits = RunLimits(timeout_seconds=max(remaining, 0.001), output_cap_bytes=policy.limits.output_cap_bytes)
        stream = plan.findings()
        on_progress = self._progress_callback(plan, progress, timings)
        on_findings, stop_recording = self._findings_callback(spec, plan, live, stream, timings)

        def line_callback(name: str) -> Callable[[bytes], Awaitable[None]] | None:
            """What one output stream's lines go to: the findings parser, progress, or both (nmap)."""
            callbacks = [
                callback
                for callback, wanted in ((on_findings, plan.findings_stream), (on_progress, plan.progress_stream))
                if callback is not None and wanted == name
            ]
            if len(callbacks) < 2:
                return callbacks[0] if callbacks else None

            async def both(line: bytes) -> None:
                for callback in callbacks:
                    await callback(line)

            return both

        if plan.rate:
            self._rates.claim(plan.rate, policy.tools.masscan_scan.max_rate)
        # A scan in an engagement also stops when the window ends (findings kept, like a cancel).
        window = (
            None if engagement is None else WindowStop(self.stop_scans, engagement.window.bounds()[1] - self._now())
        )
        stop = self.stop_scans if window is None else window.event
        try:
            run_result = await retry_transient(
                lambda: self._run(
                    plan.argv,
                    limits,
                    env=dict(plan.env),
                    on_stdout_line=line_callback("stdout"),
                    on_stderr_line=line_callback("stderr"),
                    stop=stop,
                )
            )
        finally:
            if window is not None:
                window.close()
            stop_recording()
            if plan.rate:
                self._rates.release(plan.rate)
        # Parsing done while the scanner ran is its own stage, not the scanner's.
        scanner = run_result.duration_seconds - run_result.spawn_seconds - timings.seconds["parse"]
        timings.add("spawn", run_result.spawn_seconds)
        timings.add("scanner", max(scanner, 0.0))
        await progress(100.0, 100.0, "finished")
        marked = time.perf_counter()
        # The stream was fed every line as it came: the result is never parsed a second time.
        with spans.stage("parse"):
            report = spec.finish(plan, live.job.request_id, run_result, stream)
        if window is not None and window.window_ended and report.partial_reason == "shutdown":
            report = report.model_copy(update={"partial_reason": "engagement_ended"})
        timings.add("parse", time.perf_counter() - marked)
        return report, run_result

    def _findings_callback(
        self, spec: ToolSpec, plan: ScanPlan, live: LiveJob, stream: FindingStream, timings: CallTimings
    ) -> tuple[Callable[[bytes], Awaitable[None]], Callable[[], None]]:
        """Feed the findings stream and record the findings so far, so a crash or a get_scan
        sees them: at most once a second (the first time a second after the start), and at the
        latest a second after a finding completed (a quiet scanner must not hold its last one
        back). Returns the line callback and the clean-up that cancels a pending write (the
        job's end records everything anyway)."""
        base = result_base(live.job, spec.result_model)
        loop = asyncio.get_running_loop()
        # As if saved at the start: a scan that ends within its first second writes its findings
        # once, at its end, not twice (the first host would otherwise cost a commit of its own).
        last_saved = time.monotonic()
        pending: asyncio.TimerHandle | None = None

        def save() -> None:
            nonlocal last_saved, pending
            pending, last_saved = None, time.monotonic()
            try:
                so_far = spec.result_model(**base, **stream.fields())
            except Exception:  # a snapshot bug must not end an hour-long scan; logged in full
                log.exception("findings so far could not be recorded", extra={"scan_id": live.job.scan_id})
                return
            self.jobs.findings(live, so_far.model_dump(mode="json"))

        async def on_line(line: bytes) -> None:
            nonlocal pending
            marked = time.perf_counter()
            completed = stream.feed(line)
            timings.add("parse", time.perf_counter() - marked)
            if not completed or pending is not None:
                return
            wait = last_saved + FINDINGS_SAVE_INTERVAL_SECONDS - time.monotonic()
            if wait <= 0:
                save()
            else:
                pending = loop.call_later(wait, save)

        def cancel() -> None:
            if pending is not None:
                pending.cancel()

        return on_line, cancel

    @staticmethod
    def _progress_callback(
        plan: ScanPlan, progress: ProgressFn | None, timings: CallTimings
    ) -> Callable[[bytes], Awaitable[None]] | None:
        if progress is None or plan.progress is None:
            return None
        parse = plan.progress
        last_sent = 0.0

        async def on_line(line: bytes) -> None:
            nonlocal last_sent
            marked = time.perf_counter()
            percent = parse(line)
            timings.add("parse", time.perf_counter() - marked)
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

    @staticmethod
    def _approval_request(
        live: LiveJob | Job, plan: ScanPlan, reasons: tuple[ApprovalReason, ...], timeout_seconds: int
    ) -> ApprovalRequest:
        job = live.job if isinstance(live, LiveJob) else live
        return ApprovalRequest(
            scan_id=job.scan_id,
            tool=job.tool,
            argv=plan.argv,
            target=plan.target.requested,
            scanned_address=plan.target.scan_arg,
            engagement=plan.engagement,
            reasons=reasons,
            timeout_seconds=timeout_seconds,
        )

    async def _resume(
        self, spec: ToolSpec, plan: ScanPlan, approver: Approver, record: dict[str, Any], wait: float
    ) -> ScanReport:
        """A 2026-07-28 retry: the job its state names gets the answer, then the call waits for it
        like any call (`wait`). The job is no longer this call's alone (its scan_id was shown), so a
        cancel of this call leaves it running. A retry without an answer returns the job as it stands."""
        assert approver.resumed is not None
        state = approver.resumed.state
        try:
            pending = self.approvals.resume(state, self.owner(approver.principal), argv_digest(plan.argv))
        except ApplianceError as exc:
            self.refuse(exc, {**record, "scan_id": state.scan_id}, tool=spec.name)
            raise
        live = self.jobs.live[state.scan_id]
        if approver.resumed.decision is None:
            return report_of(live.job, spec.result_model, time.time())
        self.approvals.decide(pending, approver.resumed.decision)
        assert live.task is not None
        await asyncio.wait({live.task}, timeout=wait)
        if not live.task.done() or live.task.cancelled():
            return report_of(live.job, spec.result_model, time.time())
        final: ScanReport = live.task.result()  # the report, or the error the job ended with
        return final

    # --- approval on a fleet front (README "Approval"): the question lives in the job's record --
    def question(self, scan_id: str | None) -> ApprovalRequest | None:
        """The question a call that returned `awaiting_approval` asks its client: the one a front
        just recorded, or the one a job of this process waits on."""
        if scan_id is None:
            return None
        asked = self._asked.pop(scan_id, None)
        if asked is not None:
            return asked
        pending = self.approvals.pending.get(scan_id)
        return None if pending is None else pending.request

    def _keep_question(self, request: ApprovalRequest) -> None:
        # Taken by the MCP boundary as soon as the call returns; an internal caller never takes
        # it, so only the newest few are kept.
        while len(self._asked) >= ASKED_KEPT:
            self._asked.pop(next(iter(self._asked)))
        self._asked[request.scan_id] = request

    def _approval_refusal(
        self, reasons: tuple[ApprovalReason, ...], approver: Approver | None
    ) -> ApplianceError | None:
        """Why this call's approval cannot be asked for here (None: it can, or none is needed)."""
        if not reasons:
            return None
        why = "; ".join(reason.text for reason in reasons)
        if approver is None or approver.mode == "unavailable":
            return unavailable(why)
        if self.fleet is None:
            return None
        if self.settings.request_state_key_file is None:
            return unavailable(
                why,
                "this fleet front has no request-state key shared with the other fronts, so an answer could not "
                "be checked by whichever front it reaches",
                "The operator must give every front the same APPLIANCE_REQUEST_STATE_KEY_FILE (README 'Approval')",
            )
        if approver.mode != "input_required":
            return unavailable(
                why,
                "a fleet front is stateless HTTP: it cannot ask your client in the middle of a call",
                "Use an MCP client of protocol 2026-07-28 (input requests), or a standalone appliance",
            )
        return None

    def _ask_on_front(
        self,
        spec: ToolSpec,
        plan: ScanPlan,
        live: LiveJob,
        record: dict[str, Any],
        reasons: tuple[ApprovalReason, ...],
        timeout_seconds: int,
    ) -> ScanReport:
        """A front's call that needs approval: the job stays recorded `awaiting_approval` (not
        queued), the question is audited, and the call returns it (the MCP boundary sends it as an
        input-required result). The retry may come to any front (`_resume_on_front`)."""
        request = self._approval_request(live, plan, reasons, timeout_seconds)
        try:
            # Fails closed: a question the trail does not show is never asked.
            self.audit.write(
                {
                    **record,
                    "event": "approval_requested",
                    "argv_sha256": request.argv_sha256,
                    "reasons": [reason.rule for reason in reasons],
                    "timeout_seconds": timeout_seconds,
                }
            )
        except ApplianceError as exc:
            self.refuse(exc, {**record, "state": "failed"}, tool=spec.name)
            self.jobs.finish(live, "failed", error=job_error(exc, live, "failed"))
            if plan.engagement is not None:
                self.forget_budget(plan.engagement, live.job.scan_id)
            raise
        self.jobs.release(live)  # nothing of it runs here: its record is the question
        self._keep_question(request)
        return report_of(live.job, spec.result_model, time.time())

    async def _resume_on_front(
        self,
        spec: ToolSpec,
        plan: ScanPlan,
        policy: Policy,
        approver: Approver,
        record: dict[str, Any],
        wait: float,
        progress: ProgressFn | None,
    ) -> ScanReport:
        """A 2026-07-28 retry on a front (any front): the record its state names must still await
        this caller's approval of this very argv. Approved: the job is queued by compare-and-set,
        handed to its segment and followed like any fleet call. Declined, cancelled, unanswerable
        or past its deadline: the job ends `failed` (approval_declined). No answer yet: the
        question again."""
        assert self.fleet is not None
        assert approver.resumed is not None
        state = approver.resumed.state
        record = {**record, "scan_id": state.scan_id}
        try:
            job = front_approvals.check_retry(
                self.fleet.store.get(state.scan_id), state, self.owner(approver.principal), argv_digest(plan.argv)
            )
        except ApplianceError as exc:
            self.refuse(exc, record, tool=spec.name)
            raise
        decision = approver.resumed.decision
        if front_approvals.expired(job, self._now()):
            decision = Decision("timed_out")
        if decision is None:
            rules = approval_rules(policy, plan.engagement)
            reasons = approval_reasons(plan, rules)
            timeout = int(job.approval["timeout_seconds"]) if job.approval else rules.approval_timeout_seconds
            self._keep_question(self._approval_request(job, plan, reasons, timeout))
            return report_of(job, spec.result_model, time.time())
        if decision.approved:
            try:
                self.audit.write({**record, **front_approvals.approval_line(job, decision)})
            except ApplianceError:
                # An approval the trail does not show must not let the scan run.
                log.error(
                    "approval decision could not be audited; the scan is declined", extra={"scan_id": state.scan_id}
                )
                decision = Decision("unanswerable", decision.approver, detail="the audit trail is not writable")
        if not decision.approved:
            raise self._end_unapproved(spec, job, decision, record)
        try:
            queued = self.fleet.store.update(
                job.scan_id,
                front_approvals.approve(job, decision, self._now(), self.fleet.sealer.approve),
                attempts=3,
            )
        except ApplianceError as exc:  # the store did not answer: the job still awaits (a retry may)
            self.refuse(exc, record, tool=spec.name)
            raise
        if queued is None:
            lost = mismatch(front_approvals.RACE_LOST.format(scan_id=job.scan_id))
            self.refuse(lost, record, tool=spec.name)
            raise lost
        self.jobs.audit_state(queued, "queued", "approved")
        self.jobs.changed(queued)
        live = self.jobs.adopt(queued)
        # To the segment the question was recorded for (its sweep owns the deadline); it re-checks.
        plan = replace(plan, segment=queued.segment)
        await self._hand_over(spec, plan, live, record)
        return await self._follow_call(spec, plan, live, record, progress, wait)

    def _end_unapproved(self, spec: ToolSpec, job: Job, decision: Decision, record: dict[str, Any]) -> ApplianceError:
        """End an awaiting job whose approval did not come (compare-and-set: the sweep or another
        front may have ended it first; then the retry is told so). Returns the error to raise."""
        assert self.fleet is not None
        assert job.approval is not None
        error = declined(job.scan_id, int(job.approval.get("timeout_seconds", 0)), decision)
        change = front_approvals.end_unapproved(decision, error, self._now())
        try:
            ended = self.fleet.store.update(job.scan_id, change, attempts=3)
        except ApplianceError as exc:  # the store did not answer: the deadline's sweep ends it later
            self.refuse(exc, record, tool=spec.name)
            return exc
        if ended is None:
            lost = mismatch(front_approvals.RACE_LOST.format(scan_id=job.scan_id))
            self.refuse(lost, record, tool=spec.name)
            return lost
        self.jobs.changed(ended)
        with contextlib.suppress(ApplianceError):  # the refusal line below shows the end too
            self.audit.write({**record, **front_approvals.approval_line(job, decision)})
        self.refuse(error, {**record, "state": "failed"}, tool=spec.name)
        if job.engagement is not None:
            self.forget_budget(job.engagement, job.scan_id)
        return error

    async def _follow_call(
        self,
        spec: ToolSpec,
        plan: ScanPlan,
        live: LiveJob,
        record: dict[str, Any],
        progress: ProgressFn | None,
        wait: float,
    ) -> ScanReport:
        """An approved retry's wait for its job on the segment, like a fleet call's. The job is not
        this call's alone (its scan_id was in the question), so a cancel of the call only stops
        following it."""
        run_job = partial(self._follow_job, spec, plan, live, record, self.breakers[spec.name])
        task = asyncio.create_task(spans.in_job_span(run_job, live.job))
        live.task = task
        task.add_done_callback(_seen)
        listener = _best_effort(progress)
        if listener is not None:
            live.listeners.add(listener)
        try:
            await asyncio.wait({task}, timeout=wait)
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.wait({task})
            raise
        finally:
            if listener is not None:
                live.listeners.discard(listener)
        if not task.done() or task.cancelled():
            task.cancel()  # get_scan waits again, on any front
            return report_of(live.job, spec.result_model, time.time())
        final: ScanReport = task.result()  # the report, or the error the job ended with
        return final


def fleet_caller(caller: Caller, scopes: Collection[str] | None, policy: Policy) -> dict[str, Any]:
    """What a fleet job carries of its caller for the segment's re-check: the token's subject,
    the claims this front's engagements name (no other claim leaves the front), its scopes."""
    named = {name for engagement in policy.engagements or () for name in engagement.principals.claims}
    return {
        "subject": caller.subject,
        "claims": {name: caller.claims[name] for name in sorted(named) if name in caller.claims},
        "scopes": None if scopes is None else sorted(scopes),
    }


def adopted_caller(job: Job) -> tuple[Caller, list[str] | None]:
    """The caller a segment re-checks a job as: the one its front recorded (a job without one,
    from an older front, is checked as its principal alone, with no token scopes to check)."""
    if job.caller is None:
        return Caller(job.principal), None
    scopes = job.caller.get("scopes")
    return (
        Caller(
            job.principal,
            subject=job.caller.get("subject"),
            claims=dict(job.caller.get("claims") or {}),
            scopes=tuple(scopes or ()),
        ),
        None if scopes is None else list(scopes),
    )


async def _looked_up(previous: asyncio.Future[str | None], scan_id: str) -> Previous | None:
    """The previous scan found at the job's start, or None when that lookup failed (the store did
    not answer then: changes_since looks again at the end)."""
    try:
        return Previous(await previous)
    except ApplianceError as exc:
        log.warning("previous scan not looked up at the start", extra={"scan_id": scan_id, "rule": exc.rule})
        return None
