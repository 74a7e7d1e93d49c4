"""The Grafana dashboard's shape (its queries run against a real Prometheus: the Fleet row in
tests/fleet/test_fleet_panels.py, every other row in tests/integration/test_observability.py)."""

from __future__ import annotations

from support.dashboard import FLEET_ROW, fleet_queries, load_dashboard, standalone_queries


def test_dashboard_has_a_fixed_uid_and_a_templated_datasource() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "mcp-scanner-appliance"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue  # a row groups panels; it queries nothing
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])


def test_panel_ids_are_unique_and_the_fleet_row_is_expanded() -> None:
    panels = load_dashboard()["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    [row] = [panel for panel in panels if panel["type"] == "row"]
    assert row["title"] == FLEET_ROW
    assert row["collapsed"] is False  # its panels follow it in the list, where the tests find them


def test_dashboard_shows_what_an_operator_watches() -> None:
    exprs = " ".join(query.expr for query in standalone_queries())
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
    fleet = " ".join(query.expr for query in fleet_queries())
    for metric in (
        "appliance_fleet_connected",
        "appliance_fleet_segment_heartbeat_age_seconds",
        "appliance_fleet_segment_appliances",
        "appliance_fleet_queue_depth",
        "appliance_fleet_jobs_routed_total",
        "appliance_fleet_jobs_handled_total",
    ):
        assert metric in fleet, metric
