"""Compose's `observability` profile: a real Prometheus (Debian's, observability/prometheus)
scrapes the appliance's sidecar over HTTPS with the health token and evaluates the alert rules;
an alert fires once the test forces its condition (a breaker forced open by the policy)."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import docker
import pytest
import yaml
from dockerlab import ComposeStack, http_client
from support.dashboard import FLEET_ROW, standalone_queries
from support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

PROMETHEUS_IMAGE = "mcp-scanner-prometheus:latest"
# Scrape and evaluation every 5 s; ApplianceBreakerOpen has `for: 1m`: firing within ~75 s.
ALERT_FIRING_SECONDS = 150
TARGET_UP_SECONDS = 60
POLICY = "compose-scope.yaml"


def api(stack: ComposeStack, path: str, **query: str) -> Any:
    port = stack.env["PROMETHEUS_PUBLISH_PORT"]
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (a fixed http URL)
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def instant(stack: ComposeStack, query: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = api(stack, "query", query=query)["result"]
    return result


@pytest.fixture(scope="module")
def prometheus(compose_stack: ComposeStack, docker_client: docker.DockerClient) -> Iterator[ComposeStack]:
    try:
        docker_client.images.get(PROMETHEUS_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{PROMETHEUS_IMAGE} is missing: run scripts/build-image")
    up = compose_stack.compose(
        "--profile", "observability", "up", "--detach", "--wait", "--wait-timeout", "90", "prometheus"
    )
    assert up.returncode == 0, up.stderr + compose_stack.compose("logs", "--no-color", "prometheus").stdout
    yield compose_stack
    compose_stack.compose("--profile", "observability", "rm", "--stop", "--force", "prometheus")


def test_prometheus_scrapes_the_sidecar_over_tls_with_the_token(prometheus: ComposeStack) -> None:
    def target_up() -> dict[str, Any] | None:
        targets = api(prometheus, "targets")["activeTargets"]
        found = [t for t in targets if t["labels"]["job"] == "appliance"]
        return found[0] if found and found[0]["health"] == "up" else None

    target = wait_until(target_up, timeout=TARGET_UP_SECONDS, interval=1, what="the appliance target up")
    assert target["scrapeUrl"] == "https://appliance:9090/metrics"
    # The series the alert rules read are there, with values from the running appliance.
    assert [float(s["value"][1]) for s in instant(prometheus, "appliance_ready")] == [1.0]
    assert {s["metric"]["sink"] for s in instant(prometheus, "appliance_sink_writable == 1")} == {"audit", "job_store"}
    assert {s["metric"]["tool"] for s in instant(prometheus, "appliance_tool_queue_capacity")} == {
        "nmap_scan",
        "masscan_scan",
        "gobuster_scan",
    }
    rules = api(prometheus, "rules")["groups"]
    assert {r["name"] for group in rules for r in group["rules"]} >= {"ApplianceDown", "ApplianceBreakerOpen"}
    # Nothing fires on a healthy appliance.
    assert [a for a in api(prometheus, "alerts")["alerts"] if a["state"] == "firing"] == []


def test_breaker_forced_open_by_the_policy_fires_its_alert(prometheus: ComposeStack) -> None:
    policy_file = prometheus.policy_dir / POLICY
    original = policy_file.read_text()
    policy = yaml.safe_load(original)
    policy["tools"]["gobuster_scan"]["breaker_force"] = "open"
    started = time.monotonic()
    policy_file.write_text(yaml.safe_dump(policy, sort_keys=False))
    try:

        def firing() -> dict[str, Any] | None:
            for alert in api(prometheus, "alerts")["alerts"]:
                if alert["labels"]["alertname"] == "ApplianceBreakerOpen" and alert["state"] == "firing":
                    return dict(alert)
            return None

        alert = wait_until(firing, timeout=ALERT_FIRING_SECONDS, interval=2, what="ApplianceBreakerOpen firing")
        print(f"ApplianceBreakerOpen firing {time.monotonic() - started:.0f} s after the policy change")
        assert alert["labels"]["tool"] == "gobuster_scan"
        assert alert["labels"]["severity"] == "warning"
        assert alert["annotations"]["runbook"] == "README.md#appliancebreakeropen"
    finally:
        policy_file.write_text(original)


PANEL_SERIES_SECONDS = 90


async def test_every_standalone_dashboard_panel_query_returns_series(prometheus: ComposeStack) -> None:
    # Every panel but the Fleet row's: its appliance_fleet_* series exist on fleet roles only,
    # and tests/fleet/test_fleet_panels.py runs them against the host's Prometheus.
    # One refusal first: the refusal counters have no series until a rule refuses something.
    async with http_client(prometheus.url, prometheus.token, verify=prometheus.verify) as client:
        refused = await client.call_tool("nmap_scan", {"target": "169.254.169.254"})
    assert refused.is_error
    queries = standalone_queries()
    print(f"running {len(queries)} panel queries (every row but {FLEET_ROW!r})")
    assert queries and all(query.row != FLEET_ROW for query in queries)
    pending = {(query.title, query.expr) for query in queries}

    def all_answered() -> bool:
        for title, expr in sorted(pending):
            if instant(prometheus, expr):
                pending.discard((title, expr))
        return not pending

    try:
        wait_until(all_answered, timeout=PANEL_SERIES_SECONDS, interval=2, what="a series for every panel query")
    except AssertionError as exc:
        raise AssertionError(f"panel queries without a series: {sorted(pending)}") from exc
