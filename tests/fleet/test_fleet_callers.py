"""A fleet job carries its caller as the front saw it (subject, the claims its engagements name,
token scopes), and the segment re-checks the job as that caller, on a real nats-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.engagements import engagement, open_window, with_engagements
from support.fleet import SEALS, FleetLab, sealed
from support.listeners import tcp_listener
from support.nats import NatsServer
from support.runners import SpyRunner

from appliance.policy.engagement_checks import Caller
from appliance.tools import TOOLS
from appliance.tools.nmap import NmapRequest

pytestmark = pytest.mark.anyio

NMAP = TOOLS["nmap_scan"]
# Members by a group claim only: before jobs carried their caller, the segment re-checked them
# as the bare principal and refused every one (no claim, no membership).
BY_GROUP = with_engagements(
    engagement("blue", networks=("127.0.0.0/24",), claims={"groups": ["blue-team"]}, window=open_window())
)


async def test_an_engagement_by_claim_admits_the_job_on_the_segment_too(nats: NatsServer, tmp_path: Path) -> None:
    with FleetLab(nats.url, tmp_path, policy=BY_GROUP) as lab:
        seg_a = lab.segment("seg-a", "seg-a-1")
        front = lab.front()
        caller = Caller("bob", subject="bob", claims={"groups": ["blue-team"], "email": "bob@lab"}, scopes=())
        assert seg_a.worker is not None
        with tcp_listener() as port:
            loop = asyncio.create_task(seg_a.worker.run())
            try:
                report = await front.service.call(
                    NMAP,
                    NmapRequest(target="127.0.0.1", ports=str(port), wait_seconds=30),
                    "rid-1",
                    principal="bob",
                    caller=caller,
                    scopes=["scan:read", "scan:run"],
                )
            finally:
                seg_a.worker.stopping.set()
                await asyncio.wait({loop}, timeout=10)
        assert report.status == "completed", report
        job = front.parts.store.get(report.scan_id or "")
        assert job is not None
        # Only the claims an engagement names leave the front.
        scopes = ["scan:read", "scan:run"]
        assert job.caller == {"subject": "bob", "claims": {"groups": ["blue-team"]}, "scopes": scopes}


async def test_a_segment_checks_the_recorded_token_scopes_and_starts_nothing_without_them(
    nats: NatsServer, tmp_path: Path
) -> None:
    with FleetLab(nats.url, tmp_path) as lab:
        spy = SpyRunner()
        seg_a = lab.segment("seg-a", "seg-a-1", runner=spy)
        front = lab.front()
        queued = await front.service.call(
            NMAP,
            NmapRequest(target="127.0.0.1", ports="80", wait_seconds=0),
            "rid-1",
            principal="carol",
            scopes=["scan:read", "scan:run"],
        )
        store = seg_a.parts.store
        job = store.get(queued.scan_id or "")
        assert job is not None and job.caller is not None
        # Rewritten on the bus: the same job, its token's scopes stripped of scan:run.
        job.caller = {**job.caller, "scopes": ["scan:read"]}
        store.put(sealed(job))  # sealed again (a front key's holder): the segment's own scope check
        claimed = store.claim(job.scan_id, "seg-a-1", job.updated_at + 1)
        assert claimed is not None
        assert await seg_a.service.adopt(claimed, SEALS.check) is None
        assert spy.calls == []
        ended = store.get(job.scan_id)
        assert ended is not None and ended.state == "failed"
        assert ended.error is not None and ended.error["rule"] == "insufficient_scope"
