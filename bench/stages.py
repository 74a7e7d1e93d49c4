"""Where the time goes: the appliance's own stage timings from its JSON log lines, and the
breakdowns the benchmark builds from them and its client-side clocks.

The appliance writes (on stderr, one JSON object per line, `message` the key):
- "ready": once, when the transport can read its first message; `startup_ms` holds the
  start-up stages in milliseconds (interpreter, imports, settings_policy, transport_ready);
- "call timings": once per admitted call (one that became a job), `timings_ms` holds the call's
  server-side stages (checks, store, queue, spawn, scanner, parse, result), with `request_id`;
- "shutdown complete": once, `seconds` from the start of the shutdown to its end.

A build that writes none of them gives None here, and the report says "not reported by this
build": the client-side figures stand on their own.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from bench.stats import percentile

READY = "ready"
CALL_TIMINGS = "call timings"
SHUTDOWN_COMPLETE = "shutdown complete"
STARTUP_STAGES = ("interpreter", "imports", "settings_policy", "transport_ready")
LOG_TIME_FORMAT = "%Y-%m-%d %H:%M:%S,%f"  # logging's asctime: "2026-12-02 07:03:16,123"
LOG_TIME_RESOLUTION = 0.001
CALL_STAGES = ("checks", "store", "queue", "spawn", "scanner", "parse", "result")


def log_records(text: str) -> Iterator[dict[str, Any]]:
    """Every JSON object line of a server's stderr; other lines (docker's own messages, a
    traceback) are not the appliance's log records and are skipped."""
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


def _numbers(data: Any, keys: Sequence[str]) -> dict[str, float]:
    """The keys of `data` that hold numbers, in the order of `keys` (unknown keys ignored)."""
    if not isinstance(data, Mapping):
        return {}
    out: dict[str, float] = {}
    for key in keys:
        value = data.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def ready_stages(text: str) -> dict[str, Any] | None:
    """The first "ready" record's start-up stages (ms), transport and deferred work; None when
    the build writes no such line."""
    for record in log_records(text):
        if record.get("message") == READY and isinstance(record.get("startup_ms"), Mapping):
            return {
                "startup_ms": _numbers(record["startup_ms"], STARTUP_STAGES),
                "transport": record.get("transport"),
                "deferred": list(record.get("deferred") or []),
            }
    return None


def call_timings(text: str) -> dict[str, dict[str, float]]:
    """Each "call timings" record's stages (ms), by request id (a later duplicate wins)."""
    out: dict[str, dict[str, float]] = {}
    for record in log_records(text):
        if record.get("message") == CALL_TIMINGS and isinstance(record.get("request_id"), str):
            out[record["request_id"]] = _numbers(record.get("timings_ms"), CALL_STAGES)
    return out


def shutdown_seconds(text: str) -> float | None:
    """The server's own shutdown duration from its "shutdown complete" record, if any."""
    record = _shutdown_record(text)
    value = None if record is None else record.get("seconds")
    return float(value) if isinstance(value, int | float) else None


def shutdown_logged_at(text: str) -> float | None:
    """When the "shutdown complete" record was written (epoch seconds), from its `time` field:
    the logging module's asctime, ms resolution, the container's local time (UTC in the image).
    The container shares the host's clock, so this splits the client's exit figure in two."""
    record = _shutdown_record(text)
    stamp = None if record is None else record.get("time")
    if not isinstance(stamp, str):
        return None
    try:
        moment = datetime.datetime.strptime(stamp, LOG_TIME_FORMAT).replace(tzinfo=datetime.UTC)
    except ValueError:
        return None
    return moment.timestamp()


def _shutdown_record(text: str) -> dict[str, Any] | None:
    return next((r for r in log_records(text) if r.get("message") == SHUTDOWN_COMPLETE), None)


def exit_breakdown(closed_at: float, exited_at: float, logged_at: float | None) -> dict[str, float] | None:
    """Seconds from closing stdin to the "shutdown complete" line (the server seeing EOF and
    shutting down) and from that line to `docker run -i` exiting (the rest of the process's
    teardown, the interpreter's exit, the container's removal from the engine's view); None when
    the line's time is missing or not between the two (a container clock not in UTC)."""
    if logged_at is None or not closed_at - LOG_TIME_RESOLUTION <= logged_at <= exited_at + LOG_TIME_RESOLUTION:
        return None
    return {
        "until_shutdown_complete_s": round(max(logged_at - closed_at, 0.0), 3),
        "after_shutdown_complete_s": round(max(exited_at - logged_at, 0.0), 3),
    }


def _median(values: Sequence[float]) -> float:
    return round(percentile(values, 50), 3)


def startup_breakdown(client_ms: Sequence[float], ready: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """Medians over a run's starts of each start-up stage, and of the client's time to the
    `tools/list` answer minus the four server stages (`first_tools_list`: the container's
    creation and attach by docker, then initialize, initialized and tools/list on the wire).

    `client_ms[i]` and `ready[i]` are one start; starts without a ready line are left out.
    """
    starts = [(ms, r["startup_ms"]) for ms, r in zip(client_ms, ready, strict=True) if r is not None]
    if not starts:
        return {"reported": False}
    out: dict[str, Any] = {"reported": True, "starts": len(starts)}
    for stage in STARTUP_STAGES:
        values = [stages[stage] for _, stages in starts if stage in stages]
        out[stage] = _median(values) if values else None
    out["first_tools_list"] = _median([ms - sum(stages.values()) for ms, stages in starts])
    first = next(r for r in ready if r is not None)
    out["transport"] = first["transport"]
    out["deferred"] = first["deferred"]
    return out


SDK_STEPS = ("serialise_ms", "client_parse_ms", "client_validation_ms")


def call_breakdown(
    client_ms: Mapping[str, float],
    timings: Mapping[str, Mapping[str, float]],
    sdk: Mapping[str, float | None],
) -> dict[str, Any]:
    """Medians over a run's calls of each server stage, of their sum, and of `dispatch`: the
    client's time minus the server's stages and the SDK steps measured in-process (`sdk`:
    serialise, client parse, client validation, from bench/sdkcost.py). What is left is the
    JSON-RPC framing and JSON text on both sides, the SDK's dispatch, the appliance's MCP
    boundary around the service call (request model, the result's text) and docker's attach
    stream both ways.

    `client_ms` and `timings` are keyed by request id; calls missing from either are left out.
    An SDK step that was not measured (None) stays inside dispatch.
    """
    ids = [rid for rid in client_ms if rid in timings]
    if not ids:
        return {"reported": False, "calls_matched": 0}
    steps = {key: sdk.get(key) for key in SDK_STEPS}
    measured = sum(v for v in steps.values() if v is not None)
    out: dict[str, Any] = {"reported": True, "calls_matched": len(ids)}
    stages: dict[str, float | None] = {}
    for stage in CALL_STAGES:
        values = [timings[rid][stage] for rid in ids if stage in timings[rid]]
        stages[stage] = _median(values) if values else None
    out["stages_ms"] = stages
    out["server_sum_ms"] = _median([sum(timings[rid].values()) for rid in ids])
    out.update(steps)
    out["dispatch_ms"] = _median([client_ms[rid] - sum(timings[rid].values()) - measured for rid in ids])
    return out
