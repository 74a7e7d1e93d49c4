"""`appliance serve --transport http` as an OAuth resource server of a real OpenID provider
(oauth2-mock-server on 127.0.0.1), driven over real HTTP by the SDK client and raw requests.

Its static token (support.TOKEN, principal `default`) stays valid beside the provider's JWTs.
Every scan goes to a listener this test started on 127.0.0.1; refusals are dry runs.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.shared.exceptions import MCPError
from support import (
    APPLIANCE,
    LOOPBACK_POLICY,
    TOKEN,
    Served,
    closed_port,
    http_client,
    served,
    server_env,
    tcp_listener,
    write_policy,
)
from support.oidc import OidcProvider, oidc_provider

from appliance.identity.scopes import ALL_SCOPES
from appliance.server import JOB_TOOLS
from appliance.tools import TOOLS

pytestmark = pytest.mark.anyio
PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}


class OAuthAppliance:
    def __init__(self, server: Served, provider: OidcProvider, audit: Path) -> None:
        self.server = server
        self.provider = provider
        self.audit = audit
        self.url = server.url  # also APPLIANCE_PUBLIC_URL: clients and tokens name the same resource
        self.origin = server.url.removesuffix("/mcp")

    def token(self, scope: str, client_id: str = "alice", **claims: Any) -> str:
        return self.provider.token(self.url, client_id=client_id, scope=scope, claims=claims)

    def audit_lines(self, event: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.audit.read_text().splitlines()]
        return [line for line in lines if line.get("event") == event]

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.server.health_port}/metrics", timeout=5) as response:
            return str(response.read().decode())


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthAppliance]:
    tmp = tmp_path_factory.mktemp("oauth")
    policy = write_policy(tmp, LOOPBACK_POLICY)
    audit = tmp / "audit.jsonl"
    port = closed_port()
    with oidc_provider("RS256") as provider:
        env = {
            "APPLIANCE_OAUTH_ISSUER": provider.issuer,
            "APPLIANCE_PUBLIC_URL": f"http://127.0.0.1:{port}/mcp",
            "APPLIANCE_INSECURE_OAUTH_LOOPBACK_HTTP": "true",
            "APPLIANCE_AUDIT_PATH": str(audit),
        }
        with served(policy, port=port, **env) as server:
            yield OAuthAppliance(server, provider, audit)


async def post(url: str, token: str | None) -> httpx2.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(trust_env=False) as http:
        return await http.post(url, json=PING, headers=headers)


async def test_protected_resource_metadata_names_issuer_resource_and_every_scope(appliance: OAuthAppliance) -> None:
    async with httpx2.AsyncClient(trust_env=False) as http:
        documents = [
            (await http.get(f"{appliance.origin}{path}")).json()
            for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource")
        ]
    for document in documents:
        assert document["resource"] == appliance.url
        assert document["authorization_servers"] == [appliance.provider.issuer]
        assert document["scopes_supported"] == list(ALL_SCOPES)
        assert document["bearer_methods_supported"] == ["header"]


async def test_missing_token_gets_challenge_with_resource_metadata_and_is_audited(appliance: OAuthAppliance) -> None:
    response = await post(appliance.url, None)
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert f'resource_metadata="{appliance.origin}/.well-known/oauth-protected-resource/mcp"' in challenge
    assert any(line["rule"] == "bearer_token_missing" for line in appliance.audit_lines("http_auth_refused"))


@pytest.mark.parametrize(
    ("claims", "rule"),
    [
        # unsafe
        ({"exp": 1_000_000_000}, "token_expired"),
        ({"nbf": 4_000_000_000}, "token_not_yet_valid"),
        ({"iss": "https://attacker.example"}, "token_issuer_invalid"),
        ({"aud": "https://other-service.example/mcp"}, "token_audience_invalid"),
    ],
)
async def test_refused_jwt_gets_401_audited_and_counted_without_the_token(
    appliance: OAuthAppliance, claims: dict[str, Any], rule: str
) -> None:
    token = appliance.token("scan:read", **claims)
    response = await post(appliance.url, token)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert any(line["rule"] == rule and line["status"] == 401 for line in appliance.audit_lines("http_auth_refused"))
    assert token not in appliance.audit.read_text()
    assert f'appliance_http_auth_refusals_total{{rule="{rule}",status="401"}}' in appliance.metrics()


async def test_token_without_read_scope_gets_403_insufficient_scope(appliance: OAuthAppliance) -> None:
    response = await post(appliance.url, appliance.token("scan:run"))
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert any(line["status"] == 403 for line in appliance.audit_lines("http_auth_refused"))
    assert 'appliance_http_auth_refusals_total{rule="insufficient_scope",status="403"}' in appliance.metrics()


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_valid_jwt_scans_end_to_end_and_intrusive_options_need_their_scope(
    appliance: OAuthAppliance, mode: str
) -> None:
    token = appliance.token("scan:read scan:run", client_id=f"carol-{mode}")
    with tcp_listener() as port:
        async with http_client(appliance.url, mode, token=token) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            result = await client.call_tool("nmap_scan", {"target": "127.0.0.1", "ports": str(port)})
            intrusive = await client.call_tool(
                "nmap_scan", {"target": "127.0.0.1", "ports": str(port), "scan_type": "version", "dry_run": True}
            )
    assert names == (set(TOOLS) - {"masscan_scan"}) | set(JOB_TOOLS)  # masscan is intrusive
    assert not result.is_error
    [host] = result.structured_content["hosts"]  # type: ignore[index]
    assert [(p["port"], p["state"]) for p in host["ports"]] == [(port, "open")]
    assert intrusive.is_error
    refusal = intrusive.structured_content
    assert refusal is not None
    assert (refusal["rule"], refusal["error_type"]) == ("insufficient_scope", "permission_denied")
    assert "scan:intrusive" in refusal["message"]
    starts = [line for line in appliance.audit_lines("start") if line["principal"] == f"carol-{mode}"]
    assert len(starts) == 1  # the JWT's sub is the principal of the scan
    refused = [line for line in appliance.audit.read_text().splitlines() if f"carol-{mode}" in line]
    assert any(json.loads(line).get("rule") == "insufficient_scope" for line in refused)


async def test_read_only_token_sees_only_the_job_readers_and_cannot_scan(appliance: OAuthAppliance) -> None:
    async with http_client(appliance.url, "legacy", token=appliance.token("scan:read", client_id="dave")) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        scan = await client.call_tool("nmap_scan", {"target": "127.0.0.1", "dry_run": True})
    assert names == {"get_scan", "list_scans", "diff_scans"}
    assert scan.is_error
    assert scan.structured_content["rule"] == "insufficient_scope"  # type: ignore[index]
    assert "scan:run" in scan.structured_content["message"]  # type: ignore[index]
    assert 'appliance_scope_refusals_total{rule="insufficient_scope",tool="nmap_scan"}' in appliance.metrics()


async def test_static_token_still_works_and_a_jwt_cannot_take_its_principal(appliance: OAuthAppliance) -> None:
    async with http_client(appliance.url, "legacy", token=TOKEN) as client:
        assert {tool.name for tool in (await client.list_tools()).tools} == set(TOOLS) | set(JOB_TOOLS)
    # Nor the owner name of stdio's scans, which may share the job store.
    for reserved in ("default", "stdio"):
        response = await post(appliance.url, appliance.token("scan:read", client_id=reserved))
        assert response.status_code == 401
    reserved_lines = [
        line for line in appliance.audit_lines("http_auth_refused") if line["rule"] == "token_subject_reserved"
    ]
    assert len(reserved_lines) == 2


async def test_admin_sees_and_cancels_other_principals_scans(appliance: OAuthAppliance) -> None:
    with tcp_listener() as port:
        owner = appliance.token("scan:read scan:run", client_id="erin")
        async with http_client(appliance.url, "legacy", token=owner) as client:
            done = await client.call_tool("nmap_scan", {"target": "127.0.0.1", "ports": str(port)})
        scan_id = done.structured_content["scan_id"]  # type: ignore[index]
        other = appliance.token("scan:read scan:run", client_id="frank")
        admin = appliance.token("scan:read scan:run scan:admin", client_id="grace")
        async with http_client(appliance.url, "legacy", token=other) as client:
            hidden = await client.call_tool("get_scan", {"scan_id": scan_id})
            with pytest.raises(MCPError):
                await client.read_resource(f"scan://{scan_id}")
        async with http_client(appliance.url, "legacy", token=admin) as client:
            seen = await client.call_tool("get_scan", {"scan_id": scan_id})
            resource = await client.read_resource(f"scan://{scan_id}")
            listed = await client.call_tool("list_scans", {})
            cancelled = await client.call_tool("cancel_scan", {"scan_id": scan_id})
    assert hidden.structured_content["rule"] == "scan_not_found"  # type: ignore[index]
    assert seen.structured_content["scan_id"] == scan_id  # type: ignore[index]
    assert json.loads(resource.contents[0].text)["scan_id"] == scan_id  # type: ignore[union-attr]
    assert scan_id in {s["scan_id"] for s in listed.structured_content["scans"]}  # type: ignore[index]
    assert not cancelled.is_error  # already finished: nothing to stop, and no refusal


async def test_healthz_shows_the_issuers_keys(appliance: OAuthAppliance) -> None:
    # Past authentication (a ping without a session is the transport's 400, not 401).
    assert (await post(appliance.url, appliance.token("scan:read"))).status_code not in (401, 403)
    status, body = appliance.server.get("/healthz")
    assert status == 200
    oauth = body["checks"]["auth"]["oauth"]
    assert (oauth["issuer"], oauth["keys"], oauth["problem"]) == (appliance.provider.issuer, 1, None)
    assert oauth["jwks_fetches"] >= 1


@pytest.mark.parametrize(
    ("env", "rule"),
    [
        # unsafe
        ({"APPLIANCE_OAUTH_ISSUER": "https://idp.lab.example"}, "public_url_missing"),
        (
            {"APPLIANCE_OAUTH_ISSUER": "http://idp.lab.example", "APPLIANCE_PUBLIC_URL": "https://s.lab.example/mcp"},
            "oauth_url_invalid",
        ),
        (
            {"APPLIANCE_OAUTH_ISSUER": "http://127.0.0.1:9", "APPLIANCE_PUBLIC_URL": "http://127.0.0.1:8080/mcp"},
            "oauth_url_invalid",  # loopback http only with the named insecure setting
        ),
    ],
)
def test_bad_oauth_settings_refuse_start(tmp_path: Path, env: dict[str, str], rule: str) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    extra = {"APPLIANCE_TRANSPORT": "http", "APPLIANCE_PORT": str(closed_port()), **env}
    done = subprocess.run([APPLIANCE, "serve"], env=server_env(policy, **extra), capture_output=True, timeout=30)
    assert done.returncode == 2
    assert rule.encode() in done.stderr
