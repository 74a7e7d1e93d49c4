"""The dashboard's Fleet row and the fleet alert rules against a real Prometheus (the host's
Debian binary, on 127.0.0.1 in the unit suite's namespace) scraping real `appliance serve --role
front` and `--role segment` sidecars on a nats-server of the test's own: every Fleet panel query
returns a series, with the values the fleet has (a renamed `appliance_fleet_*` metric breaks
this test; the other rows run against compose's Prometheus in tests/integration)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from support.dashboard import FLEET_ROW, fleet_queries, panel_queries
from support.fleet import served_front, served_segment
from support.listeners import tcp_listener
from support.nats import NatsServer
from support.prometheus import RULES, Prometheus, prometheus
from support.servers import Served, http_client
from support.waiting import eventually

pytestmark = pytest.mark.anyio

# Segments advertise at start; a front sees them on its next view of the bucket.
SEGMENT_SEEN_SECONDS = 20
# Scrapes and evaluations every second: a series, a rate and a rule's health within a few.
SERIES_SECONDS = 30
FLEET_GROUP = "mcp-scanner-appliance-fleet"


def by_panel(title: str) -> str:
    [expr] = [query.expr for query in fleet_queries() if query.title == title]
    return expr


def values(prom: Prometheus, expr: str, label: str) -> dict[str, float]:
    return {series["metric"].get(label, ""): float(series["value"][1]) for series in prom.instant(expr)}


def fleet_series_the_rules_read() -> set[str]:
    names: set[str] = set()
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            names |= set(re.findall(r"\bappliance_fleet_[a-z_]+\b", rule["expr"]))
    return names


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess[bytes]:
    path = shutil.which("promtool")
    assert path is not None, "promtool is missing: scripts/install-checkers installs Debian's prometheus package"
    return subprocess.run([path, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60, check=False)


async def scan(front: Served, port: int) -> dict[str, Any]:
    async with http_client(front.url, "2026-07-28") as client:
        result = await client.call_tool("nmap_scan", {"target": "127.0.0.1", "ports": str(port), "wait_seconds": 60})
    assert not result.is_error, result.structured_content
    assert result.structured_content is not None
    return result.structured_content


def test_the_fleet_row_holds_the_fleet_panels_and_only_they_read_fleet_series() -> None:
    queries = panel_queries()
    fleet = [query for query in queries if query.row == FLEET_ROW]
    assert {query.title for query in fleet} >= {
        "NATS connected",
        "Segments seen",
        "Segment heartbeat age",
        "Appliances per segment",
        "Queue depth per segment",
        "Jobs routed per segment",
        "Segment deliveries by outcome",
    }
    # The split the two Prometheus tests rely on: a fleet series outside the row would be run
    # against a standalone appliance (no series), a standalone one inside it never checked.
    for query in queries:
        assert ("appliance_fleet_" in query.expr) == (query.row == FLEET_ROW), query


async def test_every_fleet_panel_query_returns_series_from_a_real_prometheus(
    tmp_path: Path, own_nats: NatsServer
) -> None:
    with (
        tcp_listener() as port,
        served_segment(tmp_path, own_nats.url, "seg-a", "seg-a-1") as segment,
        served_front(tmp_path, own_nats.url) as front,
    ):
        await eventually(
            lambda: front.get("/healthz")[1]["checks"]["fleet"].get("segments"),
            within=SEGMENT_SEEN_SECONDS,
            what="the front sees seg-a",
        )
        # What Prometheus will scrape is valid exposition, and holds every fleet series a rule reads.
        scrapes = {"front": front.metrics(), "segment": segment.metrics()}
        for role, text in scrapes.items():
            checked = promtool_check_metrics(text)
            assert checked.returncode == 0, (role, checked.stdout.decode() + checked.stderr.decode())
        # Sample names (a counter's carry `_total`, which is what a rule reads).
        exported = {
            sample.name
            for text in scrapes.values()
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        assert fleet_series_the_rules_read() - exported == set()

        instances = {f"127.0.0.1:{front.health_port}": "front", f"127.0.0.1:{segment.health_port}": "segment"}
        with prometheus(tmp_path / "prometheus", list(instances)) as prom:
            await eventually(lambda: len(prom.targets_up()) == 2, within=SERIES_SECONDS, what="both targets up")
            # The delivery counters exist from the segment's start: Prometheus has them at 0
            # before the first job, so the rate panel sees the jobs' increase.
            await eventually(
                lambda: prom.instant("appliance_fleet_jobs_handled_total"), within=SERIES_SECONDS, what="handled"
            )
            first = await scan(front, port)
            # The routed counter appears with the first job (at 1): a second job, scraped after
            # it, is the increase the rate panel shows.
            await eventually(
                lambda: prom.instant("appliance_fleet_jobs_routed_total"), within=SERIES_SECONDS, what="routed"
            )
            second = await scan(front, port)
            pending = {(query.title, query.expr) for query in fleet_queries()}

            def all_answered() -> bool:
                for title, expr in sorted(pending):
                    if prom.instant(expr):
                        pending.discard((title, expr))
                return not pending

            try:
                await eventually(all_answered, within=SERIES_SECONDS, interval=0.5, what="a series per Fleet panel")
            except AssertionError as exc:
                raise AssertionError(f"Fleet panel queries without a series: {sorted(pending)}") from exc

            def routed_and_started() -> tuple[dict[str, float], dict[str, float]] | None:
                routed = values(prom, by_panel("Jobs routed per segment"), "segment")
                handled = values(prom, by_panel("Segment deliveries by outcome"), "outcome")
                positive = routed.get("seg-a", 0) > 0 and handled.get("started", 0) > 0
                return (routed, handled) if positive else None

            routed, handled = await eventually(routed_and_started, within=SERIES_SECONDS, what="the jobs' rates")

            def rules_evaluated() -> list[dict[str, Any]] | None:
                groups = prom.api("rules")["groups"]
                rules = [rule for group in groups for rule in group["rules"]]
                return rules if rules and all(rule["health"] == "ok" for rule in rules) else None

            rules = await eventually(rules_evaluated, within=SERIES_SECONDS, what="every rule evaluated")
            groups = {group["name"] for group in prom.api("rules")["groups"]}
            connected = values(prom, by_panel("NATS connected"), "instance")
            seen = values(prom, by_panel("Segments seen"), "instance")
            age = values(prom, by_panel("Segment heartbeat age"), "segment")
            appliances = values(prom, by_panel("Appliances per segment"), "segment")

            # The ack follows the job's final record, so the answer may come a scrape before it.
            def queue_empty() -> dict[str, float] | None:
                depth = values(prom, by_panel("Queue depth per segment"), "segment")
                return depth if depth == {"seg-a": 0.0} else None

            depth = await eventually(queue_empty, within=SERIES_SECONDS, what="seg-a's queue empty")
            alerts = prom.api("alerts")["alerts"]
    assert first["status"] == second["status"] == "completed"
    assert [(p["port"], p["state"]) for p in second["hosts"][0]["ports"]] == [(port, "open")]
    # Both roles answer for themselves: connected, each seeing the one segment.
    assert connected == dict.fromkeys(instances, 1.0)
    assert seen == dict.fromkeys(instances, 1.0)
    assert set(age) == {"seg-a"}
    assert 0 <= age["seg-a"] < 30
    assert appliances == {"seg-a": 1.0}
    assert depth == {"seg-a": 0.0}  # both jobs acked (the queue panel follows the queue)
    assert set(routed) == {"seg-a"}
    assert {"received", "started", "refused"} <= set(handled)
    # The fleet rules load and evaluate on the real series; none fires on a healthy fleet.
    assert FLEET_GROUP in groups
    assert {rule["name"] for rule in rules} >= {
        "ApplianceFleetDisconnected",
        "ApplianceFleetSegmentStale",
        "ApplianceFleetJobsStranded",
    }
    assert [alert for alert in alerts if alert["labels"]["alertname"].startswith("ApplianceFleet")] == []
