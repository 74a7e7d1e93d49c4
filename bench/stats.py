"""Summaries of timing samples: nearest-rank percentiles, in milliseconds or seconds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MB = 1_000_000  # every size in the report is in decimal megabytes, as `docker images` prints them


def mb(value: float) -> str:
    return f"{value / MB:.1f} MB"


def percentile(samples: Sequence[float], p: float) -> float:
    """The nearest-rank p-th percentile (p in (0, 100]): a value that was actually observed.

    With fewer than 100 samples the 99th percentile is the maximum; the JSON keeps the sample
    count beside it so that a reader can tell.
    """
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(math.ceil(p / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, float | int]:
    """Median, p99, min and max of samples given in seconds, as milliseconds (3 decimals)."""
    return {
        "n": len(seconds),
        "median": round(percentile(seconds, 50) * 1000, 3),
        "p99": round(percentile(seconds, 99) * 1000, 3),
        "min": round(min(seconds) * 1000, 3),
        "max": round(max(seconds) * 1000, 3),
    }


def summary_s(seconds: Sequence[float]) -> dict[str, float | int]:
    """Median, min and max of samples in seconds (3 decimals)."""
    return {
        "n": len(seconds),
        "median": round(percentile(seconds, 50), 3),
        "min": round(min(seconds), 3),
        "max": round(max(seconds), 3),
    }


def across_runs(values: Sequence[float | None]) -> dict[str, Any]:
    """One figure measured in several runs: every run's value, their median, min and max.

    A run that could not measure it (None) makes the median None too: a figure counts only
    when every run has it. With an even count the median is the lower middle (an observed run).
    """
    runs = list(values)
    measured = [v for v in runs if v is not None]
    if not runs or len(measured) != len(runs):
        return {"runs": runs, "n": len(runs), "median": None, "min": None, "max": None}
    median = percentile(measured, 50)
    return {"runs": runs, "n": len(runs), "median": median, "min": min(measured), "max": max(measured)}
