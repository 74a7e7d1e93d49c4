"""Where the time goes: the timing figures' values across runs, their per-stage breakdown
tables and what an unmet goal is made of (the report's text for figures 1, 2 and 2b)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.stats import across_runs

STARTUP_LABELS = {
    "interpreter": "interpreter",
    "imports": "imports",
    "settings_policy": "settings and policy",
    "transport_ready": "transport ready",
    "first_tools_list": "docker and the first answers",
}


CALL_LABELS = (
    (("stages", "dispatch_ms"), "dispatch"),
    (("stages", "stages_ms", "checks"), "checks"),
    (("stages", "stages_ms", "store"), "store"),
    (("stages", "stages_ms", "queue"), "queue"),
    (("stages", "stages_ms", "spawn"), "spawn"),
    (("stages", "stages_ms", "scanner"), "scanner"),
    (("stages", "stages_ms", "parse"), "parse"),
    (("stages", "stages_ms", "result"), "result"),
    (("stages", "serialise_ms"), "serialise"),
    (("stages", "client_parse_ms"), "client parse"),
    (("stages", "client_validation_ms"), "client validation"),
)


def get_path(data: Any, path: Sequence[str]) -> Any:
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def figure_runs(figures: dict[str, Any], figure: str) -> list[Any]:
    """A figure's runs: the timing figures keep one entry per run under "runs" (a run that
    failed is {"error": ...}); the others are one measurement, their own single run."""
    data = figures.get(figure) or {}
    runs = data.get("runs") if isinstance(data, dict) else None
    return list(runs) if isinstance(runs, list) else [data]


def run_values(figures: dict[str, Any], figure: str, *path: str) -> dict[str, Any]:
    """`path` in each of the figure's runs, with their median, min and max (stats.across_runs)."""
    values = []
    for run in figure_runs(figures, figure):
        value = get_path(run, path)
        values.append(float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None)
    return across_runs(values)


def spread(agg: dict[str, Any], digits: int = 1) -> str:
    if agg["median"] is None:
        return "?"
    text = f"{agg['median']:.{digits}f}"
    return text if agg["n"] <= 1 else f"{text} ({agg['min']:.{digits}f}-{agg['max']:.{digits}f})"


def signed(agg: dict[str, Any], digits: int = 1) -> str:
    """spread() with a "+" before a median that is not negative (an added time can be)."""
    text = spread(agg, digits)
    return text if text.startswith(("-", "?")) else f"+{text}"


def _cold(figures: dict[str, Any], *path: str, digits: int = 2) -> str:
    return spread(run_values(figures, "cold_start", *path), digits)


def _call(figures: dict[str, Any], *path: str, digits: int = 1) -> str:
    return spread(run_values(figures, "overhead", *path), digits)


def startup_made_of(figures: dict[str, Any]) -> str:
    floors = (
        f"floors: python's first output {_cold(figures, 'bare_python_first_output_s', 'median')} s, "
        f"`import appliance.cli, appliance.app` {_cold(figures, 'python_imports_s', 'median')} s"
    )
    if run_values(figures, "cold_start", "stages", "first_tools_list")["median"] is None:
        return f"start-up stages not reported by this build; {floors}"
    parts = [f"{label} {_cold(figures, 'stages', key, digits=0)}" for key, label in STARTUP_LABELS.items()]
    return " + ".join(parts) + f" ms; {floors}"


def exit_made_of(figures: dict[str, Any]) -> str:
    server = run_values(figures, "cold_start", "server_shutdown_s", "median")
    own = "not reported by this build" if server["median"] is None else f"{spread(server, 3)} s"
    parts = [f"the server's own shutdown {own}"]
    if run_values(figures, "cold_start", "exit_stages", "until_shutdown_complete_s", "median")["median"] is not None:
        until = _cold(figures, "exit_stages", "until_shutdown_complete_s", "median", digits=3)
        after = _cold(figures, "exit_stages", "after_shutdown_complete_s", "median", digits=3)
        parts.append(f'stdin closed to its "shutdown complete" line {until} s, that line to the exit {after} s')
    floor = _cold(figures, "bare_python_exit_after_eof_s", "median")
    parts.append(f"a bare python exiting on EOF in the image {floor} s")
    return "; ".join(parts)


