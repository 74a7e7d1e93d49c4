"""The benchmark's reading of the appliance's own timings (its JSON log lines on stderr) and the
breakdowns built on them, on fixture lines in the format the interfaces fix (bench/stages.py).

No timing is measured here: the inputs are fixed numbers, the outputs their medians and sums.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from bench import stages


def _line(message: str, **fields: Any) -> str:
    """A record as the appliance's JsonFormatter writes it (appliance/logs.py)."""
    record = {"time": "2026-12-02 07:03:16,123", "level": "INFO", "logger": "appliance.app", "message": message}
    return json.dumps({**record, "request_id": None, **fields})


READY = _line(
    "ready",
    startup_ms={"interpreter": 40.0, "imports": 610.5, "settings_policy": 35.2, "transport_ready": 4.3},
    transport="stdio",
    deferred=["job_store", "metrics", "sidecar"],
)


def _timings(request_id: str, **timings: float) -> str:
    return _line(
        "call timings",
        request_id=request_id,
        scan_id=f"scan_{request_id}",
        tool="nmap_scan",
        outcome="completed",
        timings_ms=timings,
    )


def test_log_records_skip_lines_that_are_not_json_objects() -> None:
    text = "\n".join(["docker: some engine message", "[1, 2]", "{not json", READY, ""])

    assert [r["message"] for r in stages.log_records(text)] == ["ready"]


def test_ready_stages_reads_the_four_stages_transport_and_deferred_work() -> None:
    text = "\n".join([_line("policy loaded"), READY, _line("ready")])  # a later "ready" without stages: not it

    ready = stages.ready_stages(text)

    assert ready == {
        "startup_ms": {"interpreter": 40.0, "imports": 610.5, "settings_policy": 35.2, "transport_ready": 4.3},
        "transport": "stdio",
        "deferred": ["job_store", "metrics", "sidecar"],
    }


def test_ready_stages_keep_only_the_stages_a_mode_has_and_ignore_unknown_keys() -> None:
    text = _line("ready", startup_ms={"interpreter": 40, "imports": 600, "surprise": 1, "transport_ready": "x"})

    ready = stages.ready_stages(text)

    assert ready is not None
    assert ready["startup_ms"] == {"interpreter": 40.0, "imports": 600.0}
    assert ready["deferred"] == []


def test_a_build_without_the_lines_reports_nothing() -> None:
    text = "\n".join([_line("policy loaded"), _line("stdin closed: shutting down")])

    assert stages.ready_stages(text) is None
    assert stages.call_timings(text) == {}
    assert stages.shutdown_seconds(text) is None
    assert stages.shutdown_logged_at(text) is None


def test_call_timings_are_keyed_by_request_id() -> None:
    text = "\n".join(
        [
            _timings("r1", checks=0.5, store=0.8, queue=0.0, spawn=1.2, scanner=50.0, parse=0.4, result=0.3),
            _line("scan finished", request_id="r1"),
            _timings("r2", checks=0.6, spawn=1.0, scanner=52.0),
        ]
    )

    timings = stages.call_timings(text)

    assert set(timings) == {"r1", "r2"}
    assert timings["r1"]["scanner"] == 50.0 and len(timings["r1"]) == 7
    assert timings["r2"] == {"checks": 0.6, "spawn": 1.0, "scanner": 52.0}


def test_shutdown_seconds_and_when_the_line_was_written() -> None:
    text = _line("shutdown complete", seconds=0.012)

    assert stages.shutdown_seconds(text) == 0.012
    expected = datetime.datetime(2026, 12, 2, 7, 3, 16, 123000, tzinfo=datetime.UTC).timestamp()
    assert stages.shutdown_logged_at(text) == pytest.approx(expected)


def test_exit_breakdown_splits_the_exit_at_the_shutdown_line() -> None:
    split = stages.exit_breakdown(closed_at=100.0, exited_at=100.9, logged_at=100.1)

    assert split == {"until_shutdown_complete_s": 0.1, "after_shutdown_complete_s": 0.8}


@pytest.mark.parametrize("logged_at", [None, 99.0, 102.0])
def test_exit_breakdown_refuses_a_line_outside_the_exit(logged_at: float | None) -> None:
    # Before stdin was closed or after the exit: a container clock in another zone, not a split.
    assert stages.exit_breakdown(closed_at=100.0, exited_at=100.9, logged_at=logged_at) is None


def test_startup_breakdown_takes_medians_and_leaves_the_rest_to_docker_and_the_answers() -> None:
    def ready(interpreter: float, imports: float) -> dict[str, Any]:
        startup = {"interpreter": interpreter, "imports": imports, "settings_policy": 30.0, "transport_ready": 5.0}
        return {"startup_ms": startup, "transport": "stdio", "deferred": ["sidecar"]}

    client_ms = [1000.0, 1100.0, 900.0, 5000.0]
    lines = [ready(40.0, 600.0), ready(50.0, 700.0), ready(30.0, 500.0), None]  # the last start wrote none

    out = stages.startup_breakdown(client_ms, lines)

    assert out["reported"] is True and out["starts"] == 3
    assert (out["interpreter"], out["imports"], out["settings_policy"], out["transport_ready"]) == (40, 600, 30, 5)
    # Per start: 1000-675, 1100-785, 900-565 = 325, 315, 335 -> median 325.
    assert out["first_tools_list"] == 325.0
    assert out["deferred"] == ["sidecar"]


def test_startup_breakdown_without_ready_lines_is_not_reported() -> None:
    assert stages.startup_breakdown([1000.0, 1200.0], [None, None]) == {"reported": False}


def test_call_breakdown_matches_calls_by_request_id_and_dispatch_is_what_is_left() -> None:
    timings = {
        "a": {"checks": 1.0, "spawn": 2.0, "scanner": 50.0, "parse": 1.0},
        "b": {"checks": 1.2, "spawn": 2.2, "scanner": 60.0, "parse": 1.1},
        "c": {"checks": 0.8, "spawn": 1.8, "scanner": 40.0, "parse": 0.9},
        "warm-up": {"checks": 9.0, "spawn": 9.0, "scanner": 99.0, "parse": 9.0},  # no client time: left out
    }
    client_ms = {"a": 60.0, "b": 70.0, "c": 48.0, "refused": 3.0}  # "refused": no timings line
    sdk = {"serialise_ms": 0.5, "client_parse_ms": 0.25, "client_validation_ms": 0.25}

    out = stages.call_breakdown(client_ms, timings, sdk)

    assert out["reported"] is True and out["calls_matched"] == 3
    assert out["stages_ms"]["checks"] == 1.0 and out["stages_ms"]["scanner"] == 50.0
    assert out["stages_ms"]["store"] is None  # not in these lines
    assert out["server_sum_ms"] == 54.0  # sums 54, 64.5, 43.5
    # Per call: 60-54-1 = 5, 70-64.5-1 = 4.5, 48-43.5-1 = 3.5 -> median 4.5.
    assert out["dispatch_ms"] == 4.5
    assert out["serialise_ms"] == 0.5


def test_call_breakdown_keeps_an_unmeasured_sdk_step_inside_dispatch() -> None:
    out = stages.call_breakdown({"a": 10.0}, {"a": {"scanner": 8.0}}, {"serialise_ms": None})

    assert out["dispatch_ms"] == 2.0
    assert out["client_validation_ms"] is None


def test_call_breakdown_without_timings_lines_is_not_reported() -> None:
    assert stages.call_breakdown({"a": 10.0}, {}, {}) == {"reported": False, "calls_matched": 0}
