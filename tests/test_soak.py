"""Soak: one `appliance serve --transport http` process under a long mix of real calls.

Each round a fresh client (alternating legacy and 2026-07-28) makes a mix of calls at once:
connect scans of a loopback listener, gobuster dir against a python http.server serving a tmp
dir, dry runs and refusals. The server process is measured by pid: RSS after warm-up against
the end, open descriptors, zombie children. The CI test runs a short soak; `scripts/soak` runs
`main()` with large counts and a time bound. Nothing outside 127.0.0.1 is ever scanned.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from mcp import Client
from support import (
    LOOPBACK_POLICY,
    CountingListener,
    Served,
    closed_port,
    counting_listener,
    http_client,
    scanner_processes,
    served,
    wait_until,
    web_root,
    write_policy,
)

# RSS may grow this much from the end of warm-up to the end of the soak.
MAX_RSS_DRIFT = 0.10
# Descriptors an idle server may hold at the end beyond its idle count at start (the audit file,
# opened at the first call, and a keep-alive socket or two).
FD_SLACK = 5
# Client connections close asynchronously; the end count is taken once they have (or after this).
FD_SETTLE_SECONDS = 5
# The CI soak: bounded in calls and in time.
CI_CALLS = 150
CI_SECONDS = 60
ERAS = ("legacy", "2026-07-28")


@dataclass
class Figures:
    """What a soak measured; `problems` lists every bound it broke."""

    calls: int = 0
    seconds: float = 0.0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    unexpected: list[str] = field(default_factory=list)
    rss_start: int = 0
    rss_warm: int = 0
    rss_end: int = 0
    rss_peak: int = 0
    fds_start: int = 0
    fds_warm: int = 0
    fds_end: int = 0
    zombies: int = 0
    children: int = 0

    @property
    def drift(self) -> float:
        return (self.rss_end - self.rss_warm) / self.rss_warm

    def problems(self) -> list[str]:
        found = [f"unexpected result: {u}" for u in self.unexpected[:10]]
        if self.drift > MAX_RSS_DRIFT:
            found.append(f"RSS drift {self.drift:.1%} > {MAX_RSS_DRIFT:.0%}")
        if self.fds_end > self.fds_start + FD_SLACK:
            found.append(f"descriptors grew {self.fds_start} -> {self.fds_end}")
        if self.zombies:
            found.append(f"{self.zombies} zombie children")
        if self.children:
            found.append(f"{self.children} children still running")
        return found

    def lines(self) -> list[str]:
        mib = 1024 * 1024
        rate = self.calls / self.seconds if self.seconds else 0.0
        return [
            f"calls {self.calls} in {self.seconds:.1f}s ({rate:.1f}/s); outcomes {dict(sorted(self.outcomes.items()))}",
            f"rss start {self.rss_start / mib:.1f} MiB, after warm-up {self.rss_warm / mib:.1f} MiB, "
            f"end {self.rss_end / mib:.1f} MiB, peak {self.rss_peak / mib:.1f} MiB; drift {self.drift:+.1%}",
            f"fds idle at start {self.fds_start}, after warm-up {self.fds_warm}, idle at end {self.fds_end}; "
            f"children {self.children}, zombies {self.zombies}",
        ]


Check = Callable[[Any], str | None]


def _expect_ok(result: Any) -> str | None:
    return None if not result.is_error else f"error {result.structured_content}"


def _expect_rule(rule: str) -> Check:
    def check(result: Any) -> str | None:
        got = (result.structured_content or {}).get("rule")
        return None if result.is_error and got == rule else f"wanted refusal {rule}, got {got!r}"

    return check


def _mix(listener: int, closed: int, web: int) -> list[tuple[str, str, dict[str, Any], Check]]:
    """One round: (outcome label, tool, arguments, check). Two real nmap runs fit nmap's running limit."""

    def open_port(result: Any) -> str | None:
        if result.is_error:
            return f"error {result.structured_content}"
        hosts = result.structured_content["hosts"]
        seen = [([p["port"] for p in h["ports"]], h["port_counts"]) for h in hosts]
        return None if seen == [([listener], {"open": 1, "closed": 1})] else f"hosts {seen}"

    def finds_admin(result: Any) -> str | None:
        if result.is_error:
            return f"error {result.structured_content}"
        found = {f["value"] for f in result.structured_content["findings"]}
        return None if "/admin" in found else f"findings {found}"

    url = f"http://127.0.0.1:{web}/"
    scan = {"target": "127.0.0.1", "ports": f"{listener},{closed}"}
    return [
        ("nmap", "nmap_scan", scan, open_port),
        ("nmap", "nmap_scan", {**scan, "timing": 4}, open_port),
        ("gobuster", "gobuster_scan", {"mode": "dir", "target": url}, finds_admin),
        ("dry_run", "nmap_scan", {**scan, "dry_run": True}, _expect_ok),
        ("dry_run", "gobuster_scan", {"mode": "dir", "target": url, "dry_run": True}, _expect_ok),
        # Refusals are dry runs: the server process has no spy runner, and should a check ever
        # let one through (the metadata address, `-iL /etc/hosts`), a dry run still starts nothing.
        (
            "refused",
            "nmap_scan",
            {"target": "169.254.169.254", "dry_run": True},
            _expect_rule("target_denied_link_local"),
        ),
        ("refused", "nmap_scan", {"target": "0x7f000001", "dry_run": True}, _expect_rule("target_noncanonical_ipv4")),
        (
            "refused",
            "nmap_scan",
            {**scan, "dry_run": True, "extra_args": ["-iL", "/etc/hosts"]},
            _expect_rule("flag_file_io"),
        ),
    ]


