"""Security of the fleet's bus (fleet issue item 6; README "Fleet", bus security), against a real
nats-server started from deploy/nats/nats.conf with client TLS and the users scripts/up writes.

Each forbidden action is tried with the real client on a user's own connection and must be
refused by the server (a denied request gets no answer: the connections that try one here wait
one second, not the appliance's ten); what the action would have changed is then read back
through another user and found unchanged. The allowed paths are the appliance's own code: a real
nmap scan of a loopback listener through front -> NATS -> segment under their users.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from support.bus_security import SecuredBus, nats_auth, secured_nats
from support.fleet import FleetLab, FleetNames, record_seals, started_bus
from support.listeners import tcp_listener
from support.runners import GatedRunner, nmap_xml_with_open_ports

from appliance.config import Settings, load_settings
from appliance.errors import ApplianceError, ConfigError, ExecutionError
from appliance.fleet.bus import BusSettings, BusThread, BusUnauthorized, BusUnavailable
from appliance.fleet.records import published_key
from appliance.fleet.roles import bus_settings, connect
from appliance.fleet.routing import SegmentScope
from appliance.tools import TOOLS
from appliance.tools.nmap import NmapRequest

pytestmark = pytest.mark.anyio

NMAP = TOOLS["nmap_scan"]
# A probe of a forbidden subject waits this long for the answer that never comes.
PROBE_SECONDS = 1.0
# nats-server's error code for a consumer whose filter is not the one its create subject names.
FILTER_MISMATCH = 10131


def probe_bus(secured: SecuredBus, user: str) -> BusThread:
    return started_bus(
        secured.url, operation_timeout_seconds=PROBE_SECONDS, transient_retry_seconds=0.0, **secured.settings(user)
    )


def refused(bus: BusThread, operation: Any, what: str) -> str:
    """Run `operation` on `bus`; it must fail, and the server must have said why (a permissions
    violation naming the subject). Returns the server's words (nats-py lowercases them)."""
    with pytest.raises((ApplianceError, nats.errors.Error)):
        bus.call(operation, what)
    refusal = bus.recent_refusal()
    assert refusal is not None, f"{what}: failed, but the server sent no permissions violation"
    return refusal


async def running(member: Any) -> asyncio.Task[None]:
    assert member.worker is not None
    return asyncio.create_task(member.worker.run())


# --- the allowed paths ------------------------------------------------------------------------


async def test_a_real_scan_runs_front_to_segment_under_their_own_users_over_tls(lab: FleetLab) -> None:
    front = lab.front()
    seg_a = lab.segment("seg-a", "seg-a-1", resolves={"web.seg-a.lab.internal": ["127.0.0.1"]})
    assert front.parts.bus.settings.user == "front" and seg_a.parts.bus.settings.user == "segment-seg-a"
    assert all(url.startswith("tls://") for url in front.parts.bus.settings.servers)
    with tcp_listener() as port:
        worker = await running(seg_a)
        try:
            result = await front.service.call(
                NMAP, NmapRequest(target="web.seg-a.lab.internal", ports=str(port), wait_seconds=60), "rid-secure"
            )
        finally:
            assert seg_a.worker is not None
            seg_a.worker.stopping.set()
            await asyncio.wait({worker}, timeout=10)
        seg_a.worker.withdraw()  # a clean stop's delete marker, on its own key
    assert result.status == "completed"
    assert [(p.port, p.state) for p in result.hosts[0].ports] == [(port, "open")]  # type: ignore[attr-defined]
    # Nothing on the way was refused (a refused subscription, the front's watch, fails quietly).
    assert front.parts.bus.recent_refusal() is None and seg_a.parts.bus.recent_refusal() is None
    assert front.lab.runner.calls == []  # the front started no scanner
    stored = front.parts.store.get(result.scan_id)
    assert stored is not None and (stored.segment, stored.runner) == ("seg-a", "seg-a-1")
    assert front.parts.store.raw(result.scan_id)  # the segment wrote the raw output, the front reads it
    assert lab.queue_messages() == 0  # acked under seg-a's user
    assert [s.name for s in front.parts.registry.view().segments] == []  # withdrawn


