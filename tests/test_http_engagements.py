"""Two engagements over real HTTP (uvicorn on 127.0.0.1, static tokens of four principals).

alice and carol are in `red` (127.0.0.1), bob in `blue` (127.0.0.2), mallory in none. Scans are
real nmap connect scans of a listener this test starts on loopback. bob cannot see, read, diff
or cancel red's scans (and red cannot see his); carol reads alice's scans through the engagement
but cannot cancel them; mallory sees no scan tool and is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError
from support import LOOPBACK_POLICY, http_client, http_server, tcp_listener, write_policy
from support.engagements import engagement, with_engagements

from appliance.server import JOB_TOOLS

pytestmark = pytest.mark.anyio
TOKENS = {
    "alice": "alice-token-aaaaaaaaaaaaaaaa",
    "carol": "carol-token-cccccccccccccccc",
    "bob": "bob-token-bbbbbbbbbbbbbbbbbbb",
    "mallory": "mallory-token-mmmmmmmmmmmmmm",
}
SCOPES = "scan:read,scan:run"


def window_around_now() -> dict[str, str]:
    now = datetime.now(UTC).replace(tzinfo=None)
    return {
        "not_before": (now - timedelta(days=1)).isoformat(timespec="minutes"),
        "not_after": (now + timedelta(days=1)).isoformat(timespec="minutes"),
        "timezone": "UTC",
    }


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    folder = tmp_path_factory.mktemp("engagements")
    tokens = folder / "tokens"
    tokens.write_text("".join(f"{who} {token} {SCOPES}\n" for who, token in TOKENS.items()))
    engagements = with_engagements(
        engagement("red", ["alice", "carol"], networks=["127.0.0.1/32"], window=window_around_now()),
        engagement("blue", ["bob"], networks=["127.0.0.2/32"], window=window_around_now()),
    )
    policy = write_policy(folder, LOOPBACK_POLICY, engagements)
    with tcp_listener() as port, http_server(policy, APPLIANCE_AUTH_TOKENS_FILE=str(tokens)) as url:
        yield url, port


async def call(url: str, who: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    async with http_client(url, "legacy", token=TOKENS[who]) as client:
        result = await client.call_tool(tool, arguments)
    assert result.structured_content is not None
    return dict(result.structured_content)


async def scan(url: str, who: str, target: str, port: int) -> str:
    body = await call(url, who, "nmap_scan", {"target": target, "ports": str(port), "wait_seconds": 60})
    assert body["status"] == "completed", body
    return str(body["scan_id"])


async def read(url: str, who: str, scan_id: str) -> dict[str, Any] | str:
    """The scan resource's body, or the refusal's rule."""
    async with http_client(url, "legacy", token=TOKENS[who]) as client:
        try:
            contents = (await client.read_resource(f"scan://{scan_id}", cache_mode="bypass")).contents
        except MCPError as exc:
            data = exc.error.data
            return str(data["rule"]) if isinstance(data, dict) else str(exc)
    return dict(json.loads(contents[0].text))  # type: ignore[union-attr]


async def listed(url: str, who: str) -> set[str]:
    """The scan ids list_scans shows `who`; resources/list must show the same ones."""
    body = await call(url, who, "list_scans", {"limit": 100})
    async with http_client(url, "legacy", token=TOKENS[who]) as client:
        resources = {str(r.uri) for r in (await client.list_resources()).resources}
    scans = {s["scan_id"] for s in body["scans"]}
    assert resources == {f"scan://{scan_id}" for scan_id in scans}
    return scans


async def test_two_engagements_cannot_see_read_diff_or_cancel_each_others_scans(lab: tuple[str, int]) -> None:
    url, port = lab
    red_first = await scan(url, "alice", "127.0.0.1", port)
    red_second = await scan(url, "alice", "127.0.0.1", port)
    blue = await scan(url, "bob", "127.0.0.2", port)

    for tool, arguments in (
        ("get_scan", {"scan_id": red_second}),
        ("diff_scans", {"scan_id": red_second}),
        ("diff_scans", {"scan_id": blue, "against_scan_id": red_first}),
        ("cancel_scan", {"scan_id": red_second}),
    ):
        assert (await call(url, "bob", tool, arguments))["rule"] == "scan_not_found", (tool, arguments)
    assert (await call(url, "alice", "get_scan", {"scan_id": blue}))["rule"] == "scan_not_found"
    assert await read(url, "bob", red_second) == "scan_not_found"
    assert await read(url, "carol", blue) == "scan_not_found"
    assert {red_first, red_second}.isdisjoint(await listed(url, "bob"))
    assert blue in await listed(url, "bob")
    assert blue not in await listed(url, "alice")

    # carol shares red: she reads and diffs alice's scans, but only alice may cancel them
    assert {red_first, red_second} <= await listed(url, "carol")
    assert (await call(url, "carol", "get_scan", {"scan_id": red_second}))["scan_id"] == red_second
    diff = await call(url, "carol", "diff_scans", {"scan_id": red_second})
    assert diff["against_scan_id"] == red_first
    body = await read(url, "carol", red_second)
    assert isinstance(body, dict)
    assert body["scan_id"] == red_second
    refused = await call(url, "carol", "cancel_scan", {"scan_id": red_second})
    assert refused["rule"] == "cancel_not_owner"
    assert refused["recovery_suggestion"]
    owner = await call(url, "alice", "cancel_scan", {"scan_id": red_second})
    assert owner["status"] == "completed"  # it had finished: the owner's cancel is answered, nothing stops


async def test_tools_list_and_refusals_follow_the_callers_engagements(lab: tuple[str, int]) -> None:
    url, port = lab
    async with http_client(url, "legacy", token=TOKENS["mallory"]) as client:
        mallory_tools = {t.name for t in (await client.list_tools()).tools}
    async with http_client(url, "legacy", token=TOKENS["bob"]) as client:
        bob_tools = {t.name for t in (await client.list_tools()).tools}

    outside = await call(url, "bob", "nmap_scan", {"target": "127.0.0.1", "ports": str(port)})
    nobody = await call(url, "mallory", "nmap_scan", {"target": "127.0.0.1", "ports": str(port)})

    assert mallory_tools == set(JOB_TOOLS)
    assert bob_tools == {"nmap_scan", *JOB_TOOLS}
    assert outside["rule"] == "target_outside_engagement"
    assert nobody["rule"] == "no_engagement"
