"""Keeping the appliance usable when scanners misbehave or callers pile up.

A call passes these in order: the tool's circuit breaker (`breaker`), a concurrency slot whose
queue wait counts against the call's deadline (`limits`), and a start that is retried only when
the kernel refused to create the process for a passing reason (`retry`).
"""