async def test_a_sharded_scan_runs_to_its_merged_result_under_the_users_permissions(lab: FleetLab) -> None:
    """Sharding's extra bus traffic (the front queues the shards; the segments merge them into the
    parent's record) stays within the users' permissions."""
    front = lab.front({"fleet": {"shard_above_hosts": 8, "shard_hosts": 8}})
    one_at_a_time = {"limits": {"concurrency": {"global": {"running": 1}}}}
    seg_1 = lab.segment("seg-a", "seg-a-1", one_at_a_time)
    seg_2 = lab.segment("seg-a", "seg-a-2", one_at_a_time)
    with tcp_listener(host="127.0.0.70") as first, tcp_listener(host="127.0.0.75") as second:
        workers = [await running(seg_1), await running(seg_2)]
        try:
            request = NmapRequest(target="127.0.0.64/28", ports=f"{first},{second}", wait_seconds=120)
            result = await front.service.call(NMAP, request, "rid-sharded")
        finally:
            for member in (seg_1, seg_2):
                assert member.worker is not None
                member.worker.stopping.set()
            await asyncio.wait(workers, timeout=10)
    assert result.status == "completed"
    found = {(host.address, port.port) for host in result.hosts for port in host.ports}  # type: ignore[attr-defined]
    assert found == {("127.0.0.70", first), ("127.0.0.75", second)}
    parent = front.parts.store.get(result.scan_id)
    assert parent is not None and parent.shards is not None and len(parent.shards) == 2
    assert all(member.parts.bus.recent_refusal() is None for member in (front, seg_1, seg_2))
    assert lab.queue_messages() == 0


async def test_a_segment_started_before_any_front_is_refused_naming_the_missing_bucket(lab: FleetLab) -> None:
    with pytest.raises(ExecutionError) as refusal:
        lab.segment("seg-a", "seg-a-1")  # no front yet: nothing is provisioned, and it may not create
    assert refusal.value.rule == "bus_not_provisioned"
    assert lab.names.jobs_bucket in refusal.value.message
    assert "Start a front first" in (refusal.value.recovery_suggestion or "")
    lab.front()
    lab.segment("seg-a", "seg-a-1")  # once a front made them, it opens them


# --- what a segment's user may not do ---------------------------------------------------------


async def test_a_segment_user_cannot_queue_a_job_even_for_its_own_segment(lab: FleetLab, secured: SecuredBus) -> None:
    front = lab.front()
    lab.segment("seg-a", "seg-a-1")
    bus = probe_bus(secured, "segment-seg-a")
    try:

        async def forge() -> None:
            await bus.js.publish(lab.queue.subject_of("seg-a"), b'{"scan_id":"scan_00000000000000000000"}')

        refusal = refused(bus, forge, "publish a forged job")
    finally:
        bus.close()
    assert f'publish to "{lab.queue.subject_of("seg-a")}"' in refusal
    assert front.parts.queue.messages() == 0


async def test_a_segment_user_cannot_fetch_or_ack_another_segments_jobs(lab: FleetLab, secured: SecuredBus) -> None:
    front = lab.front()
    seg_b = lab.segment("seg-b", "seg-b-1")  # creates seg-b's consumer
    lab.segment("seg-a", "seg-a-1")
    await front.parts.queue.publish("seg-b", "scan_0123456789abcdef0123")
    bus = probe_bus(secured, "segment-seg-a")
    stream, consumer = lab.queue.stream, lab.queue.consumer_of("seg-b")
    try:

        async def fetch() -> None:
            subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
            await bus.nc.request(subject, json.dumps({"batch": 1}).encode(), timeout=PROBE_SECONDS)

        refusal = refused(bus, fetch, "fetch from seg-b's consumer")
        assert f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}".lower() in refusal
    finally:
        bus.close()
    bus = probe_bus(secured, "segment-seg-a")  # a fresh one: its last refusal is the ack's
    try:

        async def ack() -> None:
            await bus.nc.publish(f"$JS.ACK.{stream}.{consumer}.1.1.1.0.0", b"+ACK")
            await bus.nc.flush(PROBE_SECONDS)
            await asyncio.sleep(0.2)  # the server's -ERR arrives after the flush's pong at the latest
            if bus.recent_refusal() is not None:
                raise nats.errors.Error("refused")

        assert f"$JS.ACK.{stream}.{consumer}".lower() in refused(bus, ack, "ack a message of seg-b's consumer")
    finally:
        bus.close()
    # The job is still seg-b's: its own appliance gets it.
    delivery = await seg_b.parts.queue.consumer("seg-b").next(5.0)
    assert delivery is not None and delivery.scan_id == "scan_0123456789abcdef0123"


