"""What a fleet appliance shows: `/healthz` `checks.fleet` and the `appliance_fleet_*` metrics,
both from one reading of the bus taken when asked (README "Fleet", Metrics)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.errors import ApplianceError
from appliance.fleet.front import FrontFleet
from appliance.fleet.roles import FleetParts
from appliance.fleet.worker import SegmentWorker


@dataclass
class FleetObserver:
    """One fleet appliance's view of the fleet: its link, the segments it sees, what it did."""

    parts: FleetParts
    role: str
    appliance_id: str
    worker: SegmentWorker | None = None
    front: FrontFleet | None = None
    clock: Callable[[], float] = time.time

    def status(self) -> dict[str, Any]:
        parts = self.parts
        status: dict[str, Any] = {
            "role": self.role,
            "appliance_id": self.appliance_id,
            "servers": parts.bus.settings.redacted_servers(),
            "connected": parts.bus.connected,
            "untrusted_records": parts.store.untrusted,
        }
        if self.worker is not None:
            status["segment"] = self.worker.segment
            status["jobs"] = vars(self.worker.counts)
            status["seal_keys"] = sorted(self.worker.seals.keys)  # the fronts' keys it accepts (rotation)
        if parts.drift:
            status["settings_drift"] = parts.drift  # streams that kept other settings (FleetParts.read_drift)
        if self.front is not None:
            status["routed"] = dict(self.front.routed)
            status["seal_key"] = self.front.sealer.key_id  # the key it seals admissions with
        try:
            view = parts.registry.view()
            now = self.clock()
            status["segments"] = {
                scope.name: {
                    "scope": scope.describe(),
                    "appliances": view.appliances.get(scope.name, 0),
                    "heartbeat_age_seconds": round(max(now - scope.heartbeat_at, 0.0), 1),
                    "queued": parts.queue.depth(scope.name),
                }
                for scope in view.segments
            }
            # Jobs waiting for a segment no appliance advertises (all of them stopped, or withdrew):
            # nothing will run them until one is back (the ApplianceFleetJobsStranded alert).
            status["unadvertised"] = {
                segment: count
                for segment, count in sorted(parts.queue.waiting().items())
                if count and segment not in status["segments"]
            }
            status["disagreements"] = list(view.disagreements)
            status["skipped_advertisements"] = view.skipped
        except ApplianceError as exc:
            status["problem"] = exc.message
        return status


class FleetCollector(Collector):
    """`appliance_fleet_*`, read from `status()` when scraped (a lost bus shows as connected 0 and
    no segment series, never as stale numbers)."""

    def __init__(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        yield GaugeMetricFamily(
            "appliance_fleet_connected",
            "1 while this appliance's NATS connection is up.",
            value=float(status["connected"]),
        )
        segments: Mapping[str, Mapping[str, Any]] = status.get("segments", {})
        families = {
            "heartbeat_age_seconds": GaugeMetricFamily(
                "appliance_fleet_segment_heartbeat_age_seconds",
                "Seconds since the segment's freshest advertisement.",
                labels=["segment"],
            ),
            "appliances": GaugeMetricFamily(
                "appliance_fleet_segment_appliances", "Appliances advertising the segment.", labels=["segment"]
            ),
            "queued": GaugeMetricFamily(
                "appliance_fleet_queue_depth",
                "Jobs of the segment queued or delivered and not yet acked.",
                labels=["segment"],
            ),
        }
        for name, seen in sorted(segments.items()):
            for key, family in families.items():
                family.add_metric([name], float(seen[key]))
        for name, count in sorted(status.get("unadvertised", {}).items()):
            families["appliances"].add_metric([name], 0.0)  # no heartbeat to show: none advertises it
            families["queued"].add_metric([name], float(count))
        yield from families.values()
        routed = CounterMetricFamily(
            "appliance_fleet_jobs_routed", "Jobs this front handed to each segment.", labels=["segment"]
        )
        for name, count in sorted(status.get("routed", {}).items()):
            routed.add_metric([name], count)
        yield routed
        handled = CounterMetricFamily(
            "appliance_fleet_jobs_handled",
            "Job deliveries this segment appliance handled, by what it did (redelivered: a takeover attempt).",
            labels=["outcome"],
        )
        for outcome, count in sorted(status.get("jobs", {}).items()):
            handled.add_metric([outcome], count)
        yield handled
        yield CounterMetricFamily(
            "appliance_fleet_untrusted_records",
            "Job records and raw outputs this appliance refused to believe (no front and no appliance of the "
            "job's own segment wrote them as they are), whoever read them.",
            value=float(status.get("untrusted_records", 0)),
        )
