"""The human at an MCP client, for approval tests: an elicitation callback that records each
question and gives the answer the test chose (after a condition, when the test wants it late)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcp.client.session import ClientRequestContext
from mcp_types import ElicitRequestParams, ElicitResult

from support.waiting import eventually

# Questions a test waits for (the server's deadline in these tests is about a second).
HOLD_SECONDS = 10.0


def approve(note: str | None = None) -> ElicitResult:
    return ElicitResult(action="accept", content={"approve": True, **({"note": note} if note else {})})


def refuse() -> ElicitResult:
    """An accepted form that says no (approve: false)."""
    return ElicitResult(action="accept", content={"approve": False, "note": "not today"})


class Human:
    """The elicitation callback of a test client: `questions` holds each message it was shown;
    with `hold`, it answers only once `hold()` is true (a human who answers too late)."""

    def __init__(self, answer: ElicitResult, hold: Callable[[], Any] | None = None) -> None:
        self.answer = answer
        self.hold = hold
        self.questions: list[str] = []
        self.schemas: list[dict[str, Any]] = []

    async def __call__(self, context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        self.questions.append(params.message)
        self.schemas.append(getattr(params, "requested_schema", {}))
        if self.hold is not None:
            await eventually(self.hold, within=HOLD_SECONDS, what="the condition the human waits for")
        return self.answer
