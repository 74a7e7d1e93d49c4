"""ScanService: the call path every transport uses (policy check, runner, parser, audit)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from support import LOOPBACK_POLICY, SpyRunner, closed_port, tcp_listener, write_policy
from support.lab import audit_records

from appliance.audit import AuditSink, output_digest
from appliance.config import Settings
from appliance.errors import ExecutionError, ResourceExhaustedError, ValidationError
from appliance.policy.netinfo import NetworkFacts
from appliance.policy.store import PolicyStore
from appliance.results import NmapResult
from appliance.runner import RunLimits, RunResult
from appliance.service import ScanService
from appliance.tools import TOOLS
from appliance.tools.masscan import MasscanRequest
from appliance.tools.nmap import NmapRequest

pytestmark = pytest.mark.anyio


async def no_dns(name: str) -> list[str]:
    raise AssertionError(f"unexpected lookup of {name}")


def make_service(
    tmp_path: Path,
    *overrides: dict[str, Any],
    runner: Any = None,
    mode: str = "connect",
    audit_path: Path | None = None,
) -> tuple[ScanService, io.StringIO]:
    policy = write_policy(tmp_path, *overrides)
    settings = Settings(policy_path=policy, privilege_mode=mode)  # type: ignore[arg-type]
    stream = io.StringIO()
    store = PolicyStore(policy, facts=NetworkFacts)
    kwargs: dict[str, Any] = {"resolve": no_dns}
    if runner is not None:
        kwargs["runner"] = runner
    return ScanService(settings, store, AuditSink(audit_path, stream=stream), **kwargs), stream


def audit_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return audit_records(stream.getvalue())


async def test_refusal_starts_no_process_and_is_audited(tmp_path: Path) -> None:
    spy = SpyRunner()
    service, stream = make_service(tmp_path, runner=spy)
    with pytest.raises(ValidationError) as refused:
        await service.call(TOOLS["nmap_scan"], NmapRequest(target="169.254.169.254"), "rid-1")
    assert refused.value.rule == "target_denied_link_local"
    assert spy.calls == []
    [line] = audit_lines(stream)
    assert line["verdict"] == "refused"
    assert line["rule"] == "target_denied_link_local"
    assert line["request_id"] == "rid-1"


async def test_dry_run_returns_argv_without_running(tmp_path: Path) -> None:
    spy = SpyRunner()
    service, stream = make_service(tmp_path, runner=spy)
    report = await service.call(
        TOOLS["nmap_scan"], NmapRequest(target="10.20.0.5", ports="22,80", dry_run=True), "rid-2"
    )
    assert report.dry_run is True
    assert report.argv[-1] == "10.20.0.5"
    assert report.argv[report.argv.index("-p") + 1] == "22,80"
    assert spy.calls == []
    assert audit_lines(stream)[0]["dry_run"] is True


async def test_disabled_tool_is_refused(tmp_path: Path) -> None:
    service, _ = make_service(tmp_path, {"tools": {"nmap_scan": {"enabled": False}}}, runner=SpyRunner())
    with pytest.raises(ValidationError) as refused:
        await service.call(TOOLS["nmap_scan"], NmapRequest(target="10.20.0.5"), "rid")
    assert refused.value.rule == "tool_disabled"


async def test_real_nmap_scan_of_loopback_listener_is_parsed_and_audited(tmp_path: Path) -> None:
    service, stream = make_service(tmp_path, LOOPBACK_POLICY)
    closed = closed_port()
    with tcp_listener() as port:
        report = await service.call(
            TOOLS["nmap_scan"], NmapRequest(target="127.0.0.1", ports=f"{port},{closed}"), "rid-3"
        )
    assert isinstance(report, NmapResult)
    assert report.exit_code == 0 and not report.partial
    [host] = report.hosts
    # Open ports are listed in full; the closed one is only counted.
    assert [(p.port, p.state) for p in host.ports] == [(port, "open")]
    assert host.port_counts == {"open": 1, "closed": 1}
    created, start, end = audit_lines(stream)
    assert (created["event"], start["event"], end["event"]) == ("job", "start", "end")
    assert (created["state"], start["state"], end["state"]) == ("queued", "running", "completed")
    assert created["scan_id"] == start["scan_id"] == end["scan_id"] == report.scan_id
    assert end["outcome"] == "ok"
    assert end["argv"] == report.argv
    assert end["output_sha256"] != output_digest(b"")


async def test_scan_past_its_budget_returns_partial_result(tmp_path: Path) -> None:
    service, stream = make_service(tmp_path, LOOPBACK_POLICY)
    with tcp_listener() as port:
        request = NmapRequest(
            target="127.0.0.1",
            ports=f"{port},20000-20100",
            extra_args=["--scan-delay", "1s"],
            timeout_seconds=2,
        )
        report = await service.call(TOOLS["nmap_scan"], request, "rid-4")
    assert report.partial is True
    assert report.partial_reason == "timeout"
    assert audit_lines(stream)[-1]["outcome"] == "partial"


async def test_unwritable_audit_sink_refuses_the_call(tmp_path: Path) -> None:
    spy = SpyRunner()
    service, _ = make_service(tmp_path, runner=spy, audit_path=tmp_path / "missing-dir" / "audit.log")
    with pytest.raises(ExecutionError) as failed:
        await service.call(TOOLS["nmap_scan"], NmapRequest(target="10.20.0.5"), "rid")
    assert failed.value.rule == "audit_unwritable"
    assert spy.calls == []


async def test_masscan_rate_budget_is_shared_across_calls(tmp_path: Path) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def held_runner(argv: Any, limits: RunLimits, **kwargs: Any) -> RunResult:
        started.set()
        await release.wait()
        return RunResult(tuple(argv), 0, b"", b"", False, False, 0.01, 0)

    policy = {"tools": {"masscan_scan": {"max_rate": 150, "default_rate": 100}}}
    service, _ = make_service(tmp_path, policy, runner=held_runner, mode="raw")
    spec = TOOLS["masscan_scan"]
    first = asyncio.create_task(service.call(spec, MasscanRequest(target="10.20.0.5", ports="80"), "a"))
    await started.wait()
    with pytest.raises(ResourceExhaustedError) as exhausted:
        await service.call(spec, MasscanRequest(target="10.20.0.6", ports="80"), "b")
    assert exhausted.value.rule == "rate_budget_exhausted"
    release.set()
    await first
    # The budget is returned when a call ends.
    release.set()
    await service.call(spec, MasscanRequest(target="10.20.0.6", ports="80"), "c")
