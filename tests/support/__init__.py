"""Helpers shared by the tests (imported as `from support import X`).

policies    the shipped default policy with overrides, written to a tmp dir
engagements policy data of engagements, and a wall clock the test holds still
lab         a ScanService on the lab policy (conftest's lab_service) and its dict resolver
listeners   loopback targets the tests start (the only things a host test scans)
servers     `appliance serve` child processes and MCP clients for them
jobs        jobs as the store holds them (stored_job), for tests that fill a store
runners     the spy runner that refusal tests hand to ScanService; the gated fake scanner of job tests
processes   scanner processes as the host sees them
raw_mcp     raw handshake-era MCP over HTTP (session IDs, SSE bodies)
inspector   the MCP Inspector CLI (npm, pinned in conformance/) as a subprocess (import support.inspector)
oidc        a real OpenID provider (npm oauth2-mock-server, pinned in tests/oidc/) on 127.0.0.1 (import support.oidc)
audit       audit trails the tests write and damage; syslog receivers (import support.audit)
sidecars    the sidecar's health model and the status page's tokens (import support.sidecars)
traces      spans in memory for in-process servers; an OTLP/HTTP receiver and a silent collector (import support.traces)
nats        a real nats-server with JetStream on 127.0.0.1 (import support.nats)
fleet       JetStream job stores on buckets of a test's own; the roles as processes (import support.fleet)
bus_security a nats-server from deploy/nats/nats.conf, TLS and scripts/up's users (import support.bus_security)
prometheus  the host's Prometheus on 127.0.0.1 scraping loopback sidecars, and its API (import support.prometheus)
dashboard   the Grafana dashboard's panel queries by row, variables substituted (import support.dashboard)
approval    the human at an MCP client: an elicitation callback answering approvals (import support.approval)
waiting     one wait_until (and `eventually`, its async form): wait on a condition, never sleep
"""

from __future__ import annotations

from support.lab import FakeResolver, LabService
from support.listeners import (
    CountingListener,
    WebRoot,
    closed_port,
    counting_listener,
    loopback_listening,
    tcp_listener,
    web_root,
)
from support.policies import DEFAULT_POLICY, LOOPBACK_POLICY, REPO, merge, write_policy
from support.processes import scanner_processes
from support.raw_mcp import HANDSHAKE_VERSION, initialize_request, mcp_headers, open_session, rpc_messages
from support.runners import GatedRunner, SpyRunner, replay_output
from support.servers import (
    APPLIANCE,
    START_SECONDS,
    STOP_SECONDS,
    TOKEN,
    Served,
    http_client,
    http_server,
    run_cli,
    served,
    server_env,
    sidecar_get,
    stdio_child,
    stdio_client,
)
from support.waiting import eventually, wait_until

__all__ = [
    "APPLIANCE",
    "DEFAULT_POLICY",
    "HANDSHAKE_VERSION",
    "LOOPBACK_POLICY",
    "REPO",
    "START_SECONDS",
    "STOP_SECONDS",
    "TOKEN",
    "CountingListener",
    "FakeResolver",
    "GatedRunner",
    "LabService",
    "Served",
    "SpyRunner",
    "WebRoot",
    "closed_port",
    "counting_listener",
    "eventually",
    "http_client",
    "http_server",
    "initialize_request",
    "loopback_listening",
    "mcp_headers",
    "merge",
    "open_session",
    "replay_output",
    "rpc_messages",
    "run_cli",
    "scanner_processes",
    "served",
    "server_env",
    "sidecar_get",
    "stdio_child",
    "stdio_client",
    "tcp_listener",
    "wait_until",
    "web_root",
    "write_policy",
]
