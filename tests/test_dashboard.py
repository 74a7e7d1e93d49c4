"""The Grafana dashboard's shape (its queries run against a real Prometheus in
tests/integration/test_observability.py)."""

from __future__ import annotations

import json

from support import REPO

DASHBOARD = REPO / "observability" / "grafana" / "appliance-dashboard.json"


def test_dashboard_has_a_fixed_uid_and_a_templated_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "mcp-scanner-appliance"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])


def test_dashboard_shows_what_an_operator_watches() -> None:
    exprs = " ".join(t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"])
    for metric in (
        "appliance_tool_calls_total",
        "appliance_tool_duration_seconds_bucket",
        "appliance_scope_refusals_total",
        "appliance_circuit_state",
        "appliance_jobs",
        "appliance_tool_queue_depth",
        "appliance_tool_queue_capacity",
    ):
        assert metric in exprs, metric
