"""Scans as MCP resources: scan://{id} and scan://{id}/raw, listed per principal, with update
notices at each state change (resources/subscribe at 2025-11-25, subscriptions/listen at 2026-07-28).

In-process tests run the real server behind an in-process MCP client with a gated fake scanner
(the test decides when a "scan" ends; lab addresses only, nothing is sent). The HTTP tests run
`appliance serve` with two tokens and real nmap against a listener the test started on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError
from mcp_types import ResourceLink, SubscribeRequestParams
from support import (
    APPLIANCE,
    LOOPBACK_POLICY,
    GatedRunner,
    LabService,
    http_client,
    http_server,
    server_env,
    tcp_listener,
    write_policy,
)
from support.notices import ResourceNotices, subscribe, unsubscribe

from appliance.server import ScannerServer
from appliance.tools import TOOLS

pytestmark = pytest.mark.anyio
ERAS = ["legacy", "2026-07-28"]
XML = (Path(__file__).resolve().parent / "fixtures" / "nmap" / "connect.xml").read_bytes()
SCAN = {"target": "10.20.0.5", "ports": "18081-18083", "wait_seconds": 0}
# One nmap scan at a time, so a second one waits `queued` for the first.
ONE_AT_A_TIME = {"limits": {"concurrency": {"per_tool": {"nmap_scan": {"running": 1}}}}}


@dataclass
class Resources:
    lab: LabService
    server: ScannerServer
    runner: GatedRunner

    def client(self, mode: str = "legacy", notices: ResourceNotices | None = None) -> Client:
        handler = None if notices is None else notices.handler
        return Client(self.server.mcp, mode=mode, message_handler=handler)

    async def other_principals_scan(self) -> str:
        """A running scan of principal bob (the in-process client is the stdio principal)."""
        report = await self.lab.service.call(TOOLS["nmap_scan"], dict(SCAN), "bob-call", principal="bob")
        assert report.scan_id is not None
        return report.scan_id


@pytest.fixture
def resources(lab_service: Callable[..., LabService]) -> Callable[..., Resources]:
    def build(policy: dict[str, Any] | None = None) -> Resources:
        runner = GatedRunner(XML)
        lab = lab_service(policy, runner=runner, privilege_mode="connect")
        return Resources(lab, ScannerServer(lab.service), runner)

    return build


async def scan(client: Client, **arguments: Any) -> tuple[str, Any]:
    result = await client.call_tool("nmap_scan", {**SCAN, **arguments})
    assert not result.is_error, result.content
    return result.structured_content["scan_id"], result


async def read_json(client: Client, uri: str) -> dict[str, Any]:
    read = await client.read_resource(uri, cache_mode="bypass")
    [content] = read.contents
    assert content.mime_type == "application/json"
    body: dict[str, Any] = json.loads(content.text)  # type: ignore[union-attr]
    return body


def refusal(exc: pytest.ExceptionInfo[MCPError]) -> dict[str, Any]:
    data: dict[str, Any] = exc.value.error.data
    assert data["recovery_suggestion"]
    return data


# --- capabilities, templates, links ---------------------------------------------------------------


@pytest.mark.parametrize(("mode", "era"), [("legacy", "2025-11-25"), ("auto", "2026-07-28")])
async def test_server_advertises_resources_with_subscribe(
    resources: Callable[..., Resources], mode: str, era: str
) -> None:
    # legacy: the initialize result; auto: the server/discover probe, which negotiates the 2026 era.
    async with resources().client(mode) as client:
        version = client.protocol_version
        capability = client.server_capabilities.resources

    assert version == era
    assert capability is not None
    assert capability.subscribe is True


@pytest.mark.parametrize("mode", ERAS)
async def test_templates_name_the_result_and_the_raw_output(resources: Callable[..., Resources], mode: str) -> None:
    async with resources().client(mode) as client:
        listed = await client.list_resource_templates(cache_mode="bypass")

    shapes = {t.uri_template: t.mime_type for t in listed.resource_templates}
    assert shapes == {"scan://{scan_id}": "application/json", "scan://{scan_id}/raw": "text/plain"}


async def test_scan_get_scan_and_cancel_scan_results_carry_a_resource_link(resources: Callable[..., Resources]) -> None:
    r = resources()
    async with r.client() as client:
        scan_id, started = await scan(client)
        got = await client.call_tool("get_scan", {"scan_id": scan_id})
        cancelled = await client.call_tool("cancel_scan", {"scan_id": scan_id})
        dry = await client.call_tool("nmap_scan", {**SCAN, "dry_run": True})

    for result in (started, got, cancelled):
        links = [block for block in result.content if isinstance(block, ResourceLink)]
        assert [(str(link.uri), link.mime_type) for link in links] == [(f"scan://{scan_id}", "application/json")]
        assert links[0].name == "nmap_scan 10.20.0.5"
        assert result.content[0].type == "text"
    assert cancelled.structured_content["status"] == "cancelled"
    assert not any(isinstance(block, ResourceLink) for block in dry.content)  # a dry run is no job


# --- read ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ERAS)
async def test_read_scan_resource_is_the_object_get_scan_returns(
    resources: Callable[..., Resources], mode: str
) -> None:
    r = resources()
    r.runner.gate.set()
    async with r.client(mode) as client:
        scan_id, _ = await scan(client, wait_seconds=10)
        got = await client.call_tool("get_scan", {"scan_id": scan_id})
        body = await read_json(client, f"scan://{scan_id}")

    assert body["status"] == "completed"
    assert [p["port"] for p in body["hosts"][0]["ports"] if p["state"] == "open"] == [18081, 18082]
    assert body == got.structured_content


async def test_read_scan_resource_of_a_running_scan_shows_it_running(resources: Callable[..., Resources]) -> None:
    r = resources()
    async with r.client() as client:
        scan_id, _ = await scan(client)
        await asyncio.wait_for(r.runner.started.wait(), 5)
        body = await read_json(client, f"scan://{scan_id}")
        raw = await client.read_resource(f"scan://{scan_id}/raw", cache_mode="bypass")

    assert body["status"] == "running"
    assert body["scan_id"] == scan_id
    assert body["retry_after_seconds"] is not None
    assert "raw output is stored when it ends" in raw.contents[0].text  # type: ignore[union-attr]


async def test_read_of_a_failed_scan_is_its_error_object(resources: Callable[..., Resources]) -> None:
    r = resources()
    r.runner.stdout, r.runner.exit_code = b"", 1  # nmap exiting 1 with nothing to parse: the scan failed
    r.runner.gate.set()
    async with r.client() as client:
        result = await client.call_tool("nmap_scan", {**SCAN, "wait_seconds": 10})
        scan_id = result.structured_content["scan_id"]
        body = await read_json(client, f"scan://{scan_id}")
        got = await client.call_tool("get_scan", {"scan_id": scan_id})

    assert result.is_error
    assert body["status"] == "failed"
    assert body["rule"] == result.structured_content["rule"]
    # A failed scan is still a job: its error result links to it, as get_scan's does.
    for answer in (result, got):
        assert [str(b.uri) for b in answer.content if isinstance(b, ResourceLink)] == [f"scan://{scan_id}"]
    assert got.structured_content == body


async def test_read_raw_is_the_stored_scanner_output(resources: Callable[..., Resources]) -> None:
    r = resources()
    r.runner.gate.set()
    async with r.client() as client:
        scan_id, _ = await scan(client, wait_seconds=10)
        read = await client.read_resource(f"scan://{scan_id}/raw", cache_mode="bypass")

    [content] = read.contents
    assert content.mime_type == "text/plain"
    assert content.text == XML.decode()  # type: ignore[union-attr]


async def test_read_raw_says_it_was_cut_to_stored_raw_bytes(resources: Callable[..., Resources]) -> None:
    r = resources({"limits": {"stored_raw_bytes": 100}})
    r.runner.gate.set()
    async with r.client() as client:
        scan_id, _ = await scan(client, wait_seconds=10)
        read = await client.read_resource(f"scan://{scan_id}/raw", cache_mode="bypass")

    text: str = read.contents[0].text  # type: ignore[union-attr]
    assert text.startswith(XML[:100].decode())
    assert f"cut to the first 100 of {len(XML)} bytes (limits.stored_raw_bytes)" in text


# --- list ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ERAS)
async def test_resources_list_pages_own_scans_newest_first(resources: Callable[..., Resources], mode: str) -> None:
    r = resources()
    r.runner.gate.set()
    r.server.resources.page_size = 2
    async with r.client(mode) as client:
        mine = [(await scan(client, wait_seconds=10))[0] for _ in range(3)]
        await r.other_principals_scan()
        first = await client.list_resources(cache_mode="bypass")
        second = await client.list_resources(cursor=first.next_cursor, cache_mode="bypass")

    assert [str(res.uri) for res in first.resources] == [f"scan://{i}" for i in mine[::-1][:2]]
    assert [str(res.uri) for res in second.resources] == [f"scan://{mine[0]}"]
    assert second.next_cursor is None
    assert all(res.mime_type == "application/json" for res in first.resources + second.resources)
    assert first.resources[0].name == "nmap_scan 10.20.0.5"


async def test_resources_list_refuses_a_cursor_it_never_gave(resources: Callable[..., Resources]) -> None:
    r = resources()
    async with r.client() as client:
        with pytest.raises(MCPError) as refused:
            await client.list_resources(cursor="'; DROP TABLE jobs; --", cache_mode="bypass")

    assert refusal(refused)["rule"] == "cursor_invalid"


# --- who sees what --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/raw"])
async def test_read_of_another_principals_scan_is_refused_as_not_found(
    resources: Callable[..., Resources], suffix: str
) -> None:
    r = resources()
    theirs = await r.other_principals_scan()
    async with r.client() as client:
        with pytest.raises(MCPError) as refused:
            await client.read_resource(f"scan://{theirs}{suffix}", cache_mode="bypass")
        with pytest.raises(MCPError) as unknown:
            await client.read_resource(f"scan://scan_{'0' * 20}{suffix}", cache_mode="bypass")

    # Another principal's scan and one that never existed look the same: ids do not leak.
    assert refusal(refused)["rule"] == refusal(unknown)["rule"] == "scan_not_found"
    audited = [line for line in r.lab.audit_lines() if line.get("rule") == "scan_not_found"]
    assert [(line["method"], line["verdict"], line["principal"]) for line in audited] == [
        ("resources/read", "refused", None),
        ("resources/read", "refused", None),
    ]
    assert r.lab.metric("appliance_protocol_refusals_total", rule="scan_not_found") == 2


@pytest.mark.parametrize("uri", ["file:///etc/passwd", "scan://../../etc/passwd", "scan://scan_1/raw/x"])
async def test_read_of_a_uri_that_is_no_scan_resource_is_refused(resources: Callable[..., Resources], uri: str) -> None:
    r = resources()
    async with r.client() as client:
        with pytest.raises(MCPError) as refused:
            await client.read_resource(uri, cache_mode="bypass")

    assert refusal(refused)["rule"] == "resource_unknown"
    assert r.lab.metric("appliance_protocol_refusals_total", rule="resource_unknown") == 1


async def test_subscribe_to_another_principals_scan_is_refused(resources: Callable[..., Resources]) -> None:
    r = resources()
    theirs = await r.other_principals_scan()
    async with r.client() as client:
        with pytest.raises(MCPError) as refused:
            await subscribe(client, f"scan://{theirs}")

    assert refusal(refused)["rule"] == "scan_not_found"
    assert not r.server.resources.subscribers.get(f"scan://{theirs}")


async def test_subscribe_without_a_connection_to_notify_is_refused_not_accepted(
    resources: Callable[..., Resources],
) -> None:
    # No SDK 2.3 transport dispatches resources/subscribe without a connection (the 2026 era
    # answers method-not-found); the handler is called directly to prove it never says yes then.
    r = resources()
    async with r.client() as client:
        scan_id, _ = await scan(client)
    no_connection = SimpleNamespace(request=None, session=SimpleNamespace())
    with pytest.raises(MCPError) as refused:
        await r.server.resources._subscribe(no_connection, SubscribeRequestParams(uri=f"scan://{scan_id}"))  # type: ignore[arg-type]

    assert refusal(refused)["rule"] == "subscribe_unsupported"
    assert not r.server.resources.subscribers.get(f"scan://{scan_id}")


async def test_listen_to_another_principals_scan_is_refused_before_the_stream_starts(
    resources: Callable[..., Resources],
) -> None:
    r = resources()
    theirs = await r.other_principals_scan()
    async with r.client("2026-07-28") as client:
        with pytest.raises(MCPError) as refused:
            async with client.listen(resource_subscriptions=[f"scan://{theirs}"]):
                pass

    assert refusal(refused)["rule"] == "scan_not_found"
    assert r.server.resources.listening[f"scan://{theirs}"] == 0


# --- update notices -------------------------------------------------------------------------------


async def _queued_behind_another(r: Resources, client: Client) -> tuple[str, str]:
    """Two scans with one slot: the first runs (gate closed), the second waits queued."""
    first, _ = await scan(client)
    await asyncio.wait_for(r.runner.started.wait(), 5)
    second, _ = await scan(client)
    return first, second


async def test_subscription_gets_a_notice_at_each_state_change_handshake_era(
    resources: Callable[..., Resources],
) -> None:
    r = resources(ONE_AT_A_TIME)
    notices = ResourceNotices()
    async with r.client("legacy", notices) as client:
        first, second = await _queued_behind_another(r, client)
        uri = f"scan://{second}"
        await subscribe(client, uri)
        seen = [(await read_json(client, uri))["status"]]

        # Cancelling the first frees the slot: the second runs (the gate keeps it running).
        await client.call_tool("cancel_scan", {"scan_id": first})
        assert await notices.next() == uri
        seen.append((await read_json(client, uri))["status"])
        r.runner.gate.set()
        assert await notices.next() == uri
        seen.append((await read_json(client, uri))["status"])

        await unsubscribe(client, uri)
    assert seen == ["queued", "running", "completed"]
    assert notices.queue.empty()  # the first scan's changes went to nobody: nobody followed it


async def test_listen_stream_gets_a_notice_at_each_state_change_2026_era(resources: Callable[..., Resources]) -> None:
    r = resources(ONE_AT_A_TIME)
    notices = ResourceNotices()
    async with r.client("2026-07-28") as client:
        first, second = await _queued_behind_another(r, client)
        uri = f"scan://{second}"
        async with client.listen(resource_subscriptions=[uri, f"{uri}/raw"]) as subscription:
            reader = asyncio.create_task(notices.drain(subscription))
            seen = [(await read_json(client, uri))["status"]]
            await client.call_tool("cancel_scan", {"scan_id": first})
            assert await notices.next() == uri
            seen.append((await read_json(client, uri))["status"])
            r.runner.gate.set()
            finished = {await notices.next(), await notices.next()}
            seen.append((await read_json(client, uri))["status"])
            reader.cancel()
    assert seen == ["queued", "running", "completed"]
    assert finished == {uri, f"{uri}/raw"}  # the raw output is there once the scan ends


# --- over real HTTP: two principals, real nmap on a loopback listener -------------------------------

ALICE = "alice-token-aaaaaaaaaaaaaaaa"
BOB = "bob-token-bbbbbbbbbbbbbbbbbbb"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("resources")
    tokens = folder / "tokens"
    tokens.write_text(f"alice {ALICE}\nbob {BOB}\n")
    policy = write_policy(folder, LOOPBACK_POLICY)
    data = folder / "data"
    data.mkdir()
    with http_server(policy, APPLIANCE_AUTH_TOKENS_FILE=str(tokens), APPLIANCE_DATA_DIR=str(data)) as url:
        yield url


@pytest.mark.parametrize("mode", ERAS)
async def test_principal_reads_lists_and_follows_only_its_own_scans_over_http(served: str, mode: str) -> None:
    with tcp_listener() as port:
        async with http_client(served, mode, ALICE) as alice, http_client(served, mode, BOB) as bob:
            done = await alice.call_tool("nmap_scan", {"target": "127.0.0.1", "ports": str(port), "wait_seconds": 60})
            scan_id = done.structured_content["scan_id"]
            uri = f"scan://{scan_id}"
            mine = await alice.list_resources(cache_mode="bypass")
            theirs = await bob.list_resources(cache_mode="bypass")
            body = await read_json(alice, uri)
            refused: list[dict[str, Any]] = []
            for attempt in (
                lambda: bob.read_resource(uri, cache_mode="bypass"),
                lambda: bob.read_resource(f"{uri}/raw", cache_mode="bypass"),
                lambda: subscribe(bob, uri) if mode == "legacy" else _listen_once(bob, uri),
            ):
                with pytest.raises(MCPError) as exc:
                    await attempt()
                refused.append(refusal(exc))

    assert done.structured_content["status"] == "completed"
    assert body["hosts"][0]["ports"][0]["port"] == port
    assert uri in [str(res.uri) for res in mine.resources]
    assert uri not in [str(res.uri) for res in theirs.resources]
    assert [error["rule"] for error in refused] == ["scan_not_found"] * 3


async def _listen_once(client: Client, uri: str) -> None:
    async with client.listen(resource_subscriptions=[uri]):
        pass


@pytest.mark.parametrize("mode", ERAS)
async def test_subscription_follows_a_real_nmap_scan_over_http(served: str, mode: str) -> None:
    notices = ResourceNotices()
    with tcp_listener() as port:
        async with http_client(served, mode, ALICE, message_handler=notices.handler) as client:
            # Slow enough (seven ports, 300 ms apart) that the subscription is in place before it ends.
            call = {"target": "127.0.0.1", "ports": f"{port},23000-23005", "wait_seconds": 0}
            started = await client.call_tool("nmap_scan", {**call, "extra_args": ["--scan-delay", "300ms"]})
            scan_id = started.structured_content["scan_id"]
            uri = f"scan://{scan_id}"
            if mode == "legacy":
                await subscribe(client, uri)
                statuses = await _follow(client, uri, notices)
            else:
                async with client.listen(resource_subscriptions=[uri]) as subscription:
                    reader = asyncio.create_task(notices.drain(subscription))
                    statuses = await _follow(client, uri, notices)
                    reader.cancel()
            body = await read_json(client, uri)

    assert started.structured_content["status"] in ("queued", "running")
    # Subscribed while it ran, then told of each change up to its end (at least the end).
    assert statuses[0] in ("queued", "running")
    assert statuses[-1] == "completed"
    assert [p["port"] for p in body["hosts"][0]["ports"] if p["state"] == "open"] == [port]


async def _follow(client: Client, uri: str, notices: ResourceNotices) -> list[str]:
    """Read the resource at each notice until the scan ends; the statuses seen, in order."""
    statuses = [(await read_json(client, uri))["status"]]
    while statuses[-1] in ("queued", "running"):
        assert await notices.next(within=30) == uri
        statuses.append((await read_json(client, uri))["status"])
    return statuses


@pytest.mark.parametrize("mode", ERAS)
async def test_subscription_follows_a_real_nmap_scan_over_stdio(tmp_path: Path, mode: str) -> None:
    notices = ResourceNotices()
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    with tcp_listener() as port:
        # A data directory of its own (server_env drops the APPLIANCE_* variables of the test process).
        env = server_env(policy, APPLIANCE_DATA_DIR=str(tmp_path))
        params = StdioServerParameters(command=APPLIANCE, args=["serve"], env=env)
        async with Client(params, mode=mode, message_handler=notices.handler) as client:
            call = {"target": "127.0.0.1", "ports": f"{port},23000-23005", "wait_seconds": 0}
            started = await client.call_tool("nmap_scan", {**call, "extra_args": ["--scan-delay", "300ms"]})
            uri = f"scan://{started.structured_content['scan_id']}"
            if mode == "legacy":
                await subscribe(client, uri)
                statuses = await _follow(client, uri, notices)
            else:
                async with client.listen(resource_subscriptions=[uri]) as subscription:
                    reader = asyncio.create_task(notices.drain(subscription))
                    statuses = await _follow(client, uri, notices)
                    reader.cancel()

    assert statuses[0] in ("queued", "running")
    assert statuses[-1] == "completed"
