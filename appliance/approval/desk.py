"""The approvals this process waits for: one question per job, its deadline, its one decision,
each step audited. The job's task waits here before it queues for a slot; the service ends a
declined job through its usual bookkeeping (nothing here touches a job's state or metrics).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from appliance.approval.model import ApprovalRequest, ApprovalState, Approver, Decision
from appliance.audit import AuditSink
from appliance.errors import ApplianceError, PermissionDeniedError, ValidationError

log = logging.getLogger(__name__)

RECOVERY = (
    "narrow the request (fewer hosts, no scripts, a lower rate) so that it needs no approval, or ask the "
    "operator to change the policy's approval section."
)


def unavailable(
    reasons: str,
    cannot: str = "your client cannot show a form to ask for it",
    instead: str = "Use an MCP client with form elicitation (2025-11-25) or input requests (2026-07-28)",
) -> PermissionDeniedError:
    """The refusal of a call that needs approval from a client that cannot be asked (no job is
    made); `cannot` says why it cannot be asked here, `instead` what would work."""
    return PermissionDeniedError(
        f"this scan needs a human's approval ({reasons}), and {cannot}",
        rule="approval_unavailable",
        recovery_suggestion=f"{instead}, or {RECOVERY}",
    )


def declined(scan_id: str, timeout_seconds: int, decision: Decision) -> PermissionDeniedError:
    """The error a job ends with when its approval did not come (here, or on a fleet front)."""
    why = {
        "declined": f"the approver ({decision.approver or 'unknown'}) declined it",
        "cancelled": f"the approver ({decision.approver or 'unknown'}) cancelled the question",
        "timed_out": f"no answer within {timeout_seconds} s",
        "unanswerable": f"the client could not ask: {decision.detail or 'no reason given'}",
    }[decision.outcome]
    return PermissionDeniedError(
        f"scan {scan_id} was not approved: {why}",
        rule="approval_declined",
        recovery_suggestion=f"Ask again once someone can approve this exact command, or {RECOVERY}",
    )


def mismatch(message: str) -> ValidationError:
    return ValidationError(
        message,
        rule="approval_state_mismatch",
        recovery_suggestion="Call the tool again without request state to ask a new question; get_scan shows how "
        "the earlier scan ended.",
    )


def _future() -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_future()


@dataclass
class PendingApproval:
    """One job's question while it waits: `opened` is done once the question is audited,
    `decided` once it has its decision (or was withdrawn: cancelled). `summary` is the job's own
    approval record: the decision is written into it, and the job's next write stores it."""

    request: ApprovalRequest
    owner: str
    record: dict[str, Any]
    approver: Approver
    summary: dict[str, Any] = field(default_factory=dict)
    opened: asyncio.Future[None] = field(default_factory=_future)
    decided: asyncio.Future[Decision] = field(default_factory=_future)
    timer: asyncio.TimerHandle | None = None


