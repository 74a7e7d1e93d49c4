"""Traces: the spans of a tool call under the SDK's request span, the job's own linked trace,
the rule that decides export, the lazy import, and OTLP/HTTP to a collector the test starts.

In-process tests record spans in memory (support.traces.recorded_spans) with a gated fake
scanner (lab addresses only, nothing is sent). The child-process tests run `appliance serve`
over stdio with OTEL_EXPORTER_OTLP_ENDPOINT pointing at a receiver on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from support import (
    APPLIANCE,
    LOOPBACK_POLICY,
    GatedRunner,
    LabService,
    eventually,
    http_client,
    initialize_request,
    served,
    server_env,
    stdio_child,
    tcp_listener,
    write_policy,
)
from support.traces import otlp_receiver, recorded_spans, silent_collector

from appliance.errors import ConfigError
from appliance.server import ScannerServer
from appliance.tracing.export import SHUTDOWN_SECONDS, export_requested

XML = (Path(__file__).resolve().parent / "fixtures" / "nmap" / "connect.xml").read_bytes()
SCAN = {"target": "10.20.0.5", "ports": "18081-18083"}
STAGES = ("queue wait", "scanner run", "parse")
# One nmap scan at a time, so a second one waits `queued` for the first.
ONE_AT_A_TIME = {"limits": {"concurrency": {"per_tool": {"nmap_scan": {"running": 1}}}}}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recorded_spans() as exporter:
        yield exporter


@pytest.fixture
def gated(lab_service: Callable[..., LabService]) -> tuple[ScannerServer, GatedRunner]:
    runner = GatedRunner(XML)
    lab = lab_service(runner=runner, privilege_mode="connect")
    return ScannerServer(lab.service), runner


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    [span] = named(spans, name)
    return span


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


# --- in process ------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_a_scan_call_nests_its_checks_under_the_sdk_request_span_and_runs_in_a_linked_job_trace(
    gated: tuple[ScannerServer, GatedRunner], spans: InMemorySpanExporter, mode: str
) -> None:
    server, runner = gated
    runner.gate.set()
    async with Client(server.mcp, mode=mode) as client:
        result = await client.call_tool("nmap_scan", {**SCAN, "wait_seconds": 10})
    assert not result.is_error, result.content
    scan_id = result.structured_content["scan_id"]  # type: ignore[index]
    finished = spans.get_finished_spans()

    request = one(finished, "tools/call nmap_scan")  # the SDK's own span
    assert request.kind is SpanKind.SERVER
    assert request.attributes is not None and request.attributes["appliance.scan_id"] == scan_id
    policy = one(finished, "policy check")
    assert parent_of(policy) == span_id(request)
    assert policy.attributes is not None
    assert policy.attributes["appliance.tool"] == "nmap_scan"
    assert policy.attributes["appliance.target"] == "10.20.0.5"
    assert policy.status.status_code is StatusCode.UNSET

    job = one(finished, "scan nmap_scan")
    assert job.kind is SpanKind.INTERNAL
    assert parent_of(job) == span_id(request)  # every stage of the call is under the request span ...
    assert job.context is not None and request.context is not None
    assert job.context.trace_id == request.context.trace_id
    [link] = job.links  # ... and the job links back to it too
    assert link.context.span_id == span_id(request)
    assert link.context.trace_id == request.context.trace_id
    assert job.attributes is not None
    assert job.attributes["appliance.scan_id"] == scan_id
    assert job.attributes["appliance.request_id"] == policy.attributes["appliance.request_id"]
    assert job.attributes["appliance.outcome"] == "ok"
    assert job.attributes["appliance.timings_ms.scanner"] >= 0
    for stage in STAGES:
        assert parent_of(one(finished, stage)) == span_id(job), stage
    scanner = one(finished, "scanner run")
    assert scanner.attributes is not None and scanner.attributes["appliance.scanner.exit_code"] == 0

    stores = {span.attributes["appliance.job.state"]: span for span in named(finished, "store")}  # type: ignore[index]
    assert set(stores) == {"queued", "running", "completed"}
    assert parent_of(stores["queued"]) == span_id(request)  # the job is created before its span exists
    assert parent_of(stores["running"]) == span_id(job)
    assert parent_of(stores["completed"]) == span_id(job)
    assert all(span.end_time <= job.end_time for span in finished if parent_of(span) == span_id(job))  # type: ignore[operator]


@pytest.mark.anyio
async def test_a_refused_call_has_a_policy_check_span_with_the_rule_and_error_status(
    lab_service: Callable[..., LabService], spans: InMemorySpanExporter
) -> None:
    lab = lab_service(privilege_mode="connect")  # the spy runner: fails the test if a scanner starts
    async with Client(ScannerServer(lab.service).mcp, mode="legacy") as client:
        result = await client.call_tool("nmap_scan", {"target": "8.8.8.8"})
    assert result.is_error
    rule = result.structured_content["rule"]  # type: ignore[index]
    finished = spans.get_finished_spans()

    policy = one(finished, "policy check")
    assert policy.status.status_code is StatusCode.ERROR
    assert policy.status.description == rule
    assert policy.attributes is not None
    assert policy.attributes["appliance.rule"] == rule
    assert policy.attributes["error.type"] == "validation_error"
    assert "appliance.target" not in policy.attributes  # only a checked target goes on a span
    request = one(finished, "tools/call nmap_scan")
    assert parent_of(policy) == span_id(request)
    assert request.attributes is not None and request.attributes["appliance.rule"] == rule
    assert not named(finished, "scan nmap_scan") and not named(finished, "scanner run")
    assert lab.runner.calls == []


@pytest.mark.anyio
async def test_a_job_that_outlives_its_call_has_its_own_span_linked_to_the_request_that_ends_with_the_job(
    gated: tuple[ScannerServer, GatedRunner], spans: InMemorySpanExporter
) -> None:
    server, runner = gated
    async with Client(server.mcp, mode="legacy") as client:
        result = await client.call_tool("nmap_scan", {**SCAN, "wait_seconds": 0})
        assert result.structured_content["status"] in ("queued", "running")  # type: ignore[index]
        await asyncio.wait_for(runner.started.wait(), 5)
        request = one(spans.get_finished_spans(), "tools/call nmap_scan")
        assert not named(spans.get_finished_spans(), "scan nmap_scan")  # the call ended, the job did not
        runner.gate.set()
        await eventually(lambda: named(spans.get_finished_spans(), "scan nmap_scan"), within=10)

    job = one(spans.get_finished_spans(), "scan nmap_scan")
    assert parent_of(job) == span_id(request)  # its own span, ending after its parent's ...
    [link] = job.links  # ... and linked to the request
    assert link.context.span_id == span_id(request)
    assert job.end_time is not None and request.end_time is not None and job.end_time > request.end_time
    assert job.attributes is not None and job.attributes["appliance.outcome"] == "ok"


@pytest.mark.anyio
async def test_a_cancelled_job_ends_its_span_with_outcome_cancelled(
    gated: tuple[ScannerServer, GatedRunner], spans: InMemorySpanExporter
) -> None:
    server, runner = gated
    async with Client(server.mcp, mode="legacy") as client:
        result = await client.call_tool("nmap_scan", {**SCAN, "wait_seconds": 0})
        await asyncio.wait_for(runner.started.wait(), 5)
        await client.call_tool("cancel_scan", {"scan_id": result.structured_content["scan_id"]})  # type: ignore[index]
        await eventually(lambda: named(spans.get_finished_spans(), "scan nmap_scan"), within=10)

    job = one(spans.get_finished_spans(), "scan nmap_scan")
    assert job.attributes is not None and job.attributes["appliance.outcome"] == "cancelled"
    assert job.status.status_code is StatusCode.UNSET  # a cancel is the caller's choice, not an error


@pytest.mark.anyio
async def test_a_job_refused_while_queued_ends_its_queue_wait_and_job_spans_with_the_rule(
    lab_service: Callable[..., LabService], spans: InMemorySpanExporter
) -> None:
    runner = GatedRunner(XML)
    lab = lab_service(ONE_AT_A_TIME, runner=runner, privilege_mode="connect")
    async with Client(ScannerServer(lab.service).mcp, mode="legacy") as client:
        first = await client.call_tool("nmap_scan", {**SCAN, "wait_seconds": 0})
        await asyncio.wait_for(runner.started.wait(), 5)
        second = await client.call_tool("nmap_scan", {**SCAN, "wait_seconds": 0})
        assert second.structured_content["status"] == "queued"  # type: ignore[index]
        lab.service.limiter.close()  # shutting down: the queued job is refused
        await eventually(lambda: named(spans.get_finished_spans(), "scan nmap_scan"), within=10)
        runner.gate.set()
        await eventually(lambda: len(named(spans.get_finished_spans(), "scan nmap_scan")) == 2, within=10)

    queued_id = second.structured_content["scan_id"]  # type: ignore[index]
    jobs = {span.attributes["appliance.scan_id"]: span for span in named(spans.get_finished_spans(), "scan nmap_scan")}  # type: ignore[index]
    refused = jobs[queued_id]
    assert refused.status.status_code is StatusCode.ERROR and refused.status.description == "shutting_down"
    assert refused.attributes is not None
    assert refused.attributes["appliance.rule"] == "shutting_down"
    assert refused.attributes["appliance.outcome"] == "resource_exhausted"
    waits = [span for span in named(spans.get_finished_spans(), "queue wait") if parent_of(span) == span_id(refused)]
    assert [span.status.description for span in waits] == ["shutting_down"]
    assert not [
        span for span in named(spans.get_finished_spans(), "scanner run") if parent_of(span) == span_id(refused)
    ]
    ran = jobs[first.structured_content["scan_id"]]  # type: ignore[index]
    assert ran.status.status_code is StatusCode.UNSET and ran.attributes["appliance.outcome"] == "ok"  # type: ignore[index]


# --- which variables turn export on ----------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        # off
        ({}, False),
        ({"OTEL_SERVICE_NAME": "scanner"}, False),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
        ({"OTEL_SDK_DISABLED": "TRUE", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
        # on
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "OTLP"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, True),
    ],
)
def test_export_is_on_only_when_the_otel_variables_ask_for_it(environ: dict[str, str], wanted: bool) -> None:
    assert export_requested(environ) is wanted


@pytest.mark.parametrize(
    ("environ", "rule"),
    [
        # console would write spans to stdout: the stdio transport's wire
        ({"OTEL_TRACES_EXPORTER": "console"}, "otel_exporter_unsupported"),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, "otel_exporter_unsupported"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "otel_exporter_unsupported"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "otel_protocol_unsupported",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
            "otel_protocol_unsupported",
        ),
    ],
)
def test_an_exporter_the_appliance_cannot_run_refuses_the_start(environ: dict[str, str], rule: str) -> None:
    with pytest.raises(ConfigError) as refused:
        export_requested(environ)
    assert refused.value.rule == rule
    assert refused.value.recovery_suggestion


# --- child processes ---------------------------------------------------------------------------

# The batch processor's timer far off: what the collector gets, it got from the exit's flush.
AT_EXIT_ONLY = {"OTEL_BSP_SCHEDULE_DELAY": "600000"}

# Builds the whole app as `serve` does, then lists the OpenTelemetry modules loaded.
LOADED = """
import json, os, sys
from appliance.app import Appliance
from appliance.cli import main
from appliance.config import load_settings
from appliance.tracing.export import start_export
settings = load_settings()
export = start_export(os.environ, settings)
Appliance(settings)
if export is not None:
    export.shutdown()
