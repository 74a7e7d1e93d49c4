"""The conformance harness (conformance/harness.py): its exact comparison, its data, and a full run.

The full run (marker `conformance`) needs Node 22 from `scripts/conformance --install`; it sends
traffic only to the appliance it starts on 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import harness
import pytest
from support import REPO

RUN = "0.2.0-alpha.12@2026-07-28"
APPLIANCE = str(Path(sys.executable).with_name("appliance"))


def check(check_id: str, status: str = "SUCCESS") -> dict[str, Any]:
    return {"id": check_id, "status": status, "errorMessage": None if status == "SUCCESS" else "why"}


def test_compare_accepts_failures_that_match_the_list() -> None:
    observed = {(RUN, "server-stateless"): [check("a"), check("b", "FAILURE"), check("c", "WARNING")]}
    expected = {(RUN, "server-stateless", "b"): "FAILURE", (RUN, "server-stateless", "c"): "WARNING"}
    verdict = harness.compare(observed, expected)
    assert verdict.ok, verdict.problems
    assert verdict.checks == 3


def test_compare_fails_on_a_failure_not_listed() -> None:
    verdict = harness.compare({(RUN, "ping"): [check("ping", "FAILURE")]}, {})
    assert [p for p in verdict.problems if "ping: unexpected FAILURE" in p]


@pytest.mark.parametrize("status", ["WARNING", "SKIPPED", "SOMETHING_NEW"])
def test_compare_fails_on_any_unlisted_non_pass(status: str) -> None:
    verdict = harness.compare({(RUN, "caching"): [check("x", status)]}, {})
    assert not verdict.ok


def test_compare_ranks_an_unknown_status_as_a_failure() -> None:
    checks = [check("x", "SOMETHING_NEW"), check("x", "WARNING"), check("x")]
    verdict = harness.compare({(RUN, "caching"): checks}, {})
    assert [p for p in verdict.problems if "unexpected SOMETHING_NEW" in p]


def test_compare_fails_when_a_listed_check_now_passes() -> None:
    verdict = harness.compare({(RUN, "caching"): [check("x")]}, {(RUN, "caching", "x"): "SKIPPED"})
    assert verdict.problems == (f"{RUN} caching x: expected SKIPPED, got SUCCESS; update the list",)


def test_compare_fails_when_a_listed_check_ends_with_another_status() -> None:
    verdict = harness.compare({(RUN, "caching"): [check("x", "FAILURE")]}, {(RUN, "caching", "x"): "WARNING"})
    assert not verdict.ok


def test_compare_fails_when_a_listed_check_is_not_run() -> None:
    verdict = harness.compare({(RUN, "caching"): [check("y")]}, {(RUN, "caching", "x"): "FAILURE"})
    assert verdict.problems == (f"{RUN} caching x: expected FAILURE but not run",)


def test_compare_fails_when_a_listed_scenario_is_not_in_the_plan() -> None:
    verdict = harness.compare({(RUN, "ping"): [check("ping")]}, {(RUN, "caching", "x"): "FAILURE"})
    assert not verdict.ok


def test_compare_judges_a_repeated_check_by_its_worst_occurrence() -> None:
    checks = [check("reject"), check("reject", "FAILURE"), check("reject")]
    assert not harness.compare({(RUN, "http-header-validation"): checks}, {}).ok
    listed = {(RUN, "http-header-validation", "reject"): "FAILURE"}
    assert harness.compare({(RUN, "http-header-validation"): checks}, listed).ok


def test_compare_fails_when_a_scenario_wrote_no_checks() -> None:
    verdict = harness.compare({(RUN, "ping"): None}, {})
    assert verdict.problems == (f"{RUN} ping: the suite wrote no checks (crashed, timed out or skipped it)",)


def test_every_expected_failure_has_a_reason_and_a_planned_scenario() -> None:
    planned = {(run.id, scenario) for run in harness.load_plan() for scenario in run.scenarios}
    expected = harness.load_expected()  # raises on an entry without a reason or with a passing status
    assert expected
    assert {(run_id, scenario) for run_id, scenario, _ in expected} <= planned


def test_expected_failures_refuse_an_entry_without_reason(tmp_path: Path) -> None:
    path = tmp_path / "expected.yaml"
    path.write_text("version: 1\nexpected:\n  r:\n    s:\n      c: {status: FAILURE, reason: ''}\n")
    with pytest.raises(ValueError, match="has no reason"):
        harness.load_expected(path)


def test_plan_pins_both_suites_in_the_lock_file() -> None:
    lock = json.loads((REPO / "conformance" / "package-lock.json").read_text())["packages"]
    versions = {name: lock[f"node_modules/{name}"]["version"] for name in ("conformance-0-1", "conformance-0-2")}
    assert versions == {"conformance-0-1": "0.1.16", "conformance-0-2": "0.2.0-alpha.12"}
    assert all(entry.get("integrity", "").startswith("sha512-") for key, entry in lock.items() if key)
    assert {run.package for run in harness.load_plan()} == set(versions)
    assert {run.spec_version for run in harness.load_plan()} == {"2025-11-25", "2026-07-28"}


def test_lock_pins_the_inspector_cli_the_container_tests_drive() -> None:
    """tests/integration/test_jobs.py runs the MCP Inspector CLI installed from this lock."""
    lock = json.loads((REPO / "conformance" / "package-lock.json").read_text())["packages"]
    manifest = json.loads((REPO / "conformance" / "package.json").read_text())
    # An exact version, not a range: `npm ci` installs what the lock says, and the lock says this.
    assert manifest["dependencies"]["@modelcontextprotocol/inspector"] == "2.12.0"
    assert lock["node_modules/@modelcontextprotocol/inspector"]["version"] == "2.12.0"


@pytest.mark.parametrize("target", ["127.0.0.1", "::1", "10.0.0.5", "192.168.1.1", "172.16.0.1", "x.lab.internal"])
def test_conformance_policy_refuses_every_target(target: str) -> None:
    # A dry run (`appliance check`): nothing is scanned, whatever the verdict.
    done = subprocess.run(
        [APPLIANCE, "check", "nmap_scan", "--args-json", json.dumps({"target": target})],
        env={"APPLIANCE_POLICY_PATH": str(harness.POLICY), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["verdict"] == "refused"


@pytest.mark.conformance
def test_official_conformance_suites_pass_except_the_listed_checks(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(REPO / "scripts" / "conformance"), "--results", str(tmp_path / "results")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 problems" in done.stdout