class ApprovalDesk:
    def __init__(self, audit: AuditSink) -> None:
        self.audit = audit
        self.pending: dict[str, PendingApproval] = {}

    def prepare(
        self,
        request: ApprovalRequest,
        owner: str,
        record: dict[str, Any],
        approver: Approver,
        summary: dict[str, Any] | None = None,
    ) -> PendingApproval:
        """The question of a job just created (`summary`: the job's approval record); the job's
        task opens it (`verdict`)."""
        pending = PendingApproval(request, owner, record, approver, {} if summary is None else summary)
        self.pending[request.scan_id] = pending
        return pending

    async def settled(self, pending: PendingApproval, wait: float) -> float:
        """In the call, before it waits for its job: how long it then waits. 2025-11-25: after
        the answer (or the deadline), `wait` as usual. 2026-07-28: once the question is audited,
        no wait (the call returns the question; the retry brings the answer)."""
        if pending.approver.mode == "ask":
            await asyncio.wait({pending.decided})
            return wait
        either: set[asyncio.Future[Any]] = {pending.opened, pending.decided}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        return 0.0

    async def verdict(self, pending: PendingApproval) -> Decision:
        """In the job's task, before it queues: audit the question (fails closed: a question the
        trail does not show is never asked), start its deadline, ask (2025-11-25), and wait for
        the decision; raise `approval_declined` unless approved. A cancel (cancel_scan, shutdown)
        withdraws the question."""
        try:
            self._open(pending)
            await self._ask(pending)
            decision = await pending.decided
        finally:
            self._close(pending)
            if not pending.decided.done():
                pending.decided.cancel()
        if not decision.approved:
            raise declined(pending.request.scan_id, pending.request.timeout_seconds, decision)
        return decision

    def _open(self, pending: PendingApproval) -> None:
        request = pending.request
        self.audit.write(
            {
                **pending.record,
                "event": "approval_requested",
                "argv_sha256": request.argv_sha256,
                "reasons": [reason.rule for reason in request.reasons],
                "timeout_seconds": request.timeout_seconds,
            }
        )
        loop = asyncio.get_running_loop()
        pending.timer = loop.call_later(request.timeout_seconds, self.decide, pending, Decision("timed_out"))
        pending.opened.set_result(None)

    def decide(self, pending: PendingApproval, decision: Decision) -> None:
        """The one decision of a question: audited, then handed to the waiting job. Later answers
        (an approval after the deadline) change nothing."""
        if pending.decided.done():
            return
        self._close(pending)
        pending.summary.update(decision=decision.outcome, approver=decision.approver, note=decision.note)
        line: dict[str, Any] = {
            **pending.record,
            "event": "approval",
            "argv_sha256": pending.request.argv_sha256,
            "decision": decision.outcome,
            "approver": decision.approver,
        }
        if decision.note:
            line["note"] = decision.note
        if decision.detail:
            line["detail"] = decision.detail
        try:
            self.audit.write(line)
        except ApplianceError:
            # An approval the trail does not show must not let the scan run.
            log.error(
                "approval decision could not be audited; the scan is declined",
                extra={"scan_id": pending.request.scan_id},
            )
            if decision.approved:
                decision = Decision("unanswerable", decision.approver, detail="the audit trail is not writable")
                pending.summary["decision"] = decision.outcome
        pending.decided.set_result(decision)

    async def _ask(self, pending: PendingApproval) -> None:
        """2025-11-25: ask through the caller's client now, until an answer or the deadline.
        (2026-07-28 calls return the question instead; their retry brings the answer.)"""
        approver = pending.approver
        if approver.mode != "ask" or approver.ask is None:
            return
        asking = asyncio.ensure_future(approver.ask(pending.request))
        try:
            await asyncio.wait({asking, pending.decided}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not asking.done():
                asking.cancel()  # the deadline passed or the job was cancelled: the question is withdrawn
        if not asking.done() or asking.cancelled():
            return
        failure = asking.exception()
        if failure is not None:
            log.error("approval question failed", exc_info=failure, extra={"scan_id": pending.request.scan_id})
            self.decide(pending, Decision("unanswerable", approver.principal, detail=type(failure).__name__))
            return
        self.decide(pending, asking.result())

    def resume(self, state: ApprovalState, owner: str, argv_sha256: str) -> PendingApproval:
        """The pending question a 2026-07-28 retry answers: same job, still waiting, same owner,
        and the argv planned from the retried arguments is the one the question showed."""
        pending = self.pending.get(state.scan_id)
        if pending is None or pending.owner != owner:
            raise mismatch(f"scan {state.scan_id[:64]} is not awaiting your approval (it ended, or is not yours)")
        if state.argv_sha256 != pending.request.argv_sha256 or argv_sha256 != pending.request.argv_sha256:
            raise mismatch(
                f"the command this call would run is not the one scan {state.scan_id} asked approval for "
                "(the arguments or the policy changed)"
            )
        return pending

    def _close(self, pending: PendingApproval) -> None:
        if pending.timer is not None:
            pending.timer.cancel()
        self.pending.pop(pending.request.scan_id, None)