async def test_a_segment_user_cannot_bind_its_consumer_to_another_segments_subject(
    lab: FleetLab, secured: SecuredBus
) -> None:
    """The consumer-create subject it may use names its own filter, and the server refuses a
    config whose filter is another's: no consumer of seg-a ever holds seg-b's jobs."""
    lab.front()
    bus = probe_bus(secured, "segment-seg-a")
    stream, mine = lab.queue.stream, lab.queue.consumer_of("seg-a")
    try:

        async def create_on_the_allowed_subject_with_another_filter() -> dict[str, Any]:
            config = {"durable_name": mine, "name": mine, "filter_subject": lab.queue.subject_of("seg-b")}
            config |= {"ack_policy": "explicit"}
            subject = f"$JS.API.CONSUMER.CREATE.{stream}.{mine}.{lab.queue.subject_of('seg-a')}"
            reply = await bus.nc.request(
                subject, json.dumps({"stream_name": stream, "config": config}).encode(), timeout=5
            )
            return dict(json.loads(reply.data))

        answer = bus.call(create_on_the_allowed_subject_with_another_filter, "create a mis-filtered consumer")
        # The server's own check (JSConsumerCreateFilterSubjectMismatchErr): nothing was made.
        assert answer.get("error", {}).get("err_code") == FILTER_MISMATCH, answer

        async def create_with_another_filter() -> None:
            from nats.js.api import ConsumerConfig

            await bus.js.add_consumer(
                stream, ConsumerConfig(name=mine, durable_name=mine, filter_subject=lab.queue.subject_of("seg-b"))
            )

        refused(bus, create_with_another_filter, "create a consumer on seg-b's subject")
    finally:
        bus.close()


async def test_a_segment_user_cannot_advertise_another_segment(lab: FleetLab, secured: SecuredBus) -> None:
    front = lab.front()
    seg_a = lab.segment("seg-a", "seg-a-1")  # advertises seg-a: its own key is allowed
    forged = SegmentScope(name="seg-b", allow_networks=["127.0.0.0/8"], heartbeat_at=0.0)
    bus = probe_bus(secured, "segment-seg-a")
    try:
        key = f"$KV.{secured.names.segments_bucket}.seg.seg-b.seg-a-1"

        async def put() -> None:
            await bus.js.publish(key, forged.model_dump_json().encode())

        refusal = refused(bus, put, "advertise seg-b")
        assert f'publish to "{key.lower()}"' in refusal
    finally:
        bus.close()
    assert [s.name for s in front.parts.registry.view().segments] == ["seg-a"]
    seg_a.parts.registry.advertise(seg_a.parts.registry.view().segments[0], "seg-a-1")  # its own: still fine


async def test_a_segment_user_cannot_publish_a_record_key_for_another_segment(
    lab: FleetLab, secured: SecuredBus
) -> None:
    """What readers trust as seg-b's word (appliance.fleet.records) only seg-b's login can publish."""
    front = lab.front()
    seg_a = lab.segment("seg-a", "seg-a-1")  # published its own key at its start: allowed
    signer = seg_a.parts.store.records.signer if seg_a.parts.store.records is not None else None
    assert signer is not None and signer.writer == "segment:seg-a"
    bus = probe_bus(secured, "segment-seg-a")
    try:
        key = f"$KV.{secured.names.segments_bucket}.{published_key('seg-b', signer.key_id)}"

        async def put() -> None:
            await bus.js.publish(key, signer.publication("seg-a-1", 0.0))

        assert f'publish to "{key.lower()}"' in refused(bus, put, "publish a record key as seg-b")
    finally:
        bus.close()

    async def read(segment: str) -> bytes | None:
        return await front.parts.registry.published(segment, signer.key_id)

    assert front.parts.bus.call(lambda: read("seg-b"), "read seg-b's key") is None
    assert front.parts.bus.call(lambda: read("seg-a"), "read seg-a's key") is not None


