"""The alert rules (observability/prometheus/alerts.yaml) with the real promtool, and the
metrics they read, scraped from a running appliance: a renamed metric fails here, not silently
in an operator's Prometheus."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support import LOOPBACK_POLICY, REPO, served, wait_until, write_policy

from appliance.metrics import Metrics, ServingState

RULES_DIR = REPO / "observability" / "prometheus"
RULES = RULES_DIR / "alerts.yaml"
# Series the rules read that the appliance does not export itself (Prometheus makes `up`).
FROM_PROMETHEUS = {"up"}
# Series only the fleet roles export: held against a front's and a segment's scrape in
# tests/fleet/test_fleet_panels.py, not against the standalone appliance's here.
FLEET_PREFIX = "appliance_fleet_"


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: scripts/install-checkers installs Debian's prometheus package (it has it)")
    return subprocess.run([path, *args], input=stdin, capture_output=True, cwd=RULES_DIR, timeout=60, check=False)


def series_named_by_rules() -> set[str]:
    names: set[str] = set()
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            names |= set(re.findall(r"\b(appliance_[a-z_]+|up)\b(?=\s*[{\s=<>!*/)]|$)", rule["expr"]))
    return names


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_rules_are_valid_and_their_unit_tests_pass() -> None:
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert b"SUCCESS: 13 rules found" in checked.stdout
    tested = promtool("test", "rules", "alerts.test.yaml")
    assert tested.returncode == 0, tested.stdout.decode() + tested.stderr.decode()


def test_every_rule_has_severity_summary_and_a_runbook_section_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text().lower()
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            assert "for" in rule, rule["alert"]
            anchor = rule["annotations"]["runbook"].split("#", 1)[1]
            assert anchor == rule["alert"].lower()
            assert f"#### {rule['alert'].lower()}" in readme, f"README has no runbook entry for {rule['alert']}"


def test_serving_state_gauges_read_their_sources_at_scrape_time() -> None:
    state = {"ready": True, "audit": True}
    metrics = Metrics(
        CollectorRegistry(),
        ["nmap_scan"],
        process=False,
        serving=ServingState(
            ready=lambda: state["ready"],
            sinks_writable=lambda: {"audit": state["audit"], "job_store": True},
            queue_capacity=lambda: {"nmap_scan": 4},
            max_job_seconds=lambda: 600.0,
        ),
    )
    first = samples(generate_latest(metrics.registry).decode())
    state.update(ready=False, audit=False)
    second = samples(generate_latest(metrics.registry).decode())
    assert first[("appliance_ready", ())] == 1 and second[("appliance_ready", ())] == 0
    assert first[("appliance_sink_writable", (("sink", "audit"),))] == 1
    assert second[("appliance_sink_writable", (("sink", "audit"),))] == 0
    assert second[("appliance_sink_writable", (("sink", "job_store"),))] == 1
    assert second[("appliance_tool_queue_capacity", (("tool", "nmap_scan"),))] == 4
    assert second[("appliance_job_max_seconds", ())] == 600


def test_live_scrape_passes_promtool_and_holds_every_series_the_rules_read(tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path,
        LOOPBACK_POLICY,
        {"limits": {"max_timeout_seconds": 900}},
        {"limits": {"concurrency": {"per_tool": {"nmap_scan": {"running": 2, "queued": 7}}}}},
    )
    with served(policy) as server:
        wait_until(lambda: "appliance_ready 1.0" in scrape(server.health_port), timeout=20, what="appliance_ready 1")
        text = scrape(server.health_port)
    checked = promtool("check", "metrics", stdin=text.encode())
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    exported = {family.name for family in text_string_to_metric_families(text)}
    exported |= {name for name, _labels in samples(text)}
    standalone = {name for name in series_named_by_rules() if not name.startswith(FLEET_PREFIX)}
    missing = standalone - exported - FROM_PROMETHEUS
    assert not missing, f"rules read series the appliance does not export: {sorted(missing)}"
    found = samples(text)
    assert found[("appliance_sink_writable", (("sink", "audit"),))] == 1
    assert found[("appliance_sink_writable", (("sink", "job_store"),))] == 1
    assert found[("appliance_tool_queue_capacity", (("tool", "nmap_scan"),))] == 7
    assert found[("appliance_job_max_seconds", ())] == 900


def test_rule_series_regex_sees_the_metrics_in_expressions() -> None:
    # The guard above is only as good as this extraction: it must find what the rules read.
    names = series_named_by_rules()
    assert {"up", "appliance_ready", "appliance_tool_calls_total", "appliance_tool_queue_capacity"} <= names
    assert {"appliance_job_max_seconds", "appliance_sink_writable", "appliance_circuit_state"} <= names
    assert {"appliance_fleet_connected", "appliance_fleet_queue_depth"} <= names


def test_breaker_forced_open_by_the_policy_shows_as_open_in_the_gauge(tmp_path: Path) -> None:
    # What the compose test forces to fire ApplianceBreakerOpen: the gauge must say what callers meet.
    policy = write_policy(tmp_path, LOOPBACK_POLICY, {"tools": {"gobuster_scan": {"breaker_force": "open"}}})
    with served(policy) as server:
        found = wait_until(lambda: samples(scrape(server.health_port)), timeout=20, what="a scrape")
    assert found[("appliance_circuit_state", (("tool", "gobuster_scan"),))] == 2
    assert found[("appliance_circuit_state", (("tool", "nmap_scan"),))] == 0
