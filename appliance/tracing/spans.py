"""The spans of one tool call, on the OpenTelemetry API alone.

The SDK wraps every inbound request in a `tools/call <name>` SERVER span; the spans here are
made inside it and so nest under it (its context is the current one in the tool handler):

- `policy check` under the request span: argument validation, scopes and the scope policy;
  a refusal sets its status to ERROR with `appliance.rule` and `error.type`;
- `scan <tool>`: the job, a child of the request span (so every stage of the call is under the
  SDK's request span, as the operations issue asks) that also carries a Link to it. A job goes
  on after its call returned `running` (wait_seconds): its span then ends after its parent's,
  which OpenTelemetry allows; the Link (and `appliance.scan_id` on both) keeps the two joined
  for a backend that drops late children or samples the request away;
- under the job: `queue wait` (the concurrency slot), `scanner run` (one per attempt; the
  line parsing done while the scanner writes is inside it), `parse` (the final result) and
  `store` (each job store write; the write that creates the job is under the request span, as
  no job span exists yet).

Without a TracerProvider (the default: no OTEL_* variables) every span is the API's no-op one.
Attributes never carry arguments, argv or tokens; `appliance.target` is set only from a checked
plan (the audited target), never from what a caller sent.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from appliance import __version__
from appliance.errors import ApplianceError
from appliance.jobs.model import Job
from appliance.runner import RunLimits, RunResult

T = TypeVar("T")
AttributeValue = str | int | float | bool

# A proxy until a provider is set (appliance.tracing.export, or a test's), then the real one.
tracer = trace.get_tracer("mcp-scanner-appliance", __version__)


def _rule(error: ApplianceError) -> dict[str, AttributeValue]:
    return {"appliance.rule": error.rule, "error.type": error.error_type}


@contextlib.contextmanager
def _span(name: str, attributes: Mapping[str, AttributeValue], **options: Any) -> Iterator[Span]:
    """A current span whose status an ApplianceError sets to the refusal's rule, and any other
    exception to its type (never an exception's text: messages quote what the caller sent)."""
    with tracer.start_as_current_span(
        name, attributes=dict(attributes), record_exception=False, set_status_on_exception=False, **options
    ) as span:
        try:
            yield span
        except ApplianceError as exc:
            span.set_attributes(_rule(exc))
            span.set_status(Status(StatusCode.ERROR, exc.rule))
            raise
        except Exception as exc:
            # The type only: a bug's message may quote anything (the log has the traceback).
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
            raise


def policy_check(tool: str, request_id: str) -> contextlib.AbstractContextManager[Span]:
    """The span of one call's checks (under the request span)."""
    return _span("policy check", {"appliance.tool": tool, "appliance.request_id": request_id})


@contextlib.contextmanager
def stage(name: str, **attributes: AttributeValue) -> Iterator[Span]:
    """A stage of a call (queue wait, parse, store). Only under a span of a call: the same store
    writes at start-up (recovery) or from the CLI would otherwise each be a trace of their own."""
    if not trace.get_current_span().get_span_context().is_valid:
        yield trace.INVALID_SPAN
        return
    with _span(name, attributes) as span:
        yield span


@contextlib.asynccontextmanager
async def queue_wait(slot: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
    """`slot` (the concurrency limiter's) with its wait for a free slot as the `queue wait` span;
    a refusal while queued (queue_wait_timeout, shutting_down) ends that span with its rule."""
    async with contextlib.AsyncExitStack() as held:
        with stage("queue wait"):
            value = await held.enter_async_context(slot)
        yield value


class TracedRunner:
    """The scanner runner with one `scanner run` span per run (retries show as attempts)."""

    def __init__(self, runner: Any) -> None:
        self._runner = runner

    async def __call__(self, argv: Sequence[str], limits: RunLimits, **kwargs: Any) -> RunResult:
        with stage("scanner run", **{"appliance.scanner": Path(argv[0]).name}) as span:
            result: RunResult = await self._runner(argv, limits, **kwargs)
            span.set_attributes(
                {
                    "appliance.scanner.exit_code": -1 if result.exit_code is None else result.exit_code,
                    "appliance.scanner.timed_out": result.timed_out,
                    "appliance.scanner.stopped": result.stopped,
                    "appliance.scanner.output_bytes": len(result.stdout),
                }
            )
            return result


def annotate(**attributes: AttributeValue) -> None:
    """Attributes on the current span: the request span gets the scan_id its job runs under."""
    trace.get_current_span().set_attributes({f"appliance.{key}": value for key, value in attributes.items()})


def refused(error: ApplianceError) -> None:
    """A refusal's rule on the current span (the request span, or the job span of a job refused
    while queued); the bookkeeping of every refusal calls it (ScanService.refuse)."""
    trace.get_current_span().set_attributes(_rule(error))


def job_ended(outcome: str, timings_ms: Mapping[str, float]) -> None:
    """The job's outcome and its call timings (the "call timings" line's stages), on the job span."""
    span = trace.get_current_span()
    span.set_attribute("appliance.outcome", outcome)
    span.set_attributes({f"appliance.timings_ms.{stage}": value for stage, value in timings_ms.items()})


async def in_job_span(run: Callable[[], Coroutine[Any, Any, T]], job: Job) -> T:
    """Run the service's job task (`run()`) under its own `scan <tool>` span, a child of the span
    that was current when the task was created (the request span) and linked to it. `run` is called here, so a
    task cancelled before its first step leaves no coroutine that never ran."""
    request = trace.get_current_span().get_span_context()
    links = [Link(request, {"appliance.link": "request"})] if request.is_valid else []
    attributes = {
        "appliance.tool": job.tool,
        "appliance.request_id": job.request_id,
        "appliance.scan_id": job.scan_id,
        "appliance.target": job.target,
    }
    # The task's context is a copy of the request's: the job span is the request span's child.
    with _span(f"scan {job.tool}", attributes, kind=SpanKind.INTERNAL, links=links):
        return await run()


def carrier() -> dict[str, str]:
    """The current span's context as W3C trace headers (`traceparent`, `tracestate`), for a
    message that crosses to another appliance (a fleet job on NATS); empty without a provider."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


@contextlib.contextmanager
def continued(headers: Mapping[str, str]) -> Iterator[None]:
    """Make the trace context a message carried the current one (a segment's job span is then
    the child of the front's, in the same trace); tasks created inside inherit it."""
    token = otel_context.attach(propagate.extract(dict(headers)))
    try:
        yield
    finally:
        otel_context.detach(token)