print(json.dumps(sorted(name for name in sys.modules if name.startswith("opentelemetry"))))
"""


def loaded_modules(tmp_path: Path, **env: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", LOADED],
        env=server_env(write_policy(tmp_path, LOOPBACK_POLICY), **env),
        capture_output=True,
        timeout=60,
        check=True,
    )
    modules: list[str] = json.loads(done.stdout)
    return modules


def test_without_otel_variables_the_otel_sdk_is_never_imported(tmp_path: Path) -> None:
    off = loaded_modules(tmp_path)
    assert "opentelemetry.trace" in off  # the API comes with the MCP SDK
    assert not [name for name in off if name.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))]
    # The same program does import them when asked to export (so the check above can fail).
    on = loaded_modules(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    assert "opentelemetry.sdk.trace" in on
    assert "opentelemetry.exporter.otlp.proto.http.trace_exporter" in on


@pytest.mark.anyio
async def test_spans_of_a_stdio_appliance_reach_an_otlp_http_collector_at_exit(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    with otlp_receiver() as receiver, tcp_listener() as port:
        base = receiver.endpoint.removesuffix("/v1/traces")
        env = server_env(policy, APPLIANCE_HEALTH_ENABLED="false", OTEL_EXPORTER_OTLP_ENDPOINT=base, **AT_EXIT_ONLY)
        async with Client(StdioServerParameters(command=APPLIANCE, args=["serve"], env=env), mode="legacy") as client:
            scanned = await client.call_tool("nmap_scan", {"target": "127.0.0.1", "ports": str(port)})
            refused = await client.call_tool("nmap_scan", {"target": "8.8.8.8"})
            assert not receiver.spans  # nothing is sent before the exit (AT_EXIT_ONLY)
        # The client closed stdin and waited for the exit: the batch was sent at shutdown.
        assert not scanned.is_error, scanned.content
        assert refused.is_error
        got = receiver.spans

    names = [span.name for span in got]
    assert names.count("tools/call nmap_scan") == 2
    assert names.count("policy check") == 2
    for name in ("scan nmap_scan", "queue wait", "scanner run", "parse", "store"):
        assert name in names, name
    assert {span.service_name for span in got} == {"mcp-scanner-appliance"}
    requests = {span.span_id: span for span in got if span.name == "tools/call nmap_scan"}
    checks = [span for span in got if span.name == "policy check"]
    assert all(check.parent_span_id in requests for check in checks)
    rules = [check.attributes.get("appliance.rule") for check in checks]
    assert rules.count(refused.structured_content["rule"]) == 1  # type: ignore[index]
    [job] = [span for span in got if span.name == "scan nmap_scan"]
    assert job.attributes["appliance.scan_id"] == scanned.structured_content["scan_id"]  # type: ignore[index]
    assert job.attributes["appliance.outcome"] == "ok"


@pytest.mark.anyio
async def test_spans_of_an_http_appliance_reach_the_collector_when_it_is_stopped_with_sigterm(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    with otlp_receiver() as receiver:
        with served(policy, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=receiver.endpoint, **AT_EXIT_ONLY) as server:
            async with http_client(server.url, "2026-07-28") as client:
                dry = await client.call_tool("nmap_scan", {"target": "127.0.0.1", "dry_run": True})
            assert not dry.is_error
            assert not receiver.spans  # nothing is sent before the stop (AT_EXIT_ONLY)
            assert server.stop() == 0
        received, names = receiver.spans, receiver.names()

    [check] = [span for span in received if span.name == "policy check"]
    [request] = [span for span in received if span.name == "tools/call nmap_scan"]
    assert check.parent_span_id == request.span_id
    assert names.count("policy check") == 1


def test_a_collector_that_never_answers_delays_exit_by_the_shutdown_bound_only(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    messages = [
        initialize_request(),
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "nmap_scan", "arguments": {"target": "127.0.0.1", "dry_run": True}},
        },
    ]
    with silent_collector() as collector:
        # Unbounded, the exporter would wait 30 s for an answer and the SDK's shutdown 30 s more.
        extra = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.endpoint, "OTEL_EXPORTER_OTLP_TIMEOUT": "30"}
        with stdio_child(policy, APPLIANCE_HEALTH_ENABLED="false", APPLIANCE_LOG_LEVEL="INFO", **extra) as proc:
            assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
            for message in messages:
                proc.stdin.write(json.dumps(message).encode() + b"\n")
            proc.stdin.flush()
            answered = {}
            while 2 not in answered:
                line = proc.stdout.readline()
                assert line, "the server closed stdout"
                reply = json.loads(line)
                answered[reply.get("id")] = reply
            closed = time.monotonic()
            proc.stdin.close()
            code = proc.wait(timeout=20)
            exit_seconds = time.monotonic() - closed
            log = [json.loads(line) for line in proc.stderr.read().decode().splitlines() if line.startswith("{")]

    assert code == 0
    assert answered[2]["result"]["structuredContent"]["dry_run"] is True
    assert collector.accepted >= 1  # the exporter did try to send, and got no answer
    [late] = [line for line in log if line.get("message", "").startswith("trace export did not finish")]
    assert late["seconds"] < SHUTDOWN_SECONDS + 0.1
    # The appliance's own stdio shutdown takes well under a second; the 30 s wait is not there.
    assert exit_seconds < 5, exit_seconds
