"""The appliance as an OAuth 2.1 resource server: its settings, the SDK's auth settings, and the
protected resource metadata (RFC 9728) that tells clients which issuer and scopes to use.

Only when `APPLIANCE_OAUTH_ISSUER` is set; static tokens alone publish no metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from mcp.server.auth.settings import AuthSettings

from appliance.config import Settings
from appliance.errors import ConfigError
from appliance.identity.jwks import check_issuer_url
from appliance.identity.scopes import ALL_SCOPES, SCAN_READ

if TYPE_CHECKING:
    from starlette.routing import Route

    from appliance.identity.jwt import JwtVerifier

# RFC 9728 section 3: the metadata of a resource with a path lives under this prefix plus the path;
# the bare prefix is served too, for clients that look at the origin's root first.
METADATA_PREFIX = "/.well-known/oauth-protected-resource"


@dataclass(frozen=True)
class OAuthResource:
    issuer: str
    resource: str  # APPLIANCE_PUBLIC_URL: the RFC 8707 resource identifier tokens must name in `aud`


def oauth_resource(settings: Settings) -> OAuthResource | None:
    """The validated issuer and resource, None when no issuer is configured."""
    if settings.oauth_issuer is None:
        return None
    insecure = settings.insecure_oauth_loopback_http
    issuer = check_issuer_url(settings.oauth_issuer, insecure_loopback_http=insecure)
    if settings.public_url is None:
        raise ConfigError(
            "APPLIANCE_OAUTH_ISSUER needs APPLIANCE_PUBLIC_URL, the URL clients use for the MCP endpoint",
            rule="public_url_missing",
            recovery_suggestion="Set APPLIANCE_PUBLIC_URL, e.g. https://scanner.lab.example/mcp, and register that "
            "URL as the API (audience) at the identity provider.",
        )
    resource = check_issuer_url(settings.public_url, insecure_loopback_http=insecure, setting="APPLIANCE_PUBLIC_URL")
    return OAuthResource(issuer, resource)


def auth_settings(oauth: OAuthResource) -> AuthSettings:
    """The SDK's settings: scan:read for the endpoint, the challenge's resource_metadata URL.

    validate_token_resource is off because the JWT verifier checks `aud` itself, and static tokens
    (valid beside JWTs) carry no resource.
    """
    # Strings, so AuthSettings keeps a path-less URL without a trailing slash (issuers compare exactly).
    return AuthSettings.model_validate(
        {
            "issuer_url": oauth.issuer,
            "resource_server_url": oauth.resource,
            "required_scopes": [SCAN_READ],
            "validate_token_resource": False,
        }
    )


def metadata_routes(auth: AuthSettings) -> list[Route]:
    """The SDK's RFC 9728 metadata route (path-suffixed form) with every scope, and the bare form.

    The SDK's own route lists only the endpoint's required scopes; a client picks what to ask
    for from scopes_supported, so these routes go first.
    """
    from mcp.server.auth.routes import create_protected_resource_routes  # HTTP with an issuer only
    from starlette.routing import Route

    assert auth.resource_server_url is not None  # auth_settings always sets it
    routes = create_protected_resource_routes(
        resource_url=auth.resource_server_url,
        authorization_servers=[auth.issuer_url],
        scopes_supported=list(ALL_SCOPES),
        resource_name="mcp-scanner-appliance",
    )
    suffixed = routes[0]
    if urlsplit(str(auth.resource_server_url)).path.rstrip("/"):
        routes.append(Route(METADATA_PREFIX, endpoint=suffixed.endpoint, methods=["GET", "OPTIONS"]))
    return routes


def jwt_verifier(oauth: OAuthResource, ca_file: Path | None = None) -> JwtVerifier:
    """The JWT verifier for the issuer (PyJWT is imported here, not by every start); an https
    issuer's certificate is checked against `ca_file` (APPLIANCE_CA_FILE) when given."""
    from appliance.auth import PRINCIPAL
    from appliance.identity.jwks import JwksCache
    from appliance.identity.jwt import JwtVerifier
    from appliance.tls import client_context

    verify = client_context(ca_file) if ca_file is not None and oauth.issuer.startswith("https:") else None
    return JwtVerifier(oauth.issuer, oauth.resource, JwksCache(oauth.issuer, verify=verify), PRINCIPAL)
