"""The subprocess runner against real fake scanners (tests/fakes); no network traffic."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

import anyio
import pytest
from support import eventually

from appliance import runner
from appliance.errors import ExecutionError, NotFoundError
from appliance.runner import RunLimits, run

FAKES = Path(__file__).parent / "fakes"
# Budget for a condition that normally holds within milliseconds; only reached when a test fails.
CONDITION_TIMEOUT_SECONDS = 5.0
# Timeout for runs that should finish by themselves: long enough to never fire on a loaded host.
GENEROUS_TIMEOUT_SECONDS = 30.0


def fake(name: str) -> str:
    return str(FAKES / name)


def limits(timeout: float = GENEROUS_TIMEOUT_SECONDS, cap: int = 1 << 20, grace: float = 0.5) -> RunLimits:
    return RunLimits(timeout_seconds=timeout, output_cap_bytes=cap, grace_seconds=grace)


def is_dead(pid: int) -> bool:
    """Gone, or a zombie: a killed grandchild is reparented to init, which may reap it late."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def read_pid(path: Path) -> int:
    return int(path.read_text())


@pytest.mark.anyio
async def test_run_captures_exit_code_output_and_lines_in_order() -> None:
    out_lines: list[bytes] = []
    err_lines: list[bytes] = []

    async def on_out(line: bytes) -> None:
        out_lines.append(line)

    async def on_err(line: bytes) -> None:
        err_lines.append(line)

    result = await run([fake("talk.py"), "3"], limits(), on_stdout_line=on_out, on_stderr_line=on_err)

    assert result.exit_code == 3
    assert result.stdout == b"alpha\nbeta\ngamma"
    assert result.stderr == b"warn 1\nwarn 2\n"
    assert out_lines == [b"alpha", b"beta", b"gamma"]
    assert err_lines == [b"warn 1", b"warn 2"]
    assert not result.timed_out
    assert not result.stdout_truncated
    assert result.argv == (fake("talk.py"), "3")


