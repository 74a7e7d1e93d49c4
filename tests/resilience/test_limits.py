"""Concurrency slots and the bounded queue, sequenced with events, a fake clock and a fake timer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from appliance.errors import ResourceExhaustedError
from appliance.resilience.limits import ConcurrencyLimiter, PrincipalLimit, ToolLimit

# Loop turns allowed for tasks to reach the state a test waits for; no time passes meanwhile.
MAX_LOOP_TURNS = 100
# Bound on awaiting a call that should start or end at once: only reached when the limiter is broken.
GUARD_SECONDS = 5.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class PendingTimer:
    delay: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeTimer:
    """Records each timer the limiter sets; a test fires them when it decides the time has come."""

    timers: list[PendingTimer] = field(default_factory=list)

    def __call__(self, delay: float, callback: Callable[[], None]) -> Callable[[], None]:
        timer = PendingTimer(delay, callback)
        self.timers.append(timer)
        return timer.cancel

    @property
    def live(self) -> list[PendingTimer]:
        return [t for t in self.timers if not t.cancelled]

    def fire(self, timer: PendingTimer) -> None:
        assert not timer.cancelled
        timer.cancelled = True
        timer.callback()


class Call:
    """One call holding a slot until the test releases it."""

    def __init__(
        self,
        limiter: ConcurrencyLimiter,
        tool: str,
        deadline: float,
        log: list[str],
        name: str,
        principal: str | None = None,
    ) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.left: float | None = None
        self.task = asyncio.create_task(self._run(limiter, tool, deadline, log, name, principal))

    async def _run(
        self, limiter: ConcurrencyLimiter, tool: str, deadline: float, log: list[str], name: str, principal: str | None
    ) -> None:
        async with limiter.slot(tool, deadline, principal) as left:
            self.left = left
            log.append(name)
            self.entered.set()
            await self.release.wait()

    async def started(self) -> None:
        async with asyncio.timeout(GUARD_SECONDS):
            await self.entered.wait()

    async def ended(self) -> None:
        async with asyncio.timeout(GUARD_SECONDS):
            await self.task

    async def finish(self) -> None:
        self.release.set()
        await self.ended()


async def until_queued(limiter: ConcurrencyLimiter, tool: str, count: int) -> None:
    """Let the other tasks run until `count` calls wait for `tool`; no time passes meanwhile."""
    for _ in range(MAX_LOOP_TURNS):
        if limiter.queued(tool) == count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"expected {count} queued {tool} calls, found {limiter.queued(tool)}")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def timer() -> FakeTimer:
    return FakeTimer()


@pytest.fixture
def changes() -> list[str]:
    return []


def make(
    clock: FakeClock,
    timer: FakeTimer,
    per_tool: dict[str, ToolLimit] | None = None,
    global_max: int = 4,
    changes: list[str] | None = None,
    per_principal: PrincipalLimit | None = None,
) -> ConcurrencyLimiter:
    return ConcurrencyLimiter(
        per_tool if per_tool is not None else {"nmap_scan": ToolLimit(max_concurrent=1, max_queued=3)},
        global_max,
        clock=clock,
        timer=timer,
        on_change=changes.append if changes is not None else None,
        per_principal=per_principal,
    )


@pytest.mark.anyio
async def test_free_slot_runs_at_once_and_yields_time_left(clock: FakeClock, timer: FakeTimer) -> None:
    limiter = make(clock, timer)
    clock.now = 100.0

    async with limiter.slot("nmap_scan", deadline=130.0) as left:
        assert left == 30.0
        assert limiter.in_flight("nmap_scan") == 1

    assert limiter.in_flight("nmap_scan") == 0
    assert timer.timers == []


@pytest.mark.anyio
async def test_waiters_get_slots_in_arrival_order(clock: FakeClock, timer: FakeTimer) -> None:
    limiter = make(clock, timer)
    log: list[str] = []
    first = Call(limiter, "nmap_scan", 60.0, log, "first")
    await first.started()
    waiters = []
    for name in ("second", "third", "fourth"):
        waiters.append(Call(limiter, "nmap_scan", 60.0, log, name))
        await until_queued(limiter, "nmap_scan", len(waiters))

    await first.finish()
    for call in waiters:
        await call.started()
        assert limiter.in_flight("nmap_scan") == 1
        await call.finish()

    assert log == ["first", "second", "third", "fourth"]
    assert limiter.queued("nmap_scan") == limiter.in_flight("nmap_scan") == 0


@pytest.mark.anyio
async def test_full_queue_refuses_at_once(clock: FakeClock, timer: FakeTimer) -> None:
    limiter = make(clock, timer, {"nmap_scan": ToolLimit(max_concurrent=1, max_queued=1)})
    log: list[str] = []
    running = Call(limiter, "nmap_scan", 60.0, log, "running")
    await running.started()
    waiting = Call(limiter, "nmap_scan", 60.0, log, "waiting")
    await until_queued(limiter, "nmap_scan", 1)

    with pytest.raises(ResourceExhaustedError) as excinfo:
        async with limiter.slot("nmap_scan", 60.0):
            pytest.fail("a full queue admitted a call")

    assert excinfo.value.rule == "queue_full"
    assert limiter.queued("nmap_scan") == 1
    assert len(timer.timers) == 1  # only the admitted waiter set a timer
    await running.finish()
    await waiting.finish()


@pytest.mark.anyio
async def test_zero_queue_refuses_when_busy(clock: FakeClock, timer: FakeTimer) -> None:
    limiter = make(clock, timer, {"nmap_scan": ToolLimit(max_concurrent=1, max_queued=0)})

    async with limiter.slot("nmap_scan", 60.0):
        with pytest.raises(ResourceExhaustedError) as excinfo:
            async with limiter.slot("nmap_scan", 60.0):
                pytest.fail("a busy tool without a queue admitted a call")

    assert excinfo.value.rule == "queue_full"


@pytest.mark.anyio
async def test_deadline_already_past_refuses_without_queueing(clock: FakeClock, timer: FakeTimer) -> None:
    limiter = make(clock, timer)
    clock.now = 50.0

    async with limiter.slot("nmap_scan", 60.0):
        with pytest.raises(ResourceExhaustedError) as excinfo:
            async with limiter.slot("nmap_scan", deadline=49.0):
                pytest.fail("a call past its deadline was admitted")

    assert excinfo.value.rule == "queue_wait_timeout"
    assert limiter.queued("nmap_scan") == 0
    assert timer.timers == []


@pytest.mark.anyio
async def test_waiter_times_out_when_its_deadline_passes(clock: FakeClock, timer: FakeTimer) -> None:
    limiter = make(clock, timer)
    log: list[str] = []
    running = Call(limiter, "nmap_scan", 60.0, log, "running")
    await running.started()
    clock.now = 10.0
    waiting = Call(limiter, "nmap_scan", 15.0, log, "waiting")
    await until_queued(limiter, "nmap_scan", 1)
    [pending] = timer.live
    assert pending.delay == 5.0

    clock.now = 15.0
    timer.fire(pending)

    with pytest.raises(ResourceExhaustedError) as excinfo:
        await waiting.ended()
    assert excinfo.value.rule == "queue_wait_timeout"
    assert limiter.queued("nmap_scan") == 0
    await running.finish()
    assert limiter.in_flight("nmap_scan") == 0
    assert log == ["running"]


@pytest.mark.anyio
async def test_waiter_times_out_on_the_real_loop_timer() -> None:
    # The default timer is the event loop's; the deadline is short and the test waits on the outcome.
    limiter = ConcurrencyLimiter({"nmap_scan": ToolLimit(max_concurrent=1, max_queued=1)})
    log: list[str] = []
    running = Call(limiter, "nmap_scan", time.monotonic() + 60.0, log, "running")
    await running.started()
    waiting = Call(limiter, "nmap_scan", time.monotonic() + 0.05, log, "waiting")

    with pytest.raises(ResourceExhaustedError) as excinfo:
        await waiting.ended()

    assert excinfo.value.rule == "queue_wait_timeout"
    assert limiter.queued("nmap_scan") == 0
    await running.finish()


@pytest.mark.anyio
async def test_slot_handed_over_after_the_deadline_passes_on(clock: FakeClock, timer: FakeTimer) -> None:
    limiter = make(clock, timer)
    log: list[str] = []
    running = Call(limiter, "nmap_scan", 100.0, log, "running")
    await running.started()
    late = Call(limiter, "nmap_scan", 10.0, log, "late")
    await until_queued(limiter, "nmap_scan", 1)
    patient = Call(limiter, "nmap_scan", 100.0, log, "patient")
    await until_queued(limiter, "nmap_scan", 2)
    clock.now = 10.0  # the late call's timer has not fired yet

    await running.finish()

    with pytest.raises(ResourceExhaustedError) as excinfo:
        await late.ended()
    assert excinfo.value.rule == "queue_wait_timeout"
    await patient.started()
    assert patient.left == 90.0
    await patient.finish()
    assert log == ["running", "patient"]


@pytest.mark.anyio
async def test_queue_wait_counts_against_the_deadline(clock: FakeClock, timer: FakeTimer) -> None:
    limiter = make(clock, timer)
    log: list[str] = []
    running = Call(limiter, "nmap_scan", 100.0, log, "running")
    await running.started()
    waiting = Call(limiter, "nmap_scan", 30.0, log, "waiting")
    await until_queued(limiter, "nmap_scan", 1)
    clock.now = 12.0

    await running.finish()
    await waiting.started()

    assert waiting.left == 18.0
    assert timer.live == []  # the granted waiter's timer was cancelled
    await waiting.finish()


@pytest.mark.anyio
async def test_global_cap_counts_all_tools(clock: FakeClock, timer: FakeTimer) -> None:
    limits = {"nmap_scan": ToolLimit(max_concurrent=2), "masscan_scan": ToolLimit(max_concurrent=2)}
    limiter = make(clock, timer, limits, global_max=2)
    log: list[str] = []
    nmaps = [Call(limiter, "nmap_scan", 60.0, log, f"nmap{i}") for i in range(2)]
    for call in nmaps:
        await call.started()
    masscan = Call(limiter, "masscan_scan", 60.0, log, "masscan")
    await until_queued(limiter, "masscan_scan", 1)
    assert limiter.in_flight("masscan_scan") == 0

    await nmaps[0].finish()
    await masscan.started()

    assert (limiter.in_flight("nmap_scan"), limiter.in_flight("masscan_scan")) == (1, 1)
    await nmaps[1].finish()
    await masscan.finish()


@pytest.mark.anyio
async def test_freed_slot_goes_to_oldest_waiter_whose_tool_is_under_its_limit(
    clock: FakeClock, timer: FakeTimer
) -> None:
    limits = {"nmap_scan": ToolLimit(max_concurrent=1), "masscan_scan": ToolLimit(max_concurrent=2)}
    limiter = make(clock, timer, limits, global_max=2)
    log: list[str] = []
    nmap = Call(limiter, "nmap_scan", 60.0, log, "nmap")
    masscan = Call(limiter, "masscan_scan", 60.0, log, "masscan")
    await nmap.started()
    await masscan.started()
    nmap_waiter = Call(limiter, "nmap_scan", 60.0, log, "nmap_waiter")  # oldest, but nmap is at its limit
    await until_queued(limiter, "nmap_scan", 1)
    masscan_waiter = Call(limiter, "masscan_scan", 60.0, log, "masscan_waiter")
    await until_queued(limiter, "masscan_scan", 1)

    await masscan.finish()
    await masscan_waiter.started()
    assert limiter.queued("nmap_scan") == 1

    await nmap.finish()
    await nmap_waiter.started()
    await masscan_waiter.finish()
    await nmap_waiter.finish()
    assert log == ["nmap", "masscan", "masscan_waiter", "nmap_waiter"]


@pytest.mark.anyio
async def test_oldest_waiter_across_tools_goes_first(clock: FakeClock, timer: FakeTimer) -> None:
    limits = {"nmap_scan": ToolLimit(max_concurrent=2), "masscan_scan": ToolLimit(max_concurrent=2)}
    limiter = make(clock, timer, limits, global_max=1)
    log: list[str] = []
    running = Call(limiter, "nmap_scan", 60.0, log, "running")
    await running.started()
    masscan = Call(limiter, "masscan_scan", 60.0, log, "masscan")
    await until_queued(limiter, "masscan_scan", 1)
    nmap = Call(limiter, "nmap_scan", 60.0, log, "nmap")
    await until_queued(limiter, "nmap_scan", 1)

    await running.finish()
    await masscan.started()
    await masscan.finish()
    await nmap.finish()

    assert log == ["running", "masscan", "nmap"]


@pytest.mark.anyio
async def test_cancel_while_queued_removes_the_waiter(clock: FakeClock, timer: FakeTimer) -> None:
    limiter = make(clock, timer)
    log: list[str] = []
    running = Call(limiter, "nmap_scan", 60.0, log, "running")
    await running.started()
    cancelled = Call(limiter, "nmap_scan", 60.0, log, "cancelled")
    await until_queued(limiter, "nmap_scan", 1)
    after = Call(limiter, "nmap_scan", 60.0, log, "after")
    await until_queued(limiter, "nmap_scan", 2)

    cancelled.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled.ended()

    assert limiter.queued("nmap_scan") == 1
    assert len(timer.live) == 1  # the cancelled waiter's timer is gone
    await running.finish()
    await after.started()
    await after.finish()
    assert log == ["running", "after"]
    assert limiter.in_flight("nmap_scan") == 0


@pytest.mark.anyio
async def test_cancel_landing_right_after_the_handover_frees_the_slot(clock: FakeClock, timer: FakeTimer) -> None:
    limiter = make(clock, timer)
    log: list[str] = []
    async with limiter.slot("nmap_scan", 60.0):
        waiting = Call(limiter, "nmap_scan", 60.0, log, "waiting")
        await until_queued(limiter, "nmap_scan", 1)
    # The slot is now handed to the waiter, which has not resumed yet.
    assert limiter.in_flight("nmap_scan") == 1
    waiting.task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await waiting.ended()

    assert limiter.in_flight("nmap_scan") == 0
    assert log == []


@pytest.mark.anyio
async def test_cancel_while_running_frees_the_slot(clock: FakeClock, timer: FakeTimer) -> None:
    limiter = make(clock, timer)
    log: list[str] = []
    running = Call(limiter, "nmap_scan", 60.0, log, "running")
    await running.started()

    running.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running.ended()

    assert limiter.in_flight("nmap_scan") == 0


@pytest.mark.anyio
async def test_close_refuses_waiters_and_new_calls_but_keeps_running_ones(clock: FakeClock, timer: FakeTimer) -> None:
    limiter = make(clock, timer)
    log: list[str] = []
    running = Call(limiter, "nmap_scan", 60.0, log, "running")
    await running.started()
    waiters = [Call(limiter, "nmap_scan", 60.0, log, f"waiter{i}") for i in range(2)]
    await until_queued(limiter, "nmap_scan", 2)

    limiter.close()

    for call in waiters:
        with pytest.raises(ResourceExhaustedError) as excinfo:
            await call.ended()
        assert excinfo.value.rule == "shutting_down"
    with pytest.raises(ResourceExhaustedError) as excinfo:
        async with limiter.slot("masscan_scan", 60.0):
            pytest.fail("a closed limiter admitted a call")
    assert excinfo.value.rule == "shutting_down"
    assert timer.live == []
    assert limiter.in_flight("nmap_scan") == 1
    assert not running.task.done()
    await running.finish()
    assert limiter.in_flight("nmap_scan") == 0


@pytest.mark.anyio
async def test_raised_limits_admit_waiters(clock: FakeClock, timer: FakeTimer) -> None:
    limiter = make(clock, timer)
    log: list[str] = []
    running = Call(limiter, "nmap_scan", 60.0, log, "running")
    await running.started()
    waiting = Call(limiter, "nmap_scan", 60.0, log, "waiting")
    await until_queued(limiter, "nmap_scan", 1)

    limiter.update({"nmap_scan": ToolLimit(max_concurrent=2)}, global_max=4)

    await waiting.started()
    assert limiter.in_flight("nmap_scan") == 2
    await running.finish()
    await waiting.finish()


@pytest.mark.anyio
async def test_lowered_limits_leave_running_calls_alone(clock: FakeClock, timer: FakeTimer) -> None:
    limiter = make(clock, timer, {"nmap_scan": ToolLimit(max_concurrent=2, max_queued=1)})
    log: list[str] = []
    running = [Call(limiter, "nmap_scan", 60.0, log, f"running{i}") for i in range(2)]
    for call in running:
        await call.started()

    limiter.update({"nmap_scan": ToolLimit(max_concurrent=1, max_queued=1)}, global_max=4)
    waiting = Call(limiter, "nmap_scan", 60.0, log, "waiting")
    await until_queued(limiter, "nmap_scan", 1)

    assert limiter.in_flight("nmap_scan") == 2
    await running[0].finish()
    assert limiter.queued("nmap_scan") == 1  # one still runs: that is the new limit
    await running[1].finish()
    await waiting.started()
    await waiting.finish()


@pytest.mark.anyio
async def test_on_change_reports_every_count_change(clock: FakeClock, timer: FakeTimer, changes: list[str]) -> None:
    limiter = make(clock, timer, changes=changes)
    log: list[str] = []
    running = Call(limiter, "nmap_scan", 60.0, log, "running")
    await running.started()
    waiting = Call(limiter, "nmap_scan", 60.0, log, "waiting")
    await until_queued(limiter, "nmap_scan", 1)

    await running.finish()
    await waiting.finish()

    # take, enqueue, release, dequeue, take (handover), release
    assert changes == ["nmap_scan"] * 6


@pytest.mark.parametrize(
    ("max_concurrent", "max_queued"),
    [(0, 4), (2, -1)],
)
def test_tool_limit_rejects_nonsense(max_concurrent: int, max_queued: int) -> None:
    with pytest.raises(ValueError, match="need"):
        ToolLimit(max_concurrent=max_concurrent, max_queued=max_queued)


# --- per-principal shares ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_one_principal_cannot_take_every_running_slot(clock: FakeClock, timer: FakeTimer) -> None:
    limiter = make(clock, timer, {"nmap_scan": ToolLimit(4, 4)}, per_principal=PrincipalLimit(max_running=2))
    log: list[str] = []
    alice = [Call(limiter, "nmap_scan", 60.0, log, f"alice{i}", "alice") for i in range(3)]
    await alice[0].started()
    await alice[1].started()
    await until_queued(limiter, "nmap_scan", 1)  # alice's third waits for her own share
    bob = Call(limiter, "nmap_scan", 60.0, log, "bob", "bob")
    await bob.started()  # a free slot is not held back for a principal at its share
    assert limiter.running_for("alice") == 2
    await alice[0].finish()
    await alice[2].started()
    assert log == ["alice0", "alice1", "bob", "alice2"]
    for call in (alice[1], alice[2], bob):
        await call.finish()
    assert limiter.running_for("alice") == limiter.queued_for("alice") == 0


@pytest.mark.anyio
async def test_one_principal_cannot_fill_the_queue(clock: FakeClock, timer: FakeTimer) -> None:
    limiter = make(clock, timer, {"nmap_scan": ToolLimit(1, 3)}, per_principal=PrincipalLimit(max_queued=1))
    log: list[str] = []
    holder = Call(limiter, "nmap_scan", 60.0, log, "bob", "bob")
    await holder.started()
    waiting = Call(limiter, "nmap_scan", 60.0, log, "alice-queued", "alice")
    await until_queued(limiter, "nmap_scan", 1)
    with pytest.raises(ResourceExhaustedError) as refused:
        async with limiter.slot("nmap_scan", 60.0, "alice"):
            pass
    assert refused.value.rule == "principal_queue_full"
    assert refused.value.recovery_suggestion
    other = Call(limiter, "nmap_scan", 60.0, log, "carol", "carol")  # the tool's queue still has room
    await until_queued(limiter, "nmap_scan", 2)
    await holder.finish()
    await waiting.finish()
    await other.finish()
    assert log == ["bob", "alice-queued", "carol"]


@pytest.mark.anyio
async def test_limits_are_checked_tool_then_principal(clock: FakeClock, timer: FakeTimer) -> None:
    limits = {tool: ToolLimit(1, 1) for tool in ("nmap_scan", "masscan_scan", "gobuster_scan")}
    limiter = make(clock, timer, limits, per_principal=PrincipalLimit(max_queued=1))
    log: list[str] = []
    held = [Call(limiter, tool, 60.0, log, tool, "bob") for tool in limits]
    for call in held:
        await call.started()
    carol = Call(limiter, "nmap_scan", 60.0, log, "carol", "carol")  # nmap's queue is now full
    alice = Call(limiter, "gobuster_scan", 60.0, log, "alice", "alice")  # alice's share is now full
    await until_queued(limiter, "nmap_scan", 1)
    await until_queued(limiter, "gobuster_scan", 1)
    rules = []
    # nmap: both its queue and alice's share are full, the tool's is named; masscan: only her share.
    for tool in ("nmap_scan", "masscan_scan"):
        with pytest.raises(ResourceExhaustedError) as refused:
            async with limiter.slot(tool, 60.0, "alice"):
                pass
        rules.append(refused.value.rule)
    assert rules == ["queue_full", "principal_queue_full"]
    for call in held:
        await call.finish()
    await carol.finish()
    await alice.finish()


@pytest.mark.anyio
async def test_waiter_held_by_its_share_does_not_block_others_behind_it(clock: FakeClock, timer: FakeTimer) -> None:
    limiter = make(clock, timer, {"nmap_scan": ToolLimit(2, 4)}, per_principal=PrincipalLimit(max_running=1))
    log: list[str] = []
    alice = Call(limiter, "nmap_scan", 60.0, log, "alice", "alice")
    bob = Call(limiter, "nmap_scan", 60.0, log, "bob", "bob")
    await alice.started()
    await bob.started()
    alice_again = Call(limiter, "nmap_scan", 60.0, log, "alice-again", "alice")
    await until_queued(limiter, "nmap_scan", 1)
    carol = Call(limiter, "nmap_scan", 60.0, log, "carol", "carol")
    await until_queued(limiter, "nmap_scan", 2)
    await bob.finish()  # a tool slot frees; alice is still at her share
    await carol.started()
    assert limiter.queued("nmap_scan") == 1
    await alice.finish()
    await alice_again.started()
    assert log == ["alice", "bob", "carol", "alice-again"]
    await carol.finish()
    await alice_again.finish()


@pytest.mark.anyio
async def test_calls_without_principal_have_no_share(clock: FakeClock, timer: FakeTimer) -> None:
    limiter = make(clock, timer, {"nmap_scan": ToolLimit(3, 0)}, per_principal=PrincipalLimit(1, 0))
    log: list[str] = []
    calls = [Call(limiter, "nmap_scan", 60.0, log, f"stdio{i}") for i in range(3)]
    for call in calls:
        await call.started()
    for call in calls:
        await call.finish()


@pytest.mark.parametrize(("max_running", "max_queued"), [(0, 1), (1, -1)])
def test_principal_limit_rejects_nonsense(max_running: int, max_queued: int) -> None:
    with pytest.raises(ValueError, match="max_running"):
        PrincipalLimit(max_running=max_running, max_queued=max_queued)
