"""The issuer's signing keys: discovered from its metadata, fetched from it alone, cached.

This is the only traffic the appliance starts on its own, and only when an issuer is configured.
The metadata (RFC 8414 `oauth-authorization-server`, else OpenID `openid-configuration`) must name
exactly the configured issuer, and its `jwks_uri` must be on the issuer's origin: a metadata
document cannot send the appliance to fetch keys anywhere else. Redirects are not followed and
proxies from the environment are not used.

An unknown `kid` refreshes the keys, but at most once per JWKS_REFRESH_COOLDOWN_SECONDS and at most
once per kid (a kid still unknown after its refresh is remembered, MAX_REMEMBERED_KIDS of them):
a flood of tokens with made-up kids costs the issuer one request per cooldown. Keys older than
JWKS_MAX_AGE_SECONDS are fetched again at the next use. A failed refresh keeps the last good keys.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx2

from appliance.errors import ConfigError

log = logging.getLogger(__name__)

# Refreshes for unknown kids at most this often: a rotation is picked up within this long, and a
# flood of bad kids costs the issuer one request per period.
JWKS_REFRESH_COOLDOWN_SECONDS = 30.0
# Keys older than this are fetched again at the next verification: a key the issuer withdrew
# stops being accepted within this long even when no unknown kid arrives.
JWKS_MAX_AGE_SECONDS = 900.0
# One metadata or JWKS request; a slow issuer must not hold requests for long.
JWKS_FETCH_TIMEOUT_SECONDS = 5.0
# A metadata document or key set is a few kilobytes; more is not one.
MAX_DOCUMENT_BYTES = 512 * 1024
# Kids remembered as unknown after a refresh (oldest forgotten first).
MAX_REMEMBERED_KIDS = 1024
# Key types the allowed algorithms use; `oct` (shared secrets) never.
SIGNING_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})


class JwksUnavailableError(Exception):
    """The issuer's metadata or keys could not be fetched or were not acceptable."""


