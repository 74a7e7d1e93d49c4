"""Engagement budgets of a fleet on a real nats-server: reserved at the front in the job bucket,
shared by every front, found (or not) by the segment that runs the job (appliance/fleet/budgets.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from support.engagements import engagement, open_window, with_engagements
from support.fleet import SEALS, FleetLab, sealed
from support.listeners import tcp_listener
from support.nats import NatsServer
from support.runners import SpyRunner
from support.waiting import eventually

from appliance.errors import ResourceExhaustedError, ValidationError
from appliance.fleet.budgets import FleetBudgets
from appliance.jobs.model import Job
from appliance.tools import TOOLS
from appliance.tools.nmap import NmapRequest

pytestmark = pytest.mark.anyio

NMAP = TOOLS["nmap_scan"]
TARGET = "web.seg-a.lab.internal"


def red_team(concurrent: int) -> dict[str, object]:
    red = engagement(
        "red",
        ["alice"],
        networks=("127.0.0.0/24",),  # what seg-a resolves the name to
        suffixes=(".seg-a.lab.internal",),
        window=open_window(),
        budget={"concurrent_scans": concurrent},
    )
    return with_engagements(red)


@pytest.fixture
def budgeted(nats: NatsServer, tmp_path: Path):  # type: ignore[no-untyped-def]
    lab = FleetLab(nats.url, tmp_path, policy=red_team(1))
    yield lab
    lab.close()


def slow(port: int, wait: float = 0) -> NmapRequest:
    return NmapRequest(target=TARGET, ports=str(port), wait_seconds=wait)


async def test_two_fronts_share_one_engagement_budget_and_the_end_of_the_job_frees_it(budgeted: FleetLab) -> None:
    # seg-a is advertised, its loop not started yet: the first job waits in the queue holding the
    # engagement's one place.
    seg_a = budgeted.segment("seg-a", "seg-a-1", resolves={TARGET: ["127.0.0.1"]})
    front_1, front_2 = budgeted.front(), budgeted.front()
    budgets = FleetBudgets(front_1.parts.store)
    first = await front_1.service.call(NMAP, slow(1), "rid-1", principal="alice")
    assert first.status == "queued"
    assert set(budgets.usage("red").held) == {first.scan_id}
    with pytest.raises(ResourceExhaustedError) as refused:
        await front_2.service.call(NMAP, slow(1), "rid-2", principal="alice")
    assert refused.value.rule == "engagement_budget_exhausted"
    assert "1 scans are queued or running" in refused.value.message
    assert '"rule": "engagement_budget_exhausted"' in front_2.lab.audit.getvalue()
    # The segment runs the queued job; its end gives the place back, and front 2 admits again.
    assert seg_a.worker is not None
    with tcp_listener() as port:
        loop = asyncio.create_task(seg_a.worker.run())
        try:
            await eventually(lambda: (j := front_1.parts.store.get(first.scan_id)) is not None and j.finished, 30)
            await eventually(lambda: not budgets.usage("red").held, 10, what="the place given back")
            again = await front_2.service.call(NMAP, slow(port, 30), "rid-4", principal="alice")
        finally:
            seg_a.worker.stopping.set()
            await asyncio.wait({loop}, timeout=10)
    assert again.status == "completed"
    assert not budgets.usage("red").held


async def test_a_job_no_front_admitted_is_refused_by_the_segment_and_starts_nothing(budgeted: FleetLab) -> None:
    spy = SpyRunner()
    seg_a = budgeted.segment("seg-a", "seg-a-1", resolves={TARGET: ["127.0.0.1"]}, runner=spy)
    store = seg_a.parts.store
    now = time.time()
    forged = Job(
        scan_id="scan_forged0000000000000001",
        tool="nmap_scan",
        target=TARGET,
        scanned_address=TARGET,
        principal="alice",
        request={"target": TARGET, "ports": "80"},
        argv=["nmap", TARGET],
        state="queued",
        created_at=now,
        updated_at=now,
        request_id="forged",
        engagement="red",
        segment="seg-a",
    )
    forged.move("queued", now)
    store.put(sealed(forged))  # sealed (a front key's holder): the segment's own budget check
    claimed = store.claim(forged.scan_id, "seg-a-1", now)
    assert claimed is not None
    assert await seg_a.service.adopt(claimed, SEALS.check) is None
    assert spy.calls == []
    final = store.get(forged.scan_id)
    assert final is not None and final.state == "failed"
    assert final.error is not None and final.error["rule"] == "engagement_budget_not_reserved"
    assert '"rule": "engagement_budget_not_reserved"' in seg_a.lab.audit.getvalue()


async def test_a_place_whose_release_was_lost_is_dropped_when_the_engagement_is_full(budgeted: FleetLab) -> None:
    budgeted.segment("seg-a", "seg-a-1")  # advertised only: nothing runs
    front = budgeted.front()
    store = front.parts.store
    budgets = FleetBudgets(store)
    first = await front.service.call(NMAP, slow(1), "rid-1", principal="alice")
    # Its segment appliance died after ending the job and before giving the place back.
    job = store.get(first.scan_id)
    assert job is not None
    job.move("interrupted", time.time(), "test: ended without a release")
    store.put(job)
    assert set(budgets.usage("red").held) == {first.scan_id}
    second = await front.service.call(NMAP, slow(1), "rid-2", principal="alice")
    assert set(budgets.usage("red").held) == {second.scan_id}


async def test_admissions_racing_on_two_fronts_never_exceed_the_budget(nats: NatsServer, tmp_path: Path) -> None:
    with FleetLab(nats.url, tmp_path, policy=red_team(3)) as lab:
        lab.segment("seg-a", "seg-a-1")  # advertised only: nothing runs
        fronts = [lab.front() for _ in range(3)]

        async def admit(index: int) -> str:
            front = fronts[index % 3]
            try:
                await front.service.call(NMAP, slow(1), f"rid-{index}", principal="alice")
            except ResourceExhaustedError as exc:
                return exc.rule
            return "admitted"

        outcomes = await asyncio.gather(*(admit(i) for i in range(9)))
        assert outcomes.count("admitted") == 3
        assert outcomes.count("engagement_budget_exhausted") == 6
        assert len(FleetBudgets(fronts[0].parts.store).usage("red").held) == 3


async def test_a_job_its_segment_refuses_gives_its_place_back_at_once(budgeted: FleetLab) -> None:
    # seg-a resolves the name into seg-b's block, which seg-a's own policy denies: refused there.
    seg_a = budgeted.segment("seg-a", "seg-a-1", resolves={TARGET: ["127.0.1.5"]}, runner=SpyRunner())
    front = budgeted.front()
    budgets = FleetBudgets(front.parts.store)
    assert seg_a.worker is not None
    loop = asyncio.create_task(seg_a.worker.run())
    try:
        with pytest.raises(ValidationError) as refused:  # the segment's refusal, relayed by the front
            await front.service.call(NMAP, slow(80, 30), "rid-1", principal="alice")
    finally:
        seg_a.worker.stopping.set()
        await asyncio.wait({loop}, timeout=10)
    assert refused.value.rule == "target_hostname_resolves_out_of_scope"
    assert budgets.usage("red").held == {}


async def test_a_sharded_scan_runs_on_its_parents_one_place_and_gives_it_back_at_its_end(budgeted: FleetLab) -> None:
    # 127.0.0.64/27 in four shards of 8: one engagement place (concurrent_scans 1) for the block.
    sharding = {"fleet": {"shard_above_hosts": 8, "shard_hosts": 8}}
    seg_a = budgeted.segment("seg-a", "seg-a-1")
    front = budgeted.front(sharding)
    budgets = FleetBudgets(front.parts.store)
    assert seg_a.worker is not None
    with tcp_listener(host="127.0.0.70") as port:
        loop = asyncio.create_task(seg_a.worker.run())
        try:
            report = await front.service.call(
                NMAP, NmapRequest(target="127.0.0.64/27", ports=str(port), wait_seconds=60), "rid-1", principal="alice"
            )
            await eventually(lambda: not budgets.usage("red").held, 10, what="the parent's place given back")
        finally:
            seg_a.worker.stopping.set()
            await asyncio.wait({loop}, timeout=10)
    assert report.status == "completed"
    open_hosts = [h.address for h in report.hosts if any(p.state == "open" for p in h.ports)]  # type: ignore[attr-defined]
    assert open_hosts == ["127.0.0.70"]
    assert "engagement_budget_not_reserved" not in seg_a.lab.audit.getvalue()
    assert budgets.usage("red").hosts[0][2] == 32  # the whole block counted once, at the front


async def test_a_job_the_queue_refuses_gives_its_place_back_at_once(nats: NatsServer, tmp_path: Path) -> None:
    with FleetLab(nats.url, tmp_path, policy=red_team(4), max_jobs=1) as lab:
        lab.segment("seg-a", "seg-a-1")  # advertised only: the first job stays queued
        front = lab.front()
        budgets = FleetBudgets(front.parts.store)
        first = await front.service.call(NMAP, slow(1), "rid-1", principal="alice")
        with pytest.raises(ResourceExhaustedError) as refused:
            await front.service.call(NMAP, slow(2), "rid-2", principal="alice")
        assert refused.value.rule == "queue_full"
        assert set(budgets.usage("red").held) == {first.scan_id}  # the refused job holds none
