"""The benchmark's results dict (bench/__main__.py's shape) around given figures, for tests of
the report's rows; fixed numbers, nothing measured."""

from __future__ import annotations

from typing import Any

from bench.__main__ import QUICK, Sizes
from bench.report import Goal, goals


def bench_results(figures: dict[str, Any], extra_goals: tuple[Goal, ...] = (), sizes: Sizes = QUICK) -> dict[str, Any]:
    return {
        "figures": figures,
        "parameters": sizes.__dict__,
        "goals": goals(figures, extra_goals),
        "mode": "quick" if sizes == QUICK else "full",
    }
