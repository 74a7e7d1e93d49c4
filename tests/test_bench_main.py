"""The benchmark's run plan (bench/__main__.py) without Docker: which figures each timing run
measures, the seam for added figure providers, and how failures and unexpected errors count
over runs."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import bench.__main__ as main
from bench.__main__ import QUICK, Provider, Sizes
from bench.lab import Lab


def test_each_timing_run_measures_overhead_cold_start_and_every_timed_provider(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[Any, Sizes, int]] = []

    async def host(lab: Lab, sizes: Sizes, run: int) -> dict[str, Any]:
        calls.append((lab, sizes, run))
        return {"added_s": 0.1}

    async def once(lab: Lab, sizes: Sizes, run: int) -> dict[str, Any]:
        return {}

    monkeypatch.setattr(main, "EXTRA_FIGURES", [Provider("host", host), Provider("peers", once, timed=False)])
    lab = object()

    timing = main._timing_figures(lab, QUICK)  # type: ignore[arg-type]

    assert list(timing) == ["overhead", "cold_start", "host"]
    assert anyio.run(timing["host"], 2) == {"added_s": 0.1}
    assert calls == [(lab, QUICK, 2)]


def test_a_figure_failed_when_it_or_one_of_its_runs_has_an_error() -> None:
    assert main._failed({"error": "x"})
    assert main._failed({"runs": [{"added_ms_median": 4.0}, {"error": "x"}]})
    assert not main._failed({"runs": [{"added_ms_median": 4.0}]})
    assert not main._failed({"size_bytes": 1})


def test_unexpected_errors_add_up_over_runs() -> None:
    assert main._unexpected({"runs": [{"unexpected_errors": 1}, {"unexpected_errors": 2}, {"error": "x"}]}) == 3
    assert main._unexpected({"unexpected_errors": 4}) == 4
