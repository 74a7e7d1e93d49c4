"""The status page with the OAuth issuer's JWTs: `appliance serve --transport http` beside a real
OpenID provider (oauth2-mock-server on 127.0.0.1); the page takes the JWT through the verifier of
the MCP transport, scopes and all."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from support import LOOPBACK_POLICY, closed_port, served, write_policy
from support.oidc import OidcProvider, oidc_provider


@dataclass(frozen=True)
class OAuthPage:
    provider: OidcProvider
    resource: str
    origin: str

    def token(self, scope: str, client_id: str = "carol") -> str:
        return self.provider.token(self.resource, client_id=client_id, scope=scope, claims={})


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthPage]:
    tmp = tmp_path_factory.mktemp("oauth-status")
    port = closed_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    with oidc_provider("RS256") as provider:
        env = {
            "APPLIANCE_OAUTH_ISSUER": provider.issuer,
            "APPLIANCE_PUBLIC_URL": resource,
            "APPLIANCE_INSECURE_OAUTH_LOOPBACK_HTTP": "true",
            "APPLIANCE_AUDIT_PATH": str(tmp / "audit.jsonl"),
        }
        with served(write_policy(tmp, LOOPBACK_POLICY), port=port, **env) as server:
            yield OAuthPage(provider, resource, f"http://127.0.0.1:{server.health_port}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The login's 303 and its Set-Cookie are what is checked: no following."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def fetch(url: str, headers: dict[str, str], form: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    data = None if form is None else urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 - the loopback sidecar
    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=10) as response:
            return int(response.status), response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode(), dict(exc.headers)


def get(page: OAuthPage, token: str) -> tuple[int, str]:
    status, body, _ = fetch(f"{page.origin}/", {"Authorization": f"Bearer {token}"})
    return status, body


@pytest.mark.parametrize(
    ("scope", "status", "sees_scans"),
    [
        ("scan:read scan:admin", 200, True),
        ("scan:read scan:run", 200, False),
        ("scan:run", 403, False),  # not even the endpoint's scan:read
    ],
)
def test_a_jwt_sees_what_its_scopes_allow(page: OAuthPage, scope: str, status: int, sees_scans: bool) -> None:
    answered, body = get(page, page.token(scope))
    assert answered == status
    assert ('id="recent-scans"' in body) is sees_scans
    if status == 200:
        assert "Logged in as carol" in body
    else:
        assert 'data-rule="insufficient_scope"' in body


def test_a_jwt_for_another_resource_is_refused(page: OAuthPage) -> None:
    foreign = page.provider.token("http://127.0.0.1:1/mcp", client_id="carol", scope="scan:read scan:admin", claims={})
    answered, body = get(page, foreign)
    assert answered == 401 and 'data-rule="status_token_invalid"' in body


def test_the_login_form_takes_a_jwt(page: OAuthPage) -> None:
    form = {"token": page.token("scan:read scan:admin")}
    status, _, headers = fetch(f"{page.origin}/login", {"Origin": page.origin}, form)
    assert status == 303
    cookie = headers["Set-Cookie"].split(";")[0]
    answered, body, _ = fetch(f"{page.origin}/", {"Cookie": cookie})
    assert answered == 200 and 'id="recent-scans"' in body and "Logged in as carol" in body
