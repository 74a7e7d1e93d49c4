"""OpenTelemetry traces of tool calls (README: Traces).

spans    the appliance's spans, on the OpenTelemetry API only (no-op unless a provider is set)
export   the OTLP/HTTP exporter, started only when the standard OTEL_* variables ask for it
"""
