"""bench/host.py and bench/host_compare.py: the host goal's arithmetic, the comparison's row, how
a result counts, and one real comparison of the appliance with the bare SDK server, tiny sizes,
in this suite's empty network namespace (no timing is asserted: only that it was measured)."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp_types import CallToolResult, TextContent
from support.bench_results import bench_results

import bench.__main__ as main
from bench import fleet, host, host_compare, mcp1, notes, peers
from bench.host_servers import APPLIANCE, BARE, PORT, ServerSpec, appliance, bare
from bench.lab import REPO

FUZZING = "fuzzinglabs-nmap-mcp"


def _server(tools_list: float, added: float = 9.0) -> dict[str, Any]:
    return {
        "cold_start": {
            "initialize_s": {"median": tools_list - 0.01},
            "tools_list_s": {"median": tools_list},
            "exit_s": {"median": 0.2},
        },
        "per_call": {"added_ms_median": added, "mcp_call_ms": {"p99": 60.0}, "direct_run_ms": {"p99": 50.0}},
    }


def _run(appliance_s: float, bare_s: float, **more: Any) -> dict[str, Any]:
    return {
        "order": [APPLIANCE, BARE, *more.get("peers", {})],
        "starts": 10,
        "servers": {APPLIANCE: _server(appliance_s), BARE: _server(bare_s), **more.get("peers", {})},
        "tools_list_minus_bare_s": round(appliance_s - bare_s, 3),
        "skipped": more.get("skipped", []),
    }


def _host_goal(results: dict[str, Any]) -> dict[str, Any]:
    return next(g for g in results["goals"] if g["goal"] == host.GOAL_NAME)


def test_the_host_goal_is_met_only_when_every_run_is_within_0_15_s_of_the_bare_server() -> None:
    met = bench_results({"host": {"runs": [_run(0.90, 0.80), _run(0.95, 0.81)]}}, (host.GOAL,))
    missed = bench_results({"host": {"runs": [_run(0.90, 0.80), _run(1.00, 0.80)]}}, (host.GOAL,))
    assert _host_goal(met)["met"] is True
    assert _host_goal(met)["runs"] == [0.1, 0.14]
    assert _host_goal(missed)["met"] is False
    assert "appliance 0.90 (0.90-1.00) s, bare SDK server 0.80 (0.80-0.80) s" in _host_goal(missed)["made_of"]


def test_a_failed_host_run_leaves_the_host_goal_unmeasured() -> None:
    results = bench_results({"host": {"runs": [_run(0.9, 0.8), {"error": "unshare failed"}]}}, (host.GOAL,))
    assert _host_goal(results)["met"] is None
    assert "not measured: run 2: unshare failed" in host.row(results)


def test_the_benchmark_adds_the_host_1x_client_and_fleet_goals_and_every_row() -> None:
    providers = main.extra_figures()
    assert [p.key for p in providers] == ["host", "mcp1_client", fleet.FIGURE, fleet.STORE_FIGURE]
    assert all(p.row is not None for p in providers)
    assert all(p.timed for p in providers[:3])
    assert [g.name for p in providers for g in p.goals] == [host.GOAL_NAME, mcp1.GOAL_NAME, fleet.GOAL_NAME]


def test_the_host_row_shows_the_difference_every_server_and_the_skipped_peers() -> None:
    peer = {FUZZING: _server(0.7, added=13.5)}
    skipped = ["mohdhaji87-nmap-mcp-server: no checkout at /x (see scripts/setup-bench-peers)"]
    results = bench_results({"host": {"runs": [_run(0.9, 0.8, peers=peer, skipped=skipped)]}}, (host.GOAL,))
    row = host.row(results)
    assert row.startswith("| 7 | host, empty network namespace")
    assert "appliance minus bare server to `tools/list`: **+0.10 s**" in row
    assert f"{APPLIANCE}: `initialize` 0.89 s, `tools/list` 0.90 s, exit 0.20 s, +9.0 ms per call" in row
    assert f"{FUZZING}: `initialize` 0.69 s, `tools/list` 0.70 s, exit 0.20 s, +13.5 ms per call" in row
    assert f"skipped {skipped[0]}" in row
    assert row.endswith("| <= 0.15 s (appliance minus bare) | yes |")


def test_a_peer_that_broke_is_shown_with_its_error_and_costs_no_other_server() -> None:
    broken = {FUZZING: {"cold_start": {"error": "no tools/list answer within 60 s"}, "per_call": {}}}
    results = bench_results({"host": {"runs": [_run(0.9, 0.8, peers=broken)]}}, (host.GOAL,))
    row = host.row(results)
    assert f"{FUZZING}: not measured: no tools/list answer within 60 s" in row
    assert f"{APPLIANCE}: `initialize`" in row


def test_the_difference_to_the_bare_server_needs_both_servers() -> None:
    figures = {APPLIANCE: _server(0.9), BARE: _server(0.7)}
    assert host_compare._minus(figures, "cold_start", "tools_list_s", "median") == 0.2
    assert host_compare._minus({APPLIANCE: _server(0.9)}, "cold_start", "tools_list_s", "median") is None


def _text(text: str, error: bool = False) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=error)


def test_a_peers_result_counts_only_when_its_text_reports_the_port_open() -> None:
    spec = ServerSpec("p", ("x",), {}, "t", {}, open_pattern=rf"{PORT}/tcp\s+open")
    assert host_compare.result_ok(spec, _text(f"PORT     STATE SERVICE\n{PORT}/tcp open  http-proxy"))
    assert not host_compare.result_ok(spec, _text(f"{PORT}/tcp closed http-proxy"))
    assert not host_compare.result_ok(spec, _text(f"{PORT}/tcp open", error=True))


def test_the_skip_messages_of_peers_given_twice_or_missing_reach_the_figure(tmp_path: Path) -> None:
    known = peers.load()
    absent = peers.parse_option(f"{FUZZING}={tmp_path / 'absent'}", known)
    specs, skipped = host.servers(tmp_path / "run", [absent, absent])
    assert [s.name for s in specs] == [APPLIANCE, BARE]
    assert skipped == [peers.skip_reason(absent)] * 2


def _loopback_only() -> bool:
    return sorted(name for _, name in socket.if_nameindex()) == ["lo"]


@pytest.mark.skipif(not _loopback_only(), reason="runs only inside the unit suite's empty network namespace")
@pytest.mark.skipif(
    shutil.which("nmap") is None or not (REPO / ".venv" / "bin" / "appliance").is_file(),
    reason="needs nmap and .venv/bin/appliance",
)
def test_the_appliance_and_the_bare_server_are_compared_in_this_namespace(tmp_path: Path) -> None:
    # A peer that exits at once: it costs only its own figure.
    broken = ServerSpec("broken-peer", (sys.executable, "-c", "pass"), {}, "t", {}, open_pattern="open")
    params = {
        "servers": [appliance(tmp_path).to_json(), bare().to_json(), broken.to_json()],
        "starts": 1,
        "calls": 2,
        "warmup": 0,
        "log_dir": str(tmp_path),
    }
    data = anyio.run(host_compare.run, params)
    assert data["order"] == [APPLIANCE, BARE, "broken-peer"]
    assert data["argv"][0].endswith("nmap") and data["argv"][-1] == "127.0.0.1"
    for name in (APPLIANCE, BARE):
        server = data["servers"][name]
        assert server["per_call"]["failures"] == {"mcp": 0, "direct": 0}, name
        assert server["per_call"]["calls_per_side"] == 2
        assert server["per_call"]["argv"] == data["argv"]
        assert server["cold_start"]["exit_codes"] == [0], name
        assert isinstance(server["cold_start"]["tools_list_s"]["median"], float)
    assert isinstance(data["tools_list_minus_bare_s"], float)
    assert "no initialize answer" in data["servers"]["broken-peer"]["cold_start"]["error"]
    assert "error" in data["servers"]["broken-peer"]["per_call"]
    assert data["unexpected_errors"] == 1  # the broken peer, once
    assert os.listdir(tmp_path / "data")  # the appliance used its own job store


def test_a_negative_added_time_is_shown_with_its_own_sign() -> None:
    run = _run(0.9, 0.8)
    run["servers"][BARE]["per_call"]["added_ms_median"] = -1.5
    row = host.row(bench_results({"host": {"runs": [run]}}, (host.GOAL,)))
    assert f"{BARE}: `initialize` 0.79 s, `tools/list` 0.80 s, exit 0.20 s, -1.5 ms per call" in row


def test_the_notes_describe_figures_7_and_8_only_when_the_run_has_them() -> None:
    sizes = main.QUICK.__dict__
    assert notes._added_notes({}, sizes) == []
    both = notes._added_notes({"host": {}, "mcp1_client": {}}, sizes)
    assert [n[:2] for n in both] == ["7.", "8."]
    assert f"{main.QUICK.overhead_calls} rounds of one direct run" in both[0]