async def _round(client: Client, mix: list[tuple[str, str, dict[str, Any], Check]], figures: Figures) -> None:
    async def one(label: str, tool: str, arguments: dict[str, Any], check: Check) -> None:
        result = await client.call_tool(tool, arguments)
        problem = check(result)
        figures.outcomes[label if problem is None else f"{label}:unexpected"] += 1
        if problem is not None:
            figures.unexpected.append(f"{tool} {arguments}: {problem}")

    async with anyio.create_task_group() as group:
        for label, tool, arguments, check in mix:
            group.start_soon(one, label, tool, arguments, check)
    figures.calls += len(mix)


def _settled_fds(process: psutil.Process, bound: int) -> int:
    """The server's descriptor count once it is back within `bound`, or after FD_SETTLE_SECONDS."""
    with contextlib.suppress(AssertionError):
        return int(wait_until(lambda: process.num_fds() <= bound and process.num_fds(), FD_SETTLE_SECONDS))
    return process.num_fds()


def _children(process: psutil.Process) -> tuple[int, int]:
    """(zombies, live children) of the server."""
    zombies = live = 0
    for child in process.children(recursive=True):
        try:
            zombie = child.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            continue
        zombies += zombie
        live += not zombie
    return zombies, live


async def soak(
    server: Served,
    listener: CountingListener,
    web: int,
    *,
    calls: int,
    seconds: float,
    warmup_calls: int,
    report: Callable[[str], None] | None = None,
) -> Figures:
    """Run rounds until `calls` calls or `seconds` have passed; measure the server around them."""
    process = psutil.Process(server.pid)
    mix = _mix(listener.port, closed_port(), web)
    figures = Figures(rss_start=process.memory_info().rss, fds_start=process.num_fds())
    started = time.monotonic()
    deadline = started + seconds
    rounds = 0
    while figures.calls < calls and time.monotonic() < deadline:
        async with http_client(server.url, ERAS[rounds % len(ERAS)]) as client:
            await _round(client, mix, figures)
        rounds += 1
        rss = process.memory_info().rss
        figures.rss_peak = max(figures.rss_peak, rss)
        if not figures.rss_warm and figures.calls >= warmup_calls:
            figures.rss_warm, figures.fds_warm = rss, process.num_fds()
        if report is not None and rounds % 50 == 0:
            report(f"round {rounds}: {figures.calls} calls, rss {rss / 1024 / 1024:.1f} MiB, fds {process.num_fds()}")
    figures.seconds = time.monotonic() - started
    figures.fds_end = await anyio.to_thread.run_sync(_settled_fds, process, figures.fds_start + FD_SLACK)
    figures.rss_end = process.memory_info().rss
    # Scanners are reaped before a call returns; nothing may linger once the last round is done.
    figures.zombies, figures.children = _children(process)
    if not figures.rss_warm:
        figures.rss_warm, figures.fds_warm = figures.rss_end, figures.fds_end
    return figures


@dataclass
class Lab:
    server: Served
    listener: CountingListener
    web_port: int


def _lab(tmp: Path, stack: contextlib.ExitStack) -> Lab:
    policy = write_policy(tmp, LOOPBACK_POLICY)
    (tmp / "www").mkdir()
    server = stack.enter_context(served(policy, APPLIANCE_AUDIT_PATH=str(tmp / "audit.log")))
    listener = stack.enter_context(counting_listener())
    web = stack.enter_context(web_root(tmp / "www"))
    return Lab(server, listener, web.port)


@pytest.mark.anyio
async def test_short_soak_keeps_memory_descriptors_and_children_bounded(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        lab = _lab(tmp_path, stack)
        figures = await soak(
            lab.server, lab.listener, lab.web_port, calls=CI_CALLS, seconds=CI_SECONDS, warmup_calls=40
        )
    for line in figures.lines():
        print(line)
    assert figures.calls >= CI_CALLS, "time bound hit before the call count: the server is too slow"
    assert figures.problems() == []
    assert not scanner_processes(f"127.0.0.1:{lab.web_port}")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000, help="stop after this many calls (default 20000)")
    parser.add_argument("--seconds", type=float, default=3600, help="stop after this long (default 3600)")
    parser.add_argument("--warmup-calls", type=int, default=400, help="calls before the RSS baseline (default 400)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """The long mode (scripts/soak): prints the figures; exit 1 if a bound was broken."""
    args = _parse(argv)

    async def run() -> Figures:
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            lab = _lab(Path(tmp), stack)
            return await soak(
                lab.server,
                lab.listener,
                lab.web_port,
                calls=args.calls,
                seconds=args.seconds,
                warmup_calls=args.warmup_calls,
                report=lambda line: print(line, flush=True),
            )

    figures = anyio.run(run)
    for line in figures.lines():
        print(line)
    problems = figures.problems()
    for problem in problems:
        print(f"FAIL: {problem}")
    print("soak ok" if not problems else f"soak failed: {len(problems)} problem(s)")
    return 1 if problems else 0
