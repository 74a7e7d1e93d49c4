"""Each tool's `finish`: one findings stream fed during the run or, without one, fed the captured
output; the compact result (no raw output; nmap open ports in full, the rest counted).

No scanner runs here: the RunResults carry the fixtures' real scanner output.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import ExecutionError
from appliance.parsers.gobuster_text import GobusterStream
from appliance.parsers.lines import output_lines
from appliance.parsers.masscan_json import MasscanStream
from appliance.parsers.nmap_xml import NmapStream
from appliance.policy.targets import CheckedTarget
from appliance.results import MasscanResult, ScanReport
from appliance.runner import RunResult
from appliance.tools import TOOLS
from appliance.tools.base import ScanPlan

FIXTURES = Path(__file__).parent.parent / "fixtures"
TARGET = CheckedTarget("10.250.1.0/30", "cidr", "10.250.1.0/30", None, (), 4)

PLANS = {
    "nmap_scan": ScanPlan("nmap_scan", TARGET, ("/usr/bin/nmap",), 60, {}, findings=NmapStream),
    "masscan_scan": ScanPlan("masscan_scan", TARGET, ("/usr/bin/masscan",), 60, {}, findings=MasscanStream),
    "gobuster_scan": ScanPlan(
        "gobuster_scan", TARGET, ("/usr/bin/gobuster",), 60, {"mode": "dir"}, findings=partial(GobusterStream, "dir")
    ),
}
OUTPUTS = {
    "nmap_scan": FIXTURES / "nmap" / "two_hosts.xml",
    "masscan_scan": FIXTURES / "masscan" / "scan.json",
    "gobuster_scan": FIXTURES / "gobuster" / "dir.txt",
}
FOUND = {"nmap_scan": "hosts", "masscan_scan": "findings", "gobuster_scan": "findings"}


def run_of(stdout: bytes, *, stderr: bytes = b"", exit_code: int = 0) -> RunResult:
    return RunResult(("scanner",), exit_code, stdout, stderr, False, False, 1.5, pid=0)


def finish(tool: str, run: RunResult | None, stream: Any = None, plan: ScanPlan | None = None) -> ScanReport:
    return TOOLS[tool].finish(plan or PLANS[tool], "rid", run, stream)


@pytest.mark.parametrize("tool", sorted(PLANS))
def test_the_stream_fed_during_the_run_and_the_captured_output_give_one_result(tool: str) -> None:
    output = OUTPUTS[tool].read_bytes()
    stream = PLANS[tool].findings()
    for line in output_lines(output):
        stream.feed(line)

    fed = finish(tool, run_of(output), stream)
    parsed_after = finish(tool, run_of(output))

    assert fed == parsed_after
    assert getattr(fed, FOUND[tool])  # the fixtures hold findings: the comparison is not of two empties


@pytest.mark.parametrize("tool", sorted(PLANS))
def test_finish_takes_the_fed_stream_not_the_captured_output(tool: str) -> None:
    # A fed stream that saw nothing wins over captured output full of findings: finish never re-reads.
    report = finish(tool, run_of(OUTPUTS[tool].read_bytes()), PLANS[tool].findings())

    assert getattr(report, FOUND[tool]) == []


def test_findings_are_read_from_the_stream_the_plan_names() -> None:
    plan = replace(PLANS["masscan_scan"], findings_stream="stderr")
    records = OUTPUTS["masscan_scan"].read_bytes()

    on_stderr = finish("masscan_scan", run_of(b"", stderr=records), plan=plan)
    on_stdout = finish("masscan_scan", run_of(records), plan=plan)

    assert isinstance(on_stderr, MasscanResult) and isinstance(on_stdout, MasscanResult)
    assert len(on_stderr.findings) == 2
    assert on_stdout.findings == []


@pytest.mark.parametrize("tool", sorted(PLANS))
def test_results_carry_no_raw_output(tool: str) -> None:
    report = finish(tool, run_of(OUTPUTS[tool].read_bytes()))

    dumped = report.model_dump()
    assert not {key for key in dumped if key.startswith("raw")}
    assert "raw_output" not in type(report).model_json_schema()["properties"]


def test_nmap_result_lists_open_ports_and_counts_every_state() -> None:
    report = finish("nmap_scan", run_of(OUTPUTS["nmap_scan"].read_bytes()))

    hosts = report.model_dump()["hosts"]
    assert [(h["address"], [p["port"] for p in h["ports"]], h["port_counts"]) for h in hosts] == [
        ("10.250.1.1", [8080], {"closed": 2, "open": 1}),
        ("10.250.1.2", [2222, 8080], {"closed": 1, "open": 2}),
    ]
    assert all(p["state"] == "open" for h in hosts for p in h["ports"])


@pytest.mark.parametrize("tool", sorted(PLANS))
def test_failed_scanner_without_findings_is_an_execution_error(tool: str) -> None:
    with pytest.raises(ExecutionError) as failed:
        finish(tool, run_of(b"", stderr=b"permission denied", exit_code=1))

    assert failed.value.rule == "scanner_exit_status"
    assert "permission denied" in str(failed.value)


@pytest.mark.parametrize("tool", sorted(PLANS))
def test_failed_scanner_with_findings_keeps_them(tool: str) -> None:
    report = finish(tool, run_of(OUTPUTS[tool].read_bytes(), exit_code=1))

    assert report.exit_code == 1
    assert getattr(report, FOUND[tool])


@pytest.mark.parametrize("tool", sorted(PLANS))
def test_dry_run_has_no_findings_and_no_run_fields(tool: str) -> None:
    report = finish(tool, None)

    assert report.dry_run
    assert getattr(report, FOUND[tool]) == []
    assert (report.exit_code, report.partial) == (None, False)