@pytest.mark.anyio
async def test_timeout_stops_sleeper_with_sigterm(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    lim = limits(timeout=0.5, grace=2.0)

    result = await run([fake("sleep_forever.sh"), str(pidfile)], lim)

    assert result.timed_out
    assert result.exit_code is None
    # SIGTERM sufficed: no need to wait for the grace period.
    assert lim.timeout_seconds <= result.duration_seconds < lim.timeout_seconds + lim.grace_seconds
    assert is_dead(read_pid(pidfile))


@pytest.mark.anyio
async def test_timeout_sigkills_child_that_ignores_sigterm(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    lim = limits(timeout=0.5, grace=0.5)

    result = await run([fake("ignore_term.sh"), str(pidfile)], lim)

    assert result.timed_out
    assert result.exit_code is None
    assert lim.timeout_seconds + lim.grace_seconds <= result.duration_seconds
    assert result.duration_seconds < lim.timeout_seconds + lim.grace_seconds + 1.0
    assert is_dead(read_pid(pidfile))


@pytest.mark.anyio
async def test_timeout_kills_grandchild(tmp_path: Path) -> None:
    pidfile, gc_pidfile = tmp_path / "pid", tmp_path / "grandchild.pid"

    result = await run([fake("grandchild.py"), str(pidfile), str(gc_pidfile), "stay"], limits(timeout=1.0))

    assert result.timed_out
    assert result.stdout == b"ready\n"  # partial output survives the timeout
    assert is_dead(read_pid(pidfile))
    await eventually(lambda: is_dead(read_pid(gc_pidfile)), CONDITION_TIMEOUT_SECONDS, what="grandchild to die")


@pytest.mark.anyio
async def test_normal_exit_kills_leftover_grandchild(tmp_path: Path) -> None:
    pidfile, gc_pidfile = tmp_path / "pid", tmp_path / "grandchild.pid"

    result = await run([fake("grandchild.py"), str(pidfile), str(gc_pidfile), "exit"], limits())

    assert result.exit_code == 0
    assert not result.timed_out
    await eventually(lambda: is_dead(read_pid(gc_pidfile)), CONDITION_TIMEOUT_SECONDS, what="grandchild to die")


@pytest.mark.anyio
async def test_output_cap_truncates_flood_and_stops_process() -> None:
    cap = 1 << 20
    lines: list[bytes] = []

    async def on_line(line: bytes) -> None:
        lines.append(line)

    result = await run([fake("flood.py")], limits(cap=cap), on_stdout_line=on_line)

    assert result.stdout_truncated
    assert len(result.stdout) == cap
    assert result.exit_code is None  # we stopped it; it did not finish its 50 MB
    assert not result.timed_out
    assert result.duration_seconds < 5.0
    assert is_dead(result.pid)
    assert b"".join(lines) == result.stdout  # callbacks see exactly the kept bytes


@pytest.mark.anyio
async def test_long_line_reaches_callback_in_bounded_pieces() -> None:
    lines: list[bytes] = []

    async def on_line(line: bytes) -> None:
        lines.append(line)

    result = await run([fake("long_line.py")], limits(), on_stdout_line=on_line)

    assert result.exit_code == 0
    assert all(len(line) <= runner.MAX_LINE_BYTES for line in lines)
    assert b"".join(lines[:-1]) == b"x" * 200_000 + b"tail"
    assert lines[-1] == b"next"


@pytest.mark.anyio
async def test_cancel_kills_child_and_grandchild(tmp_path: Path) -> None:
    pidfile, gc_pidfile = tmp_path / "pid", tmp_path / "grandchild.pid"
    task = asyncio.create_task(run([fake("grandchild.py"), str(pidfile), str(gc_pidfile), "stay"], limits()))
    await eventually(pidfile.exists, CONDITION_TIMEOUT_SECONDS, what="pid file")

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert is_dead(read_pid(pidfile))
    await eventually(lambda: is_dead(read_pid(gc_pidfile)), CONDITION_TIMEOUT_SECONDS, what="grandchild to die")


@pytest.mark.anyio
async def test_cancel_during_spawn_still_stops_the_process(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Left to asyncio, a cancel while the pipes are wired up SIGKILLs the child only, not its group.
    with caplog.at_level(logging.WARNING, logger="appliance.runner"):
        task = asyncio.create_task(run([fake("sleep_forever.sh"), str(tmp_path / "pid")], limits()))
        await asyncio.sleep(0)  # one step: run() is now waiting on the spawn
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    [pid] = [getattr(r, "pid", None) for r in caplog.records if getattr(r, "reason", None) == "cancelled"]
    assert isinstance(pid, int)
    assert is_dead(pid)


@pytest.mark.anyio
async def test_anyio_cancel_scope_kills_group_that_ignores_sigterm(tmp_path: Path) -> None:
    # anyio re-delivers the cancellation on every loop iteration while cleanup waits out the grace;
    # the cleanup must neither give up nor spin on it.
    pidfile, gc_pidfile = tmp_path / "pid", tmp_path / "grandchild.pid"
    argv = [fake("grandchild.py"), str(pidfile), str(gc_pidfile), "stay-ignore-term"]
    lim = limits(grace=0.5)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, argv, lim)
        await eventually(pidfile.exists, CONDITION_TIMEOUT_SECONDS, what="pid file")
        cpu_before = time.process_time()
        tg.cancel_scope.cancel()

    assert time.process_time() - cpu_before < lim.grace_seconds / 2
    assert is_dead(read_pid(pidfile))
    await eventually(lambda: is_dead(read_pid(gc_pidfile)), CONDITION_TIMEOUT_SECONDS, what="grandchild to die")


@pytest.mark.anyio
async def test_second_cancel_does_not_abort_cleanup(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pidfile = tmp_path / "pid"
    task = asyncio.create_task(run([fake("ignore_term.sh"), str(pidfile)], limits(grace=1.0)))
    await eventually(pidfile.exists, CONDITION_TIMEOUT_SECONDS, what="pid file")

    with caplog.at_level(logging.WARNING, logger="appliance.runner"):
        task.cancel()
        await eventually(
            lambda: any(getattr(r, "reason", None) == "cancelled" for r in caplog.records),
            CONDITION_TIMEOUT_SECONDS,
            what="cleanup to start",
        )
        task.cancel()  # lands while cleanup waits out the grace period
        with pytest.raises(asyncio.CancelledError):
            await task

    assert is_dead(read_pid(pidfile))  # SIGKILL was still sent after the grace


@pytest.mark.anyio
async def test_callback_error_propagates_and_stops_process(tmp_path: Path) -> None:
    pidfile, gc_pidfile = tmp_path / "pid", tmp_path / "grandchild.pid"

    async def on_line(line: bytes) -> None:
        raise RuntimeError("parser choked")

    with pytest.raises(RuntimeError, match="parser choked"):
        await run([fake("grandchild.py"), str(pidfile), str(gc_pidfile), "stay"], limits(), on_stdout_line=on_line)

    assert is_dead(read_pid(pidfile))
    await eventually(lambda: is_dead(read_pid(gc_pidfile)), CONDITION_TIMEOUT_SECONDS, what="grandchild to die")


@pytest.mark.anyio
async def test_env_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_SECRET_TEST", "x")

    result = await run([fake("print_env.py")], limits(), env={"NMAPDIR": "/usr/share/nmap"})

    assert json.loads(result.stdout) == {**runner.BASE_ENV, "NMAPDIR": "/usr/share/nmap"}


@pytest.mark.anyio
async def test_rlimits_are_applied() -> None:
    lim = RunLimits(
        timeout_seconds=GENEROUS_TIMEOUT_SECONDS, output_cap_bytes=1 << 20, cpu_seconds=77, max_open_files=64
    )

    result = await run([fake("print_limits.py"), "77", "64"], lim)

    assert json.loads(result.stdout) == {"cpu": [77, 77], "nofile": [64, 64], "core": [0, 0]}


@pytest.mark.anyio
async def test_missing_binary_raises_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as excinfo:
        await run([str(tmp_path / "no-such-scanner")], limits())

    assert excinfo.value.rule == "scanner_binary_missing"


@pytest.mark.anyio
async def test_non_executable_binary_raises_execution_error(tmp_path: Path) -> None:
    binary = tmp_path / "scanner"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o644)

    with pytest.raises(ExecutionError) as excinfo:
        await run([str(binary)], limits())

    assert excinfo.value.rule == "scanner_start_failed"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nmap", "-sT"],
        ["./nmap"],
        ["/usr/bin/nmap", "bad\x00arg"],
    ],
)
async def test_invalid_argv_is_refused_before_spawn(argv: list[str]) -> None:
    with pytest.raises(ExecutionError) as excinfo:
        await run(argv, limits())

    assert excinfo.value.rule == "argv_invalid"
