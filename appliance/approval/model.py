"""An approval as small values: the question about one job's exact argv, the human's decision,
and the plaintext request state a 2026-07-28 retry brings back. Nothing here knows MCP or jobs'
storage, so an approval can travel with a job (a fleet front's input-required result included).
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from appliance.policy.approval import ApprovalReason

# Format of the request state this appliance mints (the SDK seals it; we read it back plain).
STATE_KIND = "scan_approval"
STATE_VERSION = 1

Outcome = Literal["approved", "declined", "cancelled", "timed_out", "unanswerable"]


# What stands for the value of the appliance's own `--datadir` in the hashed argv (see argv_digest).
DATADIR_PLACEHOLDER = "<appliance nmap datadir>"


def argv_digest(argv: Sequence[str]) -> str:
    """sha256 of the argv as a JSON list: unambiguous where a joined line is not ('a b' vs 'a','b').

    The value after `--datadir` is hashed as a placeholder: it is a private directory each process
    builds for itself (appliance.policy.nse; callers may not pass --datadir), so the fronts and the
    segment of a fleet would never agree on it. What it holds is the policy's script allowlist;
    the scripts that run are named by `--script`, which is hashed as it is.
    """
    words = list(argv)
    for index, word in enumerate(words[:-1]):
        if word == "--datadir":
            words[index + 1] = DATADIR_PLACEHOLDER
    return hashlib.sha256(json.dumps(words, separators=(",", ":")).encode()).hexdigest()


def approval_summary(argv: Sequence[str], reasons: Sequence[ApprovalReason], timeout_seconds: int) -> dict[str, Any]:
    """What a job keeps of its question (the desk adds the decision when it comes)."""
    return {
        "argv_sha256": argv_digest(argv),
        "reasons": [reason.rule for reason in reasons],
        "timeout_seconds": timeout_seconds,
    }


class ApprovalForm(BaseModel):
    """The form the human fills in (an elicitation's requested schema: primitives only)."""

    model_config = ConfigDict(extra="forbid")

    approve: bool = Field(description="Run exactly the command shown, against exactly the target shown.")
    note: str | None = Field(default=None, max_length=500, description="Why (kept in the audit trail).")


@dataclass(frozen=True)
class ApprovalRequest:
    """The question about one job: shown to the human, audited, and bound into the request state."""

    scan_id: str
    tool: str
    argv: tuple[str, ...]
    target: str
    scanned_address: str
    engagement: str | None
    reasons: tuple[ApprovalReason, ...]
    timeout_seconds: int

    @property
    def argv_sha256(self) -> str:
        return argv_digest(self.argv)

    def message(self) -> str:
        """What the human reads: the exact command (shell-quoted), the target, why, and the deadline."""
        lines = [
            f"Approve scan {self.scan_id} ({self.tool})?",
            f"Command: {shlex.join(self.argv)}",
            f"Target: {self.target} (scanned address {self.scanned_address})",
        ]
        if self.engagement is not None:
            lines.append(f"Engagement: {self.engagement}")
        lines.append("Needs approval because: " + "; ".join(reason.text for reason in self.reasons))
        lines.append(f"Without an answer within {self.timeout_seconds} s the scan is declined.")
        return "\n".join(lines)

    def state(self) -> str:
        """The plaintext request state of a 2026-07-28 input-required result (the SDK seals it)."""
        return json.dumps(
            {"kind": STATE_KIND, "v": STATE_VERSION, "scan_id": self.scan_id, "argv_sha256": self.argv_sha256},
            separators=(",", ":"),
        )


@dataclass(frozen=True)
class ApprovalState:
    """What a retry's (verified) request state says: which job, and the hash of the argv it approves."""

    scan_id: str
    argv_sha256: str


def parse_state(text: str) -> ApprovalState | None:
    """The approval state minted by `ApprovalRequest.state`, or None for any other text.

    Does not verify anything: the SDK's request-state boundary already rejected state it did not
    seal, and the desk checks the job and the argv hash against what the retry plans now.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("kind") != STATE_KIND or data.get("v") != STATE_VERSION:
        return None
    scan_id, digest = data.get("scan_id"), data.get("argv_sha256")
    if not isinstance(scan_id, str) or not isinstance(digest, str):
        return None
    return ApprovalState(scan_id, digest)


@dataclass(frozen=True)
class Decision:
    """How a question ended. `approver` is the principal whose client answered; `detail` says more
    when there was no human answer (the client's error)."""

    outcome: Outcome
    approver: str | None = None
    note: str | None = None
    detail: str | None = None

    @property
    def approved(self) -> bool:
        return self.outcome == "approved"


def decision_of(action: str, form: ApprovalForm | None, approver: str | None) -> Decision:
    """An elicitation's answer as a decision: only accept with approve=true approves."""
    if action == "accept" and form is not None:
        return Decision("approved" if form.approve else "declined", approver, form.note)
    return Decision("cancelled" if action == "cancel" else "declined", approver)


@dataclass(frozen=True)
class Approver:
    """How this call's client can answer a question (built at the MCP boundary).

    `mode` "ask": the call asks now and waits (2025-11-25 form elicitation, `ask` set);
    "input_required": the call returns the question and the client retries with the answer
    (2026-07-28; `resumed` is set on that retry); "unavailable": the client cannot show a form.
    """

    mode: Literal["ask", "input_required", "unavailable"]
    principal: str | None = None
    ask: Callable[[ApprovalRequest], Awaitable[Decision]] | None = None
    resumed: Resumed | None = None


@dataclass(frozen=True)
class Resumed:
    """A 2026-07-28 retry: the state it echoed and its answer (None: it brought no answer yet)."""

    state: ApprovalState
    decision: Decision | None