def call_made_of(figures: dict[str, Any]) -> str:
    direct = run_values(figures, "overhead", "direct_run_ms", "median")
    if run_values(figures, "overhead", "stages", "server_sum_ms")["median"] is None:
        return (
            f"per-call stages not reported by this build; runner "
            f"{spread(run_values(figures, 'overhead', 'breakdown_median_ms', 'runner'))} ms, request path "
            f"{spread(run_values(figures, 'overhead', 'breakdown_median_ms', 'protocol_transport_and_validation'))} ms"
        )
    parts = [f"{label} {spread(run_values(figures, 'overhead', *path), 2)}" for path, label in CALL_LABELS]
    return "; ".join(parts) + f" ms (direct run {spread(direct)} ms)"


def p99_made_of(figures: dict[str, Any]) -> str:
    mcp = run_values(figures, "overhead", "mcp_call_ms", "p99")
    direct = run_values(figures, "overhead", "direct_run_ms", "p99")
    return f"p99 MCP {spread(mcp)} ms, direct {spread(direct)} ms"


def stage_tables(figures: dict[str, Any]) -> list[str]:
    """Where the time goes: start-up and per-call stages, medians of the runs (min-max), ms."""
    lines = ["Start-up, `docker run -i` to the first `tools/list` answer (ms; medians of each run's starts):", ""]
    if run_values(figures, "cold_start", "stages", "first_tools_list")["median"] is None:
        lines.append('Start-up stages: not reported by this build (no "ready" line on the server\'s stderr).')
    else:
        lines += ["| stage | ms |", "|---|---|"]
        lines += [
            f"| {label} | {spread(run_values(figures, 'cold_start', 'stages', key))} |"
            for key, label in STARTUP_LABELS.items()
        ]
        lines.append(
            f"| total (client clock) | {spread(_scaled(run_values(figures, 'cold_start', 'tools_list_s', 'median')))} |"
        )
    lines += ["", "Per call, one-port `nmap -sT` over stdio (ms; medians of each run's calls):", ""]
    if run_values(figures, "overhead", "stages", "server_sum_ms")["median"] is None:
        lines.append('Per-call stages: not reported by this build (no "call timings" lines on the server\'s stderr).')
    else:
        lines += ["| stage | ms |", "|---|---|"]
        lines += [f"| {label} | {spread(run_values(figures, 'overhead', *path), 2)} |" for path, label in CALL_LABELS]
        lines.append(
            f"| total (client clock) | {spread(run_values(figures, 'overhead', 'mcp_call_ms', 'median'), 2)} |"
        )
        lines.append(
            f"| direct run of the argv | {spread(run_values(figures, 'overhead', 'direct_run_ms', 'median'), 2)} |"
        )
    return lines


def _scaled(agg: dict[str, Any], factor: float = 1000) -> dict[str, Any]:
    return {**agg, **{k: None if agg[k] is None else agg[k] * factor for k in ("median", "min", "max")}}


def overhead_text(f: dict[str, Any]) -> str:
    def v(*path: str) -> str:
        return spread(run_values(f, "overhead", *path))

    return (
        f"MCP {v('mcp_call_ms', 'median')} ms median / {v('mcp_call_ms', 'p99')} ms p99; "
        f"direct {v('direct_run_ms', 'median')} / {v('direct_run_ms', 'p99')} ms; "
        f"**+{v('added_ms_median')} ms** at the median, p99 ratio **x{_call(f, 'ratio_p99', digits=2)}** "
        f"(runner {v('breakdown_median_ms', 'runner')} ms, MCP request path "
        f"{v('breakdown_median_ms', 'protocol_transport_and_validation')} ms; a `dry_run` call takes "
        f"{v('breakdown_median_ms', 'dry_run_call')} ms, a bare `docker run -i` stdio round trip "
        f"{v('breakdown_median_ms', 'docker_stdio_round_trip')} ms)"
    )


def cold_text(f: dict[str, Any]) -> str:
    def v(key: str) -> str:
        return spread(run_values(f, "cold_start", key, "median"), 2)

    return (
        f"**{v('tools_list_s')} s** (`initialize` answered after {v('initialize_s')} s); floors in the image: "
        f"`python -c pass` to exit {v('bare_python_s')} s, python's first output {v('bare_python_first_output_s')} s, "
        f"`import appliance.cli, appliance.app` {v('python_imports_s')} s"
    )


def exit_text(f: dict[str, Any]) -> str:
    return f"**{_cold(f, 'exit_s', 'median')} s**: {exit_made_of(f)}"
