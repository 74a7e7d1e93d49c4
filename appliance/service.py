"""One tool call, end to end: policy check -> argv -> runner -> parser -> result, audited.

Transport-independent: the MCP server, the `check` CLI and the tests all come through here.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from pydantic import BaseModel

from appliance.audit import AuditSink, output_digest
from appliance.config import Settings
from appliance.errors import ApplianceError, ResourceExhaustedError, ValidationError
from appliance.policy.store import PolicyStore
from appliance.results import ScanReport
from appliance.runner import RunLimits, RunResult, run
from appliance.tools import ToolSpec
from appliance.tools.base import PlanContext, ScanPlan

log = logging.getLogger(__name__)

# A lab DNS answer arrives in milliseconds; a slow one must not hold a call slot for long.
RESOLVE_TIMEOUT_SECONDS = 5.0
# Progress notifications at most this often: scanners report every second or faster.
PROGRESS_INTERVAL_SECONDS = 1.0

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
    ) -> RunResult: ...


async def system_resolve(name: str) -> list[str]:
    """Resolve with the system resolver (the lab's DNS); only names under a lab suffix get here."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(name, None, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_SECONDS)
    except (OSError, TimeoutError):
        return []
    return sorted({str(info[4][0]) for info in infos})


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


class ScanService:
    def __init__(
        self,
        settings: Settings,
        store: PolicyStore,
        audit: AuditSink,
        *,
        resolve: Callable[[str], Awaitable[list[str]]] = system_resolve,
        runner: Runner = run,
    ) -> None:
        self.settings = settings
        self.store = store
        self.audit = audit
        self._resolve = resolve
        self._run = runner
        self._rates = RateBudget()

    async def check(self, spec: ToolSpec, request: BaseModel) -> ScanPlan:
        """The whole policy check for one request; raises ValidationError naming the rule."""
        snapshot = self.store.current
        if not getattr(snapshot.policy.tools, spec.name).enabled:
            raise ValidationError(
                f"{spec.name} is disabled by the policy",
                rule="tool_disabled",
                recovery_suggestion="Use another tool, or ask the operator to enable it in the policy.",
            )
        ctx = PlanContext(snapshot.policy, snapshot.scope, self._resolve, self.settings)
        return await spec.plan(request, ctx)

    async def call(
        self, spec: ToolSpec, request: BaseModel, request_id: str, progress: ProgressFn | None = None
    ) -> ScanReport:
        started = time.monotonic()
        record: dict[str, Any] = {"request_id": request_id, "tool": spec.name, "arguments": request.model_dump()}
        try:
            plan = await self.check(spec, request)
        except ApplianceError as exc:
            self.audit.write({**record, "verdict": "refused", "rule": exc.rule, "error_type": exc.error_type})
            raise
        record.update(argv=list(plan.argv), verdict="allowed", scanned_address=plan.target.scan_arg)
        if getattr(request, "dry_run", False):
            self.audit.write({**record, "dry_run": True})
            return spec.finish(plan, request_id, None)
        # Audit before starting: a scan the trail does not show must not run (fails closed).
        self.audit.write({**record, "event": "start"})
        try:
            result = await self._execute(spec, plan, request_id, progress)
        except ApplianceError as exc:
            self._audit_end(record, started, outcome=exc.error_type, rule=exc.rule)
            raise
        except asyncio.CancelledError:
            self._audit_end(record, started, outcome="cancelled")
            raise
        self._audit_end(record, started, outcome="partial" if result[0].partial else "ok", run=result[1])
        return result[0]

    async def _execute(
        self, spec: ToolSpec, plan: ScanPlan, request_id: str, progress: ProgressFn | None
    ) -> tuple[ScanReport, RunResult]:
        policy = self.store.current.policy
        limits = RunLimits(timeout_seconds=plan.timeout_seconds, output_cap_bytes=policy.limits.output_cap_bytes)
        on_line = self._progress_callback(plan, progress)
        if plan.rate:
            self._rates.claim(plan.rate, policy.tools.masscan_scan.max_rate)
        try:
            run_result = await self._run(
                plan.argv,
                limits,
                env=dict(plan.env),
                on_stdout_line=on_line if plan.progress_stream == "stdout" else None,
                on_stderr_line=on_line if plan.progress_stream == "stderr" else None,
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
        end = {**record, "event": "end", "outcome": outcome, "duration_seconds": round(time.monotonic() - started, 3)}
        if rule is not None:
            end["rule"] = rule
        if run is not None:
            end.update(exit_code=run.exit_code, output_sha256=output_digest(run.stdout), output_bytes=len(run.stdout))
        self.audit.write(end)
