"""The Grafana dashboard's panel queries, by row, with Grafana's variables substituted: what the
tests run against a real Prometheus (the Fleet row against the host's, with fleet roles:
tests/fleet/test_fleet_panels.py; every other row against compose's, with a standalone appliance:
tests/integration/test_observability.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from support.policies import REPO

DASHBOARD = REPO / "observability" / "grafana" / "appliance-dashboard.json"
FLEET_ROW = "Fleet"
# Grafana's variables as the dashboard's "All" instance and a scrape-friendly rate window.
GRAFANA_VARIABLES = {"$instance": ".+", "$__rate_interval": "1m"}


@dataclass(frozen=True)
class PanelQuery:
    row: str | None  # the row panel above it; None before the first row
    title: str
    expr: str


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panel_queries() -> list[PanelQuery]:
    """Every target of every panel, in order; a panel belongs to the last row panel before it
    (Grafana's layout of an expanded row: its panels follow it in the list)."""
    queries: list[PanelQuery] = []
    row: str | None = None
    for panel in load_dashboard()["panels"]:
        if panel["type"] == "row":
            assert not panel.get("panels"), f"row {panel['title']} is collapsed: its panels would hide from the tests"
            row = panel["title"]
            continue
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            queries.append(PanelQuery(row, panel["title"], expr))
    return queries


def fleet_queries() -> list[PanelQuery]:
    return [query for query in panel_queries() if query.row == FLEET_ROW]


def standalone_queries() -> list[PanelQuery]:
    """Every panel a standalone appliance fills: all but the Fleet row (its series exist on fleet roles only)."""
    return [query for query in panel_queries() if query.row != FLEET_ROW]
