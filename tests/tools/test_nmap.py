"""nmap_scan's argv: the policy's rate cap, its host group size (findings while nmap runs), and the
private data directory that keeps -sV to the allowlist.

Dry runs only, except the real nmap runs against listeners this test starts on 127.0.0.1 (and the
four addresses of 127.0.0.0/30, all loopback, for the host group runs).
"""

from __future__ import annotations

import contextlib
import http.server
import io
import itertools
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from support import LOOPBACK_POLICY, closed_port, tcp_listener, write_policy

from appliance.audit import AuditSink
from appliance.config import Settings
from appliance.errors import ValidationError
from appliance.parsers.nmap_xml import parse_nmap_xml
from appliance.policy import nse
from appliance.policy.netinfo import NetworkFacts
from appliance.policy.nse import SCRIPT_DB, parse_script_db
from appliance.policy.store import PolicyStore
from appliance.results import NmapResult
from appliance.runner import RunLimits, run
from appliance.service import ScanService
from appliance.tools import TOOLS, nmap
from appliance.tools.base import PlanContext
from appliance.tools.nmap import NmapRequest

pytestmark = pytest.mark.anyio


async def no_dns(name: str) -> list[str]:
    raise AssertionError(f"unexpected lookup of {name}")


def service(tmp_path: Path, *overrides: dict[str, Any]) -> ScanService:
    policy = write_policy(tmp_path, *overrides)
    settings = Settings(policy_path=policy, privilege_mode="connect")
    store = PolicyStore(policy, facts=NetworkFacts)
    return ScanService(settings, store, AuditSink(stream=io.StringIO()), resolve=no_dns)


async def dry_argv(tmp_path: Path, *overrides: dict[str, Any], **request: Any) -> list[str]:
    report = await service(tmp_path, *overrides).call(
        TOOLS["nmap_scan"], NmapRequest(target="10.20.0.5", dry_run=True, **request), "rid"
    )
    return report.argv


