"""A fleet front end to end on a real nats-server: routing, the hand-over, following the record.

The segments run real nmap against listeners these tests start on loopback addresses; the
fronts hold the spy runner, so a front that started a scanner itself would fail the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from support.fleet import FleetLab, running, until
from support.listeners import tcp_listener
from support.nats import NatsServer, small_payload_nats_server
from support.runners import GatedRunner, SpyRunner, nmap_xml_with_open_ports
from support.traces import recorded_spans

from appliance.errors import ResourceExhaustedError, ValidationError
from appliance.tools import TOOLS
from appliance.tools.nmap import NmapRequest

pytestmark = pytest.mark.anyio

NMAP = TOOLS["nmap_scan"]


async def test_scans_of_both_segments_run_on_their_segment_and_the_front_runs_nothing(fleet: FleetLab) -> None:
    front = fleet.front()
    seg_a = fleet.segment("seg-a", "seg-a-1", resolves={"web.seg-a.lab.internal": ["127.0.0.1"]})
    seg_b = fleet.segment("seg-b", "seg-b-1")
    with tcp_listener() as port_a, tcp_listener(host="127.0.1.5") as port_b:
        async with running(seg_a, seg_b):
            by_name = await front.service.call(
                NMAP, NmapRequest(target="web.seg-a.lab.internal", ports=str(port_a), wait_seconds=60), "rid-a"
            )
            by_address = await front.service.call(
                NMAP, NmapRequest(target="127.0.1.5", ports=str(port_b), wait_seconds=60), "rid-b"
            )
    assert by_name.status == "completed"
    assert [(p.port, p.state) for p in by_name.hosts[0].ports] == [(port_a, "open")]  # type: ignore[attr-defined]
    assert by_address.status == "completed"
    assert [(p.port, p.state) for p in by_address.hosts[0].ports] == [(port_b, "open")]  # type: ignore[attr-defined]
    assert front.lab.runner.calls == []  # the spy: the front started no scanner
    stored_a = front.parts.store.get(by_name.scan_id)
    stored_b = front.parts.store.get(by_address.scan_id)
    assert stored_a is not None and stored_b is not None
    assert (stored_a.segment, stored_a.runner, stored_a.scanned_address) == ("seg-a", "seg-a-1", "127.0.0.1")
    assert (stored_b.segment, stored_b.runner) == ("seg-b", "seg-b-1")
    # Only seg-a's resolver was asked, and only for its own name: the front resolved nothing.
    assert seg_a.lab.resolver.calls == ["web.seg-a.lab.internal"]
    assert seg_b.lab.resolver.calls == []
    dispatched = [line for line in front.lab.audit_lines() if line.get("event") == "dispatched"]
    assert [(line["scan_id"], line["segment"]) for line in dispatched] == [
        (by_name.scan_id, "seg-a"),
        (by_address.scan_id, "seg-b"),
    ]
    started = [line for line in seg_a.lab.audit_lines() if line.get("event") == "start"]
    assert [line["scan_id"] for line in started] == [by_name.scan_id]
    assert started[0]["argv"][-1] == "127.0.0.1"  # the address seg-a resolved, as it ran
    assert fleet.queue_messages() == 0  # every job message acked


async def test_a_target_in_no_segment_is_refused_at_the_front_and_nothing_is_queued(fleet: FleetLab) -> None:
    front = fleet.front()
    fleet.segment("seg-a", "seg-a-1")
    fleet.segment("seg-b", "seg-b-1")
    with pytest.raises(ValidationError) as refused:
        await front.service.call(NMAP, NmapRequest(target="127.0.2.9", ports="80"), "rid-none")
    assert refused.value.rule == "target_in_no_segment"
    assert "seg-a (127.0.0.0/24, *.seg-a.lab.internal)" in refused.value.message
    assert "seg-b (127.0.1.0/24, *.seg-b.lab.internal)" in refused.value.message
    assert fleet.queue_messages() == 0
    assert front.parts.store.count() == 0
    [line] = front.lab.audit_lines()
    assert (line["verdict"], line["rule"]) == ("refused", "target_in_no_segment")


async def test_a_name_under_no_segment_suffix_is_refused_without_a_lookup(fleet: FleetLab) -> None:
    front = fleet.front()
    fleet.segment("seg-a", "seg-a-1")
    with pytest.raises(ValidationError) as refused:
        await front.service.call(NMAP, NmapRequest(target="web.seg-b.lab.internal", ports="80"), "rid-b")
    assert refused.value.rule == "target_in_no_segment"
    assert front.lab.resolver.calls == []
    assert fleet.queue_messages() == 0


async def test_a_scan_started_through_one_front_is_followed_through_the_other(fleet: FleetLab) -> None:
    first, second = fleet.front(), fleet.front()
    seg_a = fleet.segment("seg-a", "seg-a-1")
    with tcp_listener() as port:
        async with running(seg_a):
            started = await first.service.call(
                NMAP, NmapRequest(target="127.0.0.1", ports=str(port), wait_seconds=0), "rid-1"
            )
            assert started.status in ("queued", "running")
            seen = second.service.jobs.visible(started.scan_id, "stdio")
            assert seen.scan_id == started.scan_id
            final = await second.service.jobs.wait(seen, 60)  # get_scan's wait: the record's changes
    assert final.state == "completed"
    assert final.result is not None
    assert [p["port"] for p in final.result["hosts"][0]["ports"]] == [port]


async def test_a_name_the_segment_resolves_out_of_its_scope_ends_failed_with_the_segments_rule(
    fleet: FleetLab,
) -> None:
    # The front routes the name by its suffix to seg-a without resolving it; seg-a's resolver
    # answers with seg-b's address, which seg-a's own policy denies: the segment's check
    # decides, nothing runs (seg-a holds the spy runner), and the front reports the refusal.
    front = fleet.front()
    seg_a = fleet.segment("seg-a", "seg-a-1", runner=SpyRunner(), resolves={"web.seg-a.lab.internal": ["127.0.1.5"]})
    async with running(seg_a):
        with pytest.raises(ValidationError) as refused:
            await front.service.call(
                NMAP, NmapRequest(target="web.seg-a.lab.internal", ports="80", wait_seconds=30), "rid-x"
            )
    assert refused.value.rule == "target_hostname_resolves_out_of_scope"
    scan_id = refused.value.details["scan_id"]
    stored = front.parts.store.get(scan_id)
    assert stored is not None
    assert stored.state == "failed"
    assert seg_a.lab.runner.calls == []
    [line] = [line for line in seg_a.lab.audit_lines() if line.get("verdict") == "refused"]
    assert (line["scan_id"], line["segment"]) == (scan_id, "seg-a")
    assert line["rule"] == "target_hostname_resolves_out_of_scope"
    assert fleet.queue_messages() == 0


async def test_the_segments_job_span_joins_the_fronts_trace_through_the_message_headers(
    fleet: FleetLab,
) -> None:
    front = fleet.front()
    seg_a = fleet.segment("seg-a", "seg-a-1")
    tracer = trace.get_tracer("tests")
    with recorded_spans() as exporter, tcp_listener() as port:
        async with running(seg_a):
            # What the SDK's request span is on an HTTP front (no SDK server here: one of ours).
            with tracer.start_as_current_span("tools/call nmap_scan") as request:
                report = await front.service.call(
                    NMAP, NmapRequest(target="127.0.0.1", ports=str(port), wait_seconds=60), "rid-t"
                )
        spans = exporter.get_finished_spans()
    assert report.status == "completed"
    jobs = [span for span in spans if span.name == "scan nmap_scan"]
    assert len(jobs) == 2  # the front's (it follows the record) and the segment's (the run)
    [segment_job] = [span for span in jobs if _has_run_under(spans, span)]  # the scanner ran under it
    [front_job] = [span for span in jobs if span is not segment_job]
    context = request.get_span_context()
    for job in (front_job, segment_job):
        assert job.context is not None
        assert job.context.trace_id == context.trace_id  # one trace across front and segment
        assert job.parent is not None
        assert job.parent.span_id == context.span_id  # both under the request the front answered


def _has_run_under(spans: Sequence[ReadableSpan], job: ReadableSpan) -> bool:
    assert job.context is not None
    return any(
        span.name == "scanner run" and span.parent is not None and span.parent.span_id == job.context.span_id
        for span in spans
    )


async def test_a_full_queue_refuses_the_scan_with_queue_full_and_ends_its_job_failed(
    nats: NatsServer, tmp_path: Path
) -> None:
    with FleetLab(nats.url, tmp_path, max_jobs=1) as lab:
        front = lab.front()
        lab.segment("seg-a", "seg-a-1")  # advertised, its loop not running: the first job stays queued
        first = await front.service.call(NMAP, NmapRequest(target="127.0.0.1", ports="80", wait_seconds=0), "rid-1")
        with pytest.raises(ResourceExhaustedError) as refused:
            await front.service.call(NMAP, NmapRequest(target="127.0.0.2", ports="80", wait_seconds=0), "rid-2")
        assert refused.value.rule == "queue_full"
        stored = front.parts.store.get(refused.value.details["scan_id"])
        assert stored is not None
        assert (stored.state, stored.error and stored.error["rule"]) == ("failed", "queue_full")
        assert lab.queue_messages() == 1  # the first, still queued and never dropped
        assert first.status == "queued"


SHARE_OF_TWO = {"limits": {"concurrency": {"per_principal": {"running": 1, "queued": 1}}}}


async def test_a_principal_past_its_share_of_the_whole_fleet_is_refused_at_either_front(fleet: FleetLab) -> None:
    # seg-a is advertised, its loop not started: every job admitted stays queued (unfinished).
    seg_a = fleet.segment("seg-a", "seg-a-1", runner=SpyRunner())
    front_1, front_2 = fleet.front(SHARE_OF_TWO), fleet.front(SHARE_OF_TWO)
    first = await front_1.service.call(NMAP, NmapRequest(target="127.0.0.7", wait_seconds=0), "r1", principal="alice")
    second = await front_2.service.call(NMAP, NmapRequest(target="127.0.0.8", wait_seconds=0), "r2", principal="alice")
    assert (first.status, second.status) == ("queued", "queued")
    with pytest.raises(ResourceExhaustedError) as refused:  # her share counts the other front's job too
        await front_1.service.call(NMAP, NmapRequest(target="127.0.0.9", wait_seconds=0), "r3", principal="alice")
    assert refused.value.rule == "principal_queue_full"
    assert "alice already has 2 scans queued or running in the fleet" in refused.value.message
    assert "per_principal" in refused.value.message
    assert "Wait for your scans to finish" in refused.value.recovery_suggestion
    [line] = [line for line in front_1.lab.audit_lines() if line.get("rule") == "principal_queue_full"]
    assert (line["verdict"], line["principal"], line["tool"]) == ("refused", "alice", "nmap_scan")
    assert "scan_id" not in line  # refused before a job exists: nothing recorded, nothing queued
    assert fleet.queue_messages() == 2
    # Another team is not held up by hers.
    bob = await front_2.service.call(NMAP, NmapRequest(target="127.0.0.9", wait_seconds=0), "r4", principal="bob")
    assert bob.status == "queued"
    assert fleet.queue_messages() == 3
    # Her scans' ends free her share: cancelled while queued, they end when seg-a claims them
    # (the spy runner: nothing starts; bob's is cancelled too, to keep it so).
    for scan_id, owner in ((first.scan_id, "alice"), (second.scan_id, "alice"), (bob.scan_id, "bob")):
        assert front_1.service.jobs.cancel(front_1.service.jobs.visible(scan_id, owner))
    async with running(seg_a):
        for scan_id in (first.scan_id, second.scan_id, bob.scan_id):
            await until(seg_a, scan_id, "cancelled")
    again = await front_2.service.call(NMAP, NmapRequest(target="127.0.0.9", wait_seconds=0), "r5", principal="alice")
    assert again.status == "queued"
    assert seg_a.lab.runner.calls == []


async def test_a_result_over_the_servers_max_payload_reaches_both_fronts_whole(tmp_path: Path) -> None:
    # A record NATS cannot carry in one message used to be refused as `store_unwritable`, and the
    # segment wrote it again every second, the job `running` for ever. 256 kB messages here (1 MB
    # by default); 256 hosts with 30 open ports each make a result of about 400 kB. The scanner
    # is a fake that replays nmap's XML (it sends nothing).
    addresses = [f"127.0.0.{n}" for n in range(256)]
    scanner = GatedRunner(stdout=nmap_xml_with_open_ports(addresses, 30))
    scanner.gate.set()
    (tmp_path / "nats").mkdir()
    with small_payload_nats_server(tmp_path / "nats", 256 * 1024) as server, FleetLab(server.url, tmp_path) as lab:
        front, other = lab.front(), lab.front()
        seg_a = lab.segment("seg-a", "seg-a-1", runner=scanner)
        async with running(seg_a):
            report = await front.service.call(
                NMAP, NmapRequest(target="127.0.0.0/24", ports="1-30", wait_seconds=60), "rid-big"
            )
        assert report.status == "completed"
        found = {(h.address, len(h.ports)) for h in report.hosts}  # type: ignore[attr-defined]
        assert found == {(address, 30) for address in addresses}
        stored = other.parts.store.get(report.scan_id)
        assert stored is not None and stored.state == "completed" and stored.result is not None
        assert len(stored.result["hosts"]) == 256
        assert len(other.parts.store.read_value(f"job.{report.scan_id}") or b"") < 8192


async def test_a_segments_rescan_looks_its_previous_scan_up_while_the_scanner_runs(
    fleet: FleetLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two reads of NATS (README "Store"), made while the scanner runs instead of between its end
    # and the answer (issue 13's latency); none at the end.
    scanner = GatedRunner(stdout=nmap_xml_with_open_ports(["127.0.0.1"], 2))
    scanner.gate.set()
    front = fleet.front()
    seg_a = fleet.segment("seg-a", "seg-a-1", runner=scanner)
    store = seg_a.parts.store
    looked_up_while_gated: list[bool] = []
    ahead = store.previous_completed_id_soon

    async def spy(tool: str, target: str, principal: str, before: str) -> str | None:
        looked_up_while_gated.append(not scanner.gate.is_set())
        return await ahead(tool, target, principal, before)

    def not_at_the_end(*_: object) -> str | None:
        raise AssertionError("the previous scan was looked up again at the end")

    monkeypatch.setattr(store, "previous_completed_id_soon", spy)
    monkeypatch.setattr(store, "previous_completed_id", not_at_the_end)
    request = NmapRequest(target="127.0.0.1", ports="1-2", wait_seconds=60)
    async with running(seg_a):
        first = await front.service.call(NMAP, request, "rid-1")
        scanner.gate.clear()
        scanner.started.clear()
        rescan = await front.service.call(NMAP, request.model_copy(update={"wait_seconds": 0}), "rid-2")
        await asyncio.wait_for(scanner.started.wait(), 10)
        await until(seg_a, rescan.scan_id or "", "running")
        scanner.gate.set()
        ended = await until(seg_a, rescan.scan_id or "", "completed")
    assert first.status == "completed"
    assert looked_up_while_gated == [False, True]  # the first scan's gate was open from the start
    assert ended.result is not None
    assert ended.result["changes_since_previous"]["previous_scan_id"] == first.scan_id