async def test_a_segment_user_cannot_delete_or_create_streams_and_buckets(lab: FleetLab, secured: SecuredBus) -> None:
    front = lab.front()
    lab.segment("seg-a", "seg-a-1")
    bus = probe_bus(secured, "segment-seg-a")
    names = secured.names
    try:
        for stream in (
            lab.queue.stream,
            f"KV_{names.jobs_bucket}",
            f"KV_{names.live_bucket}",
            f"KV_{names.segments_bucket}",
        ):

            async def delete(stream: str = stream) -> None:
                await bus.js.delete_stream(stream)

            assert f"$JS.API.STREAM.DELETE.{stream}".lower() in refused(bus, delete, f"delete {stream}")

        async def create() -> None:
            await bus.js.add_stream(name=f"STOLEN_{names.suffix}", subjects=[f"stolen_{names.suffix}.>"])

        assert f"$JS.API.STREAM.CREATE.STOLEN_{names.suffix}".lower() in refused(bus, create, "create a stream")
    finally:
        bus.close()
    assert front.parts.queue.messages() == 0  # the stream answers: still there
    front.parts.registry.view()
    front.parts.store.count()


async def test_a_segment_user_cannot_read_another_users_replies(lab: FleetLab, secured: SecuredBus) -> None:
    lab.front()
    bus = probe_bus(secured, "segment-seg-a")
    try:

        async def listen() -> None:
            await bus.nc.subscribe("_INBOX.segment-seg-b.>")
            await bus.nc.flush(PROBE_SECONDS)
            await asyncio.sleep(0.2)
            if bus.recent_refusal() is not None:
                raise nats.errors.Error("refused")

        assert "subscription to" in refused(bus, listen, "subscribe to seg-b's replies")
    finally:
        bus.close()


# --- what a front's user may not do -----------------------------------------------------------


async def test_a_front_user_cannot_fetch_a_segments_jobs_or_write_the_registry(
    lab: FleetLab, secured: SecuredBus
) -> None:
    front = lab.front()
    seg_a = lab.segment("seg-a", "seg-a-1")
    await front.parts.queue.publish("seg-a", "scan_0123456789abcdef0456")
    bus = probe_bus(secured, "front")
    stream, consumer = lab.queue.stream, lab.queue.consumer_of("seg-a")
    try:

        async def fetch() -> None:
            subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
            await bus.nc.request(subject, json.dumps({"batch": 1}).encode(), timeout=PROBE_SECONDS)

        assert "consumer.msg.next" in refused(bus, fetch, "fetch seg-a's jobs")

        async def advertise() -> None:
            await bus.js.publish(f"$KV.{secured.names.segments_bucket}.seg.seg-a.front-1", b"{}")

        assert "$kv." in refused(bus, advertise, "advertise a segment")

        async def delete() -> None:
            await bus.js.delete_stream(stream)

        assert "stream.delete" in refused(bus, delete, "delete the job stream")
    finally:
        bus.close()
    delivery = await seg_a.parts.queue.consumer("seg-a").next(5.0)
    assert delivery is not None and delivery.scan_id == "scan_0123456789abcdef0456"


# --- start-up refusals, and no password in any log ------------------------------------------


def fleet_settings(secured: SecuredBus, tmp_path: Path, password: str, **extra: Any) -> Settings:
    secret = tmp_path / "nats_password"
    secret.write_text(password + "\n")
    return Settings(
        role="front",
        transport="http",
        nats_url=secured.url,
        nats_user="front",
        nats_password_file=secret,
        nats_ca_file=secured.secrets / "appliance_tls_ca.pem",
        nats_credentials_file=None,
        **extra,
    )  # type: ignore[call-arg]


def test_a_wrong_password_refuses_the_start_naming_the_rule_and_logs_no_password(
    secured: SecuredBus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "not-the-password-" + "x" * 26
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BusUnauthorized) as refusal:
        connect(fleet_settings(secured, tmp_path, wrong), record_seals(None))
    assert refusal.value.rule == "bus_unauthorized"
    assert "refused user front" in refusal.value.message
    assert "APPLIANCE_NATS_PASSWORD_FILE" in (refusal.value.recovery_suggestion or "")
    right = secured.password("front")
    settings = fleet_settings(secured, tmp_path, right)
    bus = BusThread(bus_settings(settings))  # the right one connects (the fleet's names are the test's)
    bus.start()
    try:
        assert bus.connected
        shown = json.dumps(settings.redacted()) + repr(bus.settings) + json.dumps(refusal.value.to_dict())
    finally:
        bus.close()
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "NATS refused this appliance's credentials" in logged
    for password in (wrong, right):
        assert password not in logged
        assert password not in shown


