"""Spans the tests look at: in memory for in-process servers, over OTLP/HTTP for child ones.

`recorded_spans()`: the OpenTelemetry API accepts a global TracerProvider once per process
(`trace.set_tracer_provider` ignores later ones), and the SDK's request spans come from that
global one, so this installs one provider for the whole test session, the first time a test asks,
with an in-memory exporter each test clears. Spans are kept only while a test records
(`SpanRecording`), so the rest of the session does not pile them up.

`otlp_receiver()`: a collector stand-in on 127.0.0.1 that decodes what POST /v1/traces brings;
`silent_collector()`: one that accepts connections and never answers (a dead collector).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from support.listeners import accepting


class SpanRecording(SimpleSpanProcessor):
    """Exports ended spans to memory while `on` (a test that records), drops them otherwise."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        super().__init__(exporter)
        self.exporter = exporter
        self.on = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.on:
            super().on_end(span)


@functools.cache
def _recording() -> SpanRecording:
    recording = SpanRecording(InMemorySpanExporter())
    provider = TracerProvider()
    provider.add_span_processor(recording)
    trace.set_tracer_provider(provider)
    assert trace.get_tracer_provider() is provider, "another TracerProvider was set first in this process"
    return recording


@contextlib.contextmanager
def recorded_spans() -> Iterator[InMemorySpanExporter]:
    """Record the spans ended inside the block (the exporter is empty at its start)."""
    recording = _recording()
    recording.exporter.clear()
    recording.on = True
    try:
        yield recording.exporter
    finally:
        recording.on = False


@dataclass
class ReceivedSpan:
    name: str
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    attributes: dict[str, Any]
    service_name: str | None


@dataclass
class OtlpReceiver:
    """What the loopback collector received, and its traces URL."""

    endpoint: str
    spans: list[ReceivedSpan] = field(default_factory=list)
    posts: int = 0

    def names(self) -> list[str]:
        return [span.name for span in self.spans]


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return None if kind is None else getattr(any_value, kind)


def _decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    found = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attributes = {kv.key: _value(kv.value) for kv in span.attributes}
                found.append(
                    ReceivedSpan(
                        span.name,
                        span.trace_id,
                        span.span_id,
                        span.parent_span_id,
                        attributes,
                        resource.get("service.name"),
                    )
                )
    return found


@contextlib.contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """An OTLP/HTTP traces receiver on 127.0.0.1 (http.server in a thread) for the test's lifetime."""
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_error(404)
                return
            spans = _decode(body)
            with lock:
                received.posts += 1
                received.spans.extend(spans)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: pytest shows stderr of failures only

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    received = OtlpReceiver(f"http://127.0.0.1:{server.server_address[1]}/v1/traces")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class SilentCollector:
    endpoint: str
    accepted: int = 0


@contextlib.contextmanager
def silent_collector() -> Iterator[SilentCollector]:
    """A collector on 127.0.0.1 that accepts connections, reads nothing and never answers."""
    held: list[socket.socket] = []
    collector = SilentCollector("")

    def hold(conn: socket.socket) -> None:
        held.append(conn)  # kept open, never read: the exporter waits for an answer
        collector.accepted += 1

    with accepting(hold) as port:
        collector.endpoint = f"http://127.0.0.1:{port}/v1/traces"
        try:
            yield collector
        finally:
            for conn in held:
                conn.close()
