"""The OTLP/HTTP trace exporter, started only when the standard OTEL_* variables ask for it.

A documented exception to the one-settings rule (appliance.config): the OTEL_* variables are
the OpenTelemetry SDK's own, read by it (endpoint, headers, timeout, sampler, batch sizes,
resource attributes) so that the appliance is configured like any other traced service. The
appliance itself reads only what decides whether to export at all (`export_requested`), from
the environment `main()` hands it. Without them the SDK is never imported (start-up cost,
and the product sends nothing on its own).

Exit is bounded: the batch processor gets SHUTDOWN_SECONDS to send what it holds, then the
process goes on exiting whatever the collector does (a dead one costs at most that).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from appliance import __version__
from appliance.config import Settings
from appliance.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

# Issue 12: a collector that does not answer delays exit by no more than this.
SHUTDOWN_SECONDS = 0.2
SERVICE_NAME = "mcp-scanner-appliance"
# The exporter's own protocol names (OTEL_EXPORTER_OTLP_PROTOCOL); only OTLP over HTTP is built in.
SUPPORTED_PROTOCOL = "http/protobuf"
CERTIFICATE_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE")
TRUE = frozenset({"true", "1", "yes", "on"})


def _value(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name, "").strip()


def export_requested(environ: Mapping[str, str]) -> bool:
    """Whether the operator asked for trace export, by the standard variables:

    - `OTEL_SDK_DISABLED=true` turns everything off, whatever else is set;
    - `OTEL_TRACES_EXPORTER=none` is off, `otlp` is on (to the endpoint the variables name, by
      default the SDK's http://localhost:4318/v1/traces);
    - unset, export is on only when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
      `OTEL_EXPORTER_OTLP_ENDPOINT` is set. (The OpenTelemetry default for an unset exporter is
      `otlp` to localhost; the appliance sends nothing unless it was configured to.)

    Raises ConfigError for what it cannot do: another exporter (`console` would write to
    stdout, the stdio transport's wire), a protocol other than http/protobuf.
    """
    if _value(environ, "OTEL_SDK_DISABLED").lower() in TRUE:
        return False
    exporter = _value(environ, "OTEL_TRACES_EXPORTER").lower()
    if exporter == "none":
        return False
    if exporter not in ("", "otlp"):
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER={exporter[:64]!r} is not supported: traces are exported over OTLP/HTTP only",
            rule="otel_exporter_unsupported",
            recovery_suggestion="Set OTEL_TRACES_EXPORTER=otlp (or none), or unset it (README: Traces).",
        )
    wanted = exporter == "otlp" or any(
        _value(environ, name) for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    if wanted:
        for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = _value(environ, name)
            if protocol and protocol != SUPPORTED_PROTOCOL:
                raise ConfigError(
                    f"{name}={protocol[:64]!r} is not supported: traces go over OTLP/HTTP ({SUPPORTED_PROTOCOL})",
                    rule="otel_protocol_unsupported",
                    recovery_suggestion=f"Set {name}={SUPPORTED_PROTOCOL} or unset it, and point the endpoint at "
                    "the collector's OTLP/HTTP port (usually 4318).",
                )
    return wanted


def _endpoint(environ: Mapping[str, str]) -> str:
    """The traces URL the exporter will use (its own rule: the signal's variable as is, else the
    base endpoint plus /v1/traces)."""
    if endpoint := _value(environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return endpoint
    base = _value(environ, "OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
    return f"{base.removesuffix('/')}/v1/traces"


def _certificate(environ: Mapping[str, str], settings: Settings, endpoint: str) -> str | None:
    """The CA file for an https collector: the OTEL variables' when set, else APPLIANCE_CA_FILE
    (the exporter would otherwise trust requests' bundled CAs, not the operator's)."""
    if urlsplit(endpoint).scheme != "https":
        return None
    if any(_value(environ, name) for name in CERTIFICATE_VARIABLES):
        return None  # the exporter reads them itself
    from appliance.tls import client_context  # ssl: only for an https collector

    client_context(settings.ca_file)  # an unreadable file refuses the start (rule tls_ca_file_invalid)
    return str(settings.ca_file)


class TraceExport:
    """The process's TracerProvider with its batch processor and OTLP/HTTP exporter."""

    def __init__(self, provider: TracerProvider, endpoint: str) -> None:
        self.provider = provider
        self.endpoint = endpoint

    def shutdown(self, seconds: float = SHUTDOWN_SECONDS) -> bool:
        """Send what is batched, for at most `seconds`; True when it finished in time.

        The SDK's own shutdown waits up to 30 s for its worker (and its export for the
        exporter's timeout), so it runs in a daemon thread this waits for a bounded time: a
        collector that never answers leaves that thread blocked, and the process exits anyway.
        """
        started = time.monotonic()
        worker = threading.Thread(target=self.provider.shutdown, name="trace-export-shutdown", daemon=True)
        worker.start()
        worker.join(seconds)
        done = not worker.is_alive()
        elapsed = round(time.monotonic() - started, 3)
        if done:
            log.info("trace export shut down", extra={"seconds": elapsed})
        else:
            log.warning(
                "trace export did not finish in time; unsent spans are dropped",
                extra={"seconds": elapsed, "endpoint": self.endpoint},
            )
        return done


def start_export(environ: Mapping[str, str], settings: Settings) -> TraceExport | None:
    """Set the process's TracerProvider with an OTLP/HTTP exporter when `environ` asks for one
    (`export_requested`); None otherwise, with nothing imported."""
    if not export_requested(environ):
        return None
    endpoint = _endpoint(environ)
    certificate = _certificate(environ, settings, endpoint)
    # Imported here only: about 0.1 s and a dozen packages a process without export never needs.
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # The SDK reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES itself; what they set wins,
    # the appliance's name and version are the defaults.
    detected = Resource.create()
    attributes = dict(detected.attributes)
    if str(attributes.get("service.name", "")).startswith("unknown_service"):
        del attributes["service.name"]  # the SDK's placeholder, not the operator's choice
    resource = Resource({"service.name": SERVICE_NAME, "service.version": __version__}).merge(
        Resource(attributes, detected.schema_url)
    )
    # No atexit shutdown of its own: that one would wait 30 s for a dead collector (`shutdown`).
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(certificate_file=certificate)))
    trace.set_tracer_provider(provider)
    log.info("trace export on", extra={"endpoint": endpoint})
    return TraceExport(provider, endpoint)