def value_after(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, argv
    return argv[argv.index(flag) + 1]


# --- the rate cap -------------------------------------------------------------------------------


async def test_nmap_without_caller_rate_gets_the_policy_max_rate(tmp_path: Path) -> None:
    argv = await dry_argv(tmp_path, {"tools": {"nmap_scan": {"max_rate": 250}}})

    assert value_after(argv, "--max-rate") == "250"


@pytest.mark.parametrize(
    "extra",
    [
        # safe: the caller's own cap, at or below the policy's, is the one nmap gets
        ["--max-rate", "100"],
        ["--max-rate=100"],
    ],
)
async def test_nmap_caller_rate_replaces_the_policy_cap(extra: list[str], tmp_path: Path) -> None:
    argv = await dry_argv(tmp_path, {"tools": {"nmap_scan": {"max_rate": 250}}}, extra_args=extra)

    assert value_after(argv, "--max-rate") == "100"


async def test_nmap_min_rate_alone_still_gets_the_policy_cap(tmp_path: Path) -> None:
    argv = await dry_argv(tmp_path, {"tools": {"nmap_scan": {"max_rate": 250}}}, extra_args=["--min-rate", "50"])

    assert value_after(argv, "--min-rate") == "50"
    assert value_after(argv, "--max-rate") == "250"


# --- the host group size ----------------------------------------------------------------------


async def test_nmap_gets_the_policy_default_max_hostgroup(tmp_path: Path) -> None:
    assert value_after(await dry_argv(tmp_path), "--max-hostgroup") == "16"


async def test_nmap_gets_the_policy_max_hostgroup(tmp_path: Path) -> None:
    argv = await dry_argv(tmp_path, {"tools": {"nmap_scan": {"max_hostgroup": 4}}})

    assert value_after(argv, "--max-hostgroup") == "4"
    assert argv.index("--max-hostgroup") < argv.index("10.20.0.5")


@pytest.mark.parametrize(
    "extra",
    [
        # unsafe: a caller's own group size, larger (findings late) or smaller, is the policy's to set
        ["--max-hostgroup", "1024"],
        ["--max-hostgroup", "1"],
        ["--min-hostgroup", "256"],
    ],
)
async def test_nmap_caller_hostgroup_flags_are_refused(extra: list[str], tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as refused:
        await dry_argv(tmp_path, extra_args=extra)

    assert refused.value.rule == "flag_hostgroup_from_caller"
    assert "max_hostgroup" in refused.value.recovery_suggestion


# Each host's second probe waits this long, so a host takes at least this long to finish.
SCAN_DELAY_SECONDS = 0.3


async def host_arrivals(tmp_path: Path, max_hostgroup: int) -> tuple[list[float], NmapResult]:
    """Seconds after the start at which each host of 127.0.0.0/30 came out of the plan's findings
    stream, fed the runner's lines while nmap ran; and the tool's result from that same stream."""
    policy = write_policy(tmp_path, LOOPBACK_POLICY, {"tools": {"nmap_scan": {"max_hostgroup": max_hostgroup}}})
    snapshot = PolicyStore(policy, facts=NetworkFacts).current
    ctx = PlanContext(snapshot.policy, snapshot.scope, no_dns, Settings(policy_path=policy, privilege_mode="connect"))
    with tcp_listener() as port:
        request = NmapRequest(
            target="127.0.0.0/30",
            ports=f"{port},{closed_port()}",
            extra_args=["-Pn", "--scan-delay", f"{int(SCAN_DELAY_SECONDS * 1000)}ms"],
        )
        plan = await nmap.plan(request, ctx)
        stream = plan.findings()
        started = time.monotonic()
        arrivals: list[float] = []

        async def on_line(line: bytes) -> None:
            if stream.feed(line):
                arrivals.append(time.monotonic() - started)

        result = await run(
            plan.argv, RunLimits(timeout_seconds=60, output_cap_bytes=1024 * 1024), on_stdout_line=on_line
        )
    assert result.exit_code == 0, result.stderr
    report = nmap.finish(plan, "rid", result, stream)
    assert isinstance(report, NmapResult)
    # The stream fed during the run and a parse of the captured output agree.
    assert report.hosts == parse_nmap_xml(result.stdout).hosts
    assert nmap.finish(plan, "rid", result).hosts == report.hosts
    return arrivals, report


async def test_real_nmap_with_a_host_group_of_one_reports_each_host_as_it_finishes(tmp_path: Path) -> None:
    arrivals, report = await host_arrivals(tmp_path, max_hostgroup=1)

    assert "--max-hostgroup" in report.argv
    assert [h.address for h in report.hosts] == ["127.0.0.0", "127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert len(arrivals) == 4
    # One host at a time: each arrives at least one scan delay after the one before it.
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert all(gap >= SCAN_DELAY_SECONDS * 0.9 for gap in gaps), arrivals
    [listening] = [h for h in report.hosts if h.address == "127.0.0.1"]
    assert (len(listening.ports), listening.port_counts) == (1, {"open": 1, "closed": 1})


async def test_real_nmap_with_a_large_host_group_reports_the_hosts_together(tmp_path: Path) -> None:
    # The control for the test above: one group of four hosts comes out in one write at its end.
    arrivals, report = await host_arrivals(tmp_path, max_hostgroup=16)

    assert len(report.hosts) == len(arrivals) == 4
    assert arrivals[-1] - arrivals[0] < SCAN_DELAY_SECONDS * 0.9, arrivals


# --- the private data directory -----------------------------------------------------------------

NARROW = {"tools": {"nmap_scan": {"allowed_scripts": ["banner", "http-title"]}}}


def installed_scripts() -> set[str]:
    return set(parse_script_db(SCRIPT_DB.read_text(encoding="utf-8")))


async def test_nmap_version_scan_gets_a_datadir_with_only_allowed_scripts(tmp_path: Path) -> None:
    argv = await dry_argv(tmp_path, NARROW, scan_type="version")

    datadir = Path(value_after(argv, "--datadir"))
    scripts = datadir / "scripts"
    assert sorted(p.name for p in scripts.iterdir()) == ["banner.nse", "http-title.nse", "script.db"]
    assert set(parse_script_db((scripts / "script.db").read_text(encoding="utf-8"))) == {"banner", "http-title"}
    assert (scripts / "banner.nse").read_bytes() == (SCRIPT_DB.parent / "banner.nse").read_bytes()
    assert installed_scripts() - {"banner", "http-title"}  # the host does have others: the dir matters


async def test_nmap_gets_no_datadir_when_nmap_ships_only_allowed_scripts(
    tmp_path: Path, lab_policy_data: dict[str, Any], lab_script_db: Path
) -> None:
    # The image: its script.db lists the allowlist and nothing else, so nmap's own directory is used.
    allowed = ["banner", "http-title", "ssl-cert"]
    entries = "".join(f'Entry {{ filename = "{name}.nse", categories = {{ "safe", }} }}\n' for name in allowed)
    await anyio.Path(lab_script_db).write_text(entries)
    lab_policy_data["tools"]["nmap_scan"]["allowed_scripts"] = allowed
    scan = lab_service(tmp_path, lab_policy_data, lab_script_db)

    report = await scan.call(TOOLS["nmap_scan"], NmapRequest(target="10.20.0.5", dry_run=True), "rid")

    assert "--datadir" not in report.argv


@pytest.mark.parametrize("scan_type", ["version"])
async def test_nmap_version_scan_refused_when_the_allowlist_cannot_be_enforced(
    scan_type: str,
    tmp_path: Path,
    lab_policy_data: dict[str, Any],
    lab_script_db: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A read-only file system (or a seccomp profile without mkdir): no private --datadir can be built.
    def no_temporary_directory(**kwargs: Any) -> str:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(nse.tempfile, "mkdtemp", no_temporary_directory)
    scan = lab_service(tmp_path, lab_policy_data, lab_script_db)

    with pytest.raises(ValidationError) as refused:
        await scan.call(TOOLS["nmap_scan"], NmapRequest(target="10.20.0.5", scan_type="version", dry_run=True), "r")
    assert refused.value.rule == "nse_allowlist_unenforceable"

    # safe: without -sV nmap runs only the scripts a call names, all from the allowlist.
    report = await scan.call(TOOLS["nmap_scan"], NmapRequest(target="10.20.0.5", dry_run=True), "r")
    assert "--datadir" not in report.argv


def lab_service(tmp_path: Path, policy: dict[str, Any], script_db: Path) -> ScanService:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    store = PolicyStore(path, facts=NetworkFacts, script_db=script_db)
    return ScanService(Settings(policy_path=path), store, AuditSink(stream=io.StringIO()), resolve=no_dns)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # nmap's probes reset connections mid-request; that is expected here


@contextlib.contextmanager
def http_listener(directory: Path) -> Iterator[int]:
    """An HTTP server on 127.0.0.1 (an ephemeral port) serving `directory`."""

    def handler(*args: Any) -> QuietHandler:
        return QuietHandler(*args, directory=str(directory))

    server = QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def scripts_started(tmp_path: Path, allowed: list[str]) -> set[str]:
    """The NSE scripts a real `version` scan of an HTTP listener starts, from nmap's own --script-trace.

    The argv is the appliance's (a dry run) with `-d --script-trace` added and the XML sent to a
    file: the XML result only shows scripts that found something, the trace every script that ran.
    """
    policy = {**LOOPBACK_POLICY, "tools": {"nmap_scan": {"allowed_scripts": allowed}}}
    (tmp_path / "site").mkdir(exist_ok=True)
    with http_listener(tmp_path / "site") as port:
        request = NmapRequest(target="127.0.0.1", ports=str(port), scan_type="version", dry_run=True)
        report = await service(tmp_path, policy).call(TOOLS["nmap_scan"], request, "rid")
        argv = list(report.argv)
        xml = tmp_path / "scan.xml"
        # nmap prints no debug lines while the XML goes to stdout: the XML goes to a file here.
        argv[argv.index("-oX") + 1] = str(xml)
        argv[-1:-1] = ["-d", "--script-trace"]
        result = await run(argv, RunLimits(timeout_seconds=120, output_cap_bytes=16 * 1024 * 1024))
    assert result.exit_code == 0, result.stderr
    assert '<service name="http" product="SimpleHTTPServer"' in xml.read_text()  # -sV still works
    return set(re.findall(r"NSE: Starting ([\w.-]+) against", (result.stdout + result.stderr).decode()))


async def test_nmap_version_scan_runs_no_unallowed_version_script(tmp_path: Path) -> None:
    # http-server-header is in the "version" category: -sV runs it unless script.db hides it.
    assert "http-server-header" not in await scripts_started(tmp_path, ["banner", "http-title"])


async def test_nmap_version_scan_runs_an_allowed_version_script(tmp_path: Path) -> None:
    # The control for the test above: allowed, the same script does run.
    assert "http-server-header" in await scripts_started(tmp_path, ["banner", "http-title", "http-server-header"])