def test_a_client_that_does_not_trust_the_deployments_ca_gets_no_connection(secured: SecuredBus) -> None:
    """The server requires TLS: nats-py upgrades even a nats:// URL, and without the CA file it
    cannot verify the server's certificate, so no connection (and no password) goes through."""
    front = secured.settings("front")
    plain = BusSettings(
        servers=(secured.url.replace("tls://", "nats://"),),
        connect_timeout_seconds=1.0,
        user=front["user"],
        password=front["password"],
    )
    with pytest.raises(BusUnavailable) as refusal:
        BusThread(plain).start()
    assert refusal.value.rule == "bus_unavailable"
    assert "TLS handshake error" in (secured.server.store_dir.parent / "nats.log").read_text()


# --- what scripts/up's generator writes -------------------------------------------------------


def test_the_generators_default_names_are_the_appliances() -> None:
    from appliance.fleet.queue import STREAM, SUBJECT_PREFIX, QueueSettings
    from appliance.fleet.segments import BUCKET as SEGMENTS_BUCKET
    from appliance.jobs.jetstream import BUCKET, RAW_BUCKET, live_bucket_of

    names = nats_auth().BusNames()
    assert (names.stream, names.subject_prefix) == (STREAM, SUBJECT_PREFIX)
    assert (names.jobs_bucket, names.raw_bucket, names.segments_bucket) == (BUCKET, RAW_BUCKET, SEGMENTS_BUCKET)
    assert names.live_bucket == live_bucket_of(BUCKET)
    assert names.consumer("seg-a") == QueueSettings().consumer_of("seg-a")


# --- the settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"nats_password_file": None}, "APPLIANCE_NATS_USER needs APPLIANCE_NATS_PASSWORD_FILE"),
        ({"nats_credentials_file": Path("/dev/null")}, "not both"),
    ],
)
def test_a_nats_user_needs_its_password_file_and_no_creds_file_beside_it(
    tmp_path: Path, extra: dict[str, Any], problem: str
) -> None:
    password = tmp_path / "password"
    password.write_text("x" * 43)
    with pytest.raises(ConfigError, match=problem):
        load_settings(
            role="segment",
            segment="seg-a",
            nats_url="tls://127.0.0.1:4222",
            nats_user="segment-seg-a",
            **{"nats_password_file": password, "nats_credentials_file": None, **extra},
        )


def test_an_empty_password_file_refuses_the_start_without_connecting(tmp_path: Path) -> None:
    empty = tmp_path / "password"
    empty.write_text("\n")
    settings = load_settings(
        role="segment",
        segment="seg-a",
        nats_url="tls://127.0.0.1:1",
        nats_user="segment-seg-a",
        nats_password_file=empty,
        nats_credentials_file=None,
    )
    with pytest.raises(ConfigError, match="is empty") as refusal:
        connect(settings, record_seals("seg-a"))
    assert refusal.value.rule == "settings_invalid"


async def test_a_result_larger_than_a_message_is_written_and_read_under_the_roles_own_users(tmp_path: Path) -> None:
    # Its parts are keys of the job bucket: the segment writes them and reads them back (its
    # sweeps and folds read records), the fronts read them, each under its own permissions.
    scanner = GatedRunner(stdout=nmap_xml_with_open_ports([f"127.0.0.{n}" for n in range(256)], 30))
    scanner.gate.set()
    with secured_nats(tmp_path / "bus", FleetNames(), max_payload="256KB") as bus:
        lab = FleetLab(bus.url, tmp_path, names=bus.names, credentials=bus.credentials)
        try:
            front = lab.front()
            seg_a = lab.segment("seg-a", "seg-a-1", runner=scanner)
            worker = await running(seg_a)
            try:
                result = await front.service.call(
                    NMAP, NmapRequest(target="127.0.0.0/24", ports="1-30", wait_seconds=60), "rid-big"
                )
            finally:
                assert seg_a.worker is not None
                seg_a.worker.stopping.set()
                await asyncio.wait({worker}, timeout=10)
            assert result.status == "completed"
            assert len(result.hosts) == 256  # type: ignore[attr-defined]
            for member in (front, seg_a):
                stored = member.parts.store.get(result.scan_id)
                assert stored is not None and stored.result is not None and len(stored.result["hosts"]) == 256
            assert front.parts.bus.recent_refusal() is None and seg_a.parts.bus.recent_refusal() is None
        finally:
            lab.close()