def _is_loopback_host(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_issuer_url(url: str, *, insecure_loopback_http: bool, setting: str = "APPLIANCE_OAUTH_ISSUER") -> str:
    """An issuer (or resource) URL: https, or http on a loopback host when the insecure test
    setting allows it; no query, fragment or userinfo. Returns it unchanged (issuers compare as
    exact strings, RFC 8414 section 3.3).

    Not covered: whether the host resolves or answers (checked at the first fetch).
    """
    parts = urlsplit(url)
    problem = None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        problem = "is not an http(s) URL with a host"
    elif parts.query or parts.fragment or parts.username or parts.password:
        problem = "must have no query, fragment or user info"
    elif parts.scheme == "http" and not (insecure_loopback_http and _is_loopback_host(parts.hostname)):
        problem = "must be https (http only for a loopback test issuer with APPLIANCE_INSECURE_OAUTH_LOOPBACK_HTTP)"
    if problem is not None:
        raise ConfigError(
            f"{setting} {url!r} {problem}",
            rule="oauth_url_invalid",
            recovery_suggestion=f"Set {setting} to the https URL your identity provider documents.",
        )
    return url


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def metadata_urls(issuer: str) -> list[str]:
    """Where the issuer's metadata may be: RFC 8414 (well-known before the path) first, then
    OpenID Connect Discovery (appended to the issuer)."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    base = f"{parts.scheme}://{parts.netloc}"
    return [
        f"{base}/.well-known/oauth-authorization-server{path}",
        f"{issuer.rstrip('/')}/.well-known/openid-configuration",
    ]


class JwksCache:
    """The issuer's signing keys by kid. `clock` is monotonic seconds (injected by tests)."""

    def __init__(
        self,
        issuer: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        client: Callable[[], httpx2.AsyncClient] | None = None,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        """`verify`: the trust anchors for an https issuer (APPLIANCE_CA_FILE); None: httpx's own."""
        self.issuer = issuer
        self._clock = clock
        trust: ssl.SSLContext | bool = True if verify is None else verify
        self._client = client or (
            lambda: httpx2.AsyncClient(
                timeout=JWKS_FETCH_TIMEOUT_SECONDS, follow_redirects=False, trust_env=False, verify=trust
            )
        )
        self._keys: dict[str, dict[str, Any]] = {}
        self._jwks_uri: str | None = None
        self._fetched_at: float | None = None  # the last successful fetch
        self._tried_at: float | None = None  # the last attempt, successful or not
        self._unknown: OrderedDict[str, None] = OrderedDict()
        self._lock = asyncio.Lock()
        self.fetches = 0  # JWKS requests sent
        self.problem: str | None = None  # why the last refresh failed, until one succeeds

    async def key(self, kid: str) -> dict[str, Any] | None:
        """The JWK for `kid`, refreshing once when it is unknown or the keys are stale.

        Raises JwksUnavailableError only while no keys were ever fetched.
        """
        now = self._clock()
        stale = self._fetched_at is None or now - self._fetched_at >= JWKS_MAX_AGE_SECONDS
        if stale and self._may_try(now):
            await self._refresh()
        if kid in self._keys:
            return self._keys[kid]
        if kid not in self._unknown and self._may_try(self._clock()):
            await self._refresh()
            if kid in self._keys:
                return self._keys[kid]
            # Unknown even to the issuer's current keys: this kid never refreshes again.
            self._remember_unknown(kid)
        if self._fetched_at is None:
            raise JwksUnavailableError(f"no signing keys of {self.issuer} could be fetched yet")
        return None

    def status(self) -> dict[str, Any]:
        """What /healthz shows: the issuer, how many keys and how old, the last fetch problem."""
        age = None if self._fetched_at is None else round(self._clock() - self._fetched_at, 1)
        return {
            "issuer": self.issuer,
            "keys": len(self._keys),
            "keys_age_seconds": age,
            "jwks_fetches": self.fetches,
            "problem": self.problem,
        }

    def _may_try(self, now: float) -> bool:
        return self._tried_at is None or now - self._tried_at >= JWKS_REFRESH_COOLDOWN_SECONDS

    def _remember_unknown(self, kid: str) -> None:
        self._unknown[kid] = None
        self._unknown.move_to_end(kid)
        while len(self._unknown) > MAX_REMEMBERED_KIDS:
            self._unknown.popitem(last=False)

    async def _refresh(self) -> None:
        tried = self._tried_at
        async with self._lock:
            if self._tried_at != tried:
                return  # another request refreshed while this one waited: one fetch serves both
            self._tried_at = self._clock()
            try:
                async with self._client() as client:
                    if self._jwks_uri is None:
                        self._jwks_uri = await self._discover(client)
                    self.fetches += 1
                    document = await _get_json(client, self._jwks_uri)
                keys = _signing_keys(document)
            except (JwksUnavailableError, httpx2.HTTPError) as exc:
                self.problem = str(exc) or type(exc).__name__
                log.error(
                    "signing keys of the OAuth issuer could not be refreshed; the last good keys stay",
                    extra={"issuer": self.issuer, "reason": str(exc) or type(exc).__name__, "rule": "jwks_unavailable"},
                )
                return
            self._keys = keys
            self._fetched_at = self._clock()
            self.problem = None
            log.info("signing keys of the OAuth issuer fetched", extra={"issuer": self.issuer, "kids": sorted(keys)})

    async def _discover(self, client: httpx2.AsyncClient) -> str:
        problems = []
        for url in metadata_urls(self.issuer):
            try:
                metadata = await _get_json(client, url)
            except JwksUnavailableError as exc:
                problems.append(str(exc))
                continue
            if metadata.get("issuer") != self.issuer:
                raise JwksUnavailableError(f"{url} names issuer {metadata.get('issuer')!r}, not {self.issuer!r}")
            jwks_uri = metadata.get("jwks_uri")
            if not isinstance(jwks_uri, str) or origin(jwks_uri) != origin(self.issuer):
                raise JwksUnavailableError(f"{url}: jwks_uri {jwks_uri!r} is not on the issuer's origin")
            return jwks_uri
        raise JwksUnavailableError("; ".join(problems))


async def _get_json(client: httpx2.AsyncClient, url: str) -> dict[str, Any]:
    """GET a JSON object, at most MAX_DOCUMENT_BYTES; JwksUnavailableError for anything else."""
    async with client.stream("GET", url, headers={"Accept": "application/json"}) as response:
        if response.status_code != 200:
            raise JwksUnavailableError(f"{url} answered HTTP {response.status_code}")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body.extend(chunk)
            if len(body) > MAX_DOCUMENT_BYTES:
                raise JwksUnavailableError(f"{url} sent more than {MAX_DOCUMENT_BYTES} bytes")
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JwksUnavailableError(f"{url} sent no JSON") from exc
    if not isinstance(document, dict):
        raise JwksUnavailableError(f"{url} sent no JSON object")
    return document


def _signing_keys(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The key set's public signing keys with a kid; keys for encryption or shared secrets are dropped."""
    keys = document.get("keys")
    if not isinstance(keys, list):
        raise JwksUnavailableError("the key set has no 'keys' list")
    found: dict[str, dict[str, Any]] = {}
    for key in keys:
        if not isinstance(key, dict) or not isinstance(key.get("kid"), str):
            continue
        if key.get("kty") not in SIGNING_KEY_TYPES or key.get("use", "sig") != "sig" or "d" in key:
            continue
        found[key["kid"]] = key
    return found
