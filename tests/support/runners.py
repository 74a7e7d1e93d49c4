"""The spy runner: what refusal tests give ScanService instead of the real runner.

A refusal must happen before any process starts, so a test of one must not depend on the check
under test to keep a real scanner from running. The spy records the argv it was handed and fails
the test; `calls` stays empty when the refusal came first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from appliance.parsers.lines import output_lines
from appliance.runner import RunLimits, RunResult, run


async def replay_output(stdout: bytes, stderr: bytes, callbacks: dict[str, Any]) -> None:
    """What the real runner does while a scanner writes: each line (in the runner's pieces) goes
    to the service's line callbacks (findings stream, progress). Fakes that return output call it."""
    for data, name in ((stdout, "on_stdout_line"), (stderr, "on_stderr_line")):
        callback = callbacks.get(name)
        if callback is not None:
            for line in output_lines(data):
                await callback(line)


class SpyRunner:
    """A runner that must never be called: it records the argv and fails the test."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, argv: Sequence[str], limits: RunLimits, **kwargs: Any) -> RunResult:
        self.calls.append(list(argv))
        raise AssertionError(f"a scanner process would have started: {list(argv)}")


class RecordingRunner:
    """The real runner, recording each argv it is handed (a test proves what ran, and when)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, argv: Sequence[str], limits: RunLimits, **kwargs: Any) -> RunResult:
        self.calls.append(list(argv))
        return await run(argv, limits, **kwargs)


class GatedRunner:
    """A fake scanner that runs until the test opens its gate (or the service stops or cancels
    it), then exits `exit_code` (0) with `stdout`. Lab addresses only; nothing is sent anywhere.

    `started` is set when a run begins; `cancelled` counts runs ended by a cancel (the real
    runner kills the process group there); a `stop` event ends a run as `stopped`.
    """

    def __init__(self, stdout: bytes = b"", exit_code: int = 0, *, early: bytes = b"") -> None:
        self.stdout = stdout
        self.exit_code = exit_code  # what a run the gate ended exits with
        self.early = early  # written (and fed to the service's callbacks) before the gate is waited on
        self.gate = asyncio.Event()
        self.started = asyncio.Event()
        self.calls: list[list[str]] = []
        self.cancelled = 0

    async def __call__(self, argv: Sequence[str], limits: RunLimits, **kwargs: Any) -> RunResult:
        self.calls.append(list(argv))
        await replay_output(self.early, b"", kwargs)
        self.started.set()
        stop: asyncio.Event | None = kwargs.get("stop")
        waits = [asyncio.ensure_future(self.gate.wait())]
        if stop is not None:
            waits.append(asyncio.ensure_future(stop.wait()))
        try:
            await asyncio.wait(waits, timeout=limits.timeout_seconds, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            for wait in waits:
                wait.cancel()
        stopped = stop is not None and stop.is_set() and not self.gate.is_set()
        timed_out = not self.gate.is_set() and not stopped
        await replay_output(self.stdout, b"", kwargs)
        return RunResult(
            tuple(argv),
            None if stopped or timed_out else self.exit_code,
            self.early + self.stdout,
            b"",
            False,
            timed_out,
            0.01,
            pid=0,
            stopped=stopped,
        )


def nmap_xml_with_open_ports(addresses: Sequence[str], ports: int) -> bytes:
    """nmap -oX output of `addresses` up, each with ports 1..`ports` open (a fake scanner replays it)."""
    open_ports = "".join(
        f'<port protocol="tcp" portid="{n}"><state state="open" reason="syn-ack" reason_ttl="0"/></port>'
        for n in range(1, ports + 1)
    )
    hosts = "".join(
        f'<host><status state="up" reason="user-set"/><address addr="{address}" addrtype="ipv4"/>'
        f"<ports>{open_ports}</ports></host>"
        for address in addresses
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><nmaprun scanner="nmap" args="nmap" start="1" version="7.93">'
        f'{hosts}<runstats><finished time="2" elapsed="1" exit="success"/>'
        f'<hosts up="{len(addresses)}" down="0" total="{len(addresses)}"/></runstats></nmaprun>'
    ).encode()
