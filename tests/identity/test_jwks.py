"""Issuer URLs, metadata discovery and the key set's contents. Discovery runs against an
httpx2 MockTransport that records every URL asked for: nothing leaves the process."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from appliance.errors import ConfigError
from appliance.identity.jwks import JwksCache, JwksUnavailableError, check_issuer_url, metadata_urls

pytestmark = pytest.mark.anyio
ISSUER = "https://idp.lab.example/realms/lab"
RSA_KEY = {"kty": "RSA", "kid": "k1", "n": "sXch", "e": "AQAB", "use": "sig"}


@pytest.mark.parametrize(
    ("url", "insecure"),
    [
        # safe
        ("https://idp.lab.example", False),
        ("https://idp.lab.example/realms/lab", False),
        ("http://127.0.0.1:8080", True),
        ("http://localhost:9000/issuer", True),
    ],
)
def test_issuer_url_accepted(url: str, insecure: bool) -> None:
    assert check_issuer_url(url, insecure_loopback_http=insecure) == url


@pytest.mark.parametrize(
    ("url", "insecure"),
    [
        # unsafe
        ("http://idp.lab.example", False),  # cleartext keys could be swapped on the way
        ("http://idp.lab.example", True),  # the insecure switch is for loopback only
        ("http://127.0.0.1:8080", False),  # and only when named
        ("https://user:pw@idp.lab.example", False),
        ("https://idp.lab.example/?tenant=x", False),
        ("ftp://idp.lab.example", False),
        ("idp.lab.example", False),
    ],
)
def test_issuer_url_refused(url: str, insecure: bool) -> None:
    with pytest.raises(ConfigError) as caught:
        check_issuer_url(url, insecure_loopback_http=insecure)
    assert caught.value.rule == "oauth_url_invalid"


def test_metadata_urls_follow_rfc8414_then_openid() -> None:
    assert metadata_urls(ISSUER) == [
        "https://idp.lab.example/.well-known/oauth-authorization-server/realms/lab",
        "https://idp.lab.example/realms/lab/.well-known/openid-configuration",
    ]


def cache_answering(documents: dict[str, Any], asked: list[str]) -> JwksCache:
    def answer(request: httpx2.Request) -> httpx2.Response:
        asked.append(str(request.url))
        if str(request.url) in documents:
            return httpx2.Response(200, json=documents[str(request.url)])
        return httpx2.Response(404)

    return JwksCache(ISSUER, client=lambda: httpx2.AsyncClient(transport=httpx2.MockTransport(answer)))


async def test_openid_metadata_is_used_when_rfc8414_has_none() -> None:
    asked: list[str] = []
    jwks_uri = f"{ISSUER}/protocol/openid-connect/certs"
    cache = cache_answering(
        {metadata_urls(ISSUER)[1]: {"issuer": ISSUER, "jwks_uri": jwks_uri}, jwks_uri: {"keys": [RSA_KEY]}}, asked
    )
    assert await cache.key("k1") == RSA_KEY
    assert asked == [*metadata_urls(ISSUER), jwks_uri]


@pytest.mark.parametrize(
    "metadata",
    [
        # unsafe
        {"issuer": ISSUER, "jwks_uri": "https://keys.attacker.example/jwks"},  # another host
        {"issuer": ISSUER, "jwks_uri": "http://idp.lab.example/jwks"},  # another scheme
        {"issuer": ISSUER, "jwks_uri": "https://idp.lab.example:8443/jwks"},  # another port
        {"issuer": "https://idp.lab.example/realms/other", "jwks_uri": f"{ISSUER}/certs"},  # another issuer
        {"issuer": ISSUER},  # no jwks_uri
    ],
    ids=["other_host", "other_scheme", "other_port", "other_issuer", "no_jwks_uri"],
)
async def test_metadata_cannot_send_the_key_fetch_elsewhere(metadata: dict[str, Any]) -> None:
    asked: list[str] = []
    cache = cache_answering({metadata_urls(ISSUER)[0]: metadata}, asked)
    with pytest.raises(JwksUnavailableError):
        await cache.key("k1")
    assert asked == [metadata_urls(ISSUER)[0]]  # nothing fetched from where the metadata pointed


async def test_key_set_keeps_only_public_signing_keys() -> None:
    keys = [
        RSA_KEY,
        {"kty": "oct", "kid": "shared", "k": "c2VjcmV0"},  # a shared secret is no issuer key
        {**RSA_KEY, "kid": "enc", "use": "enc"},
        {**RSA_KEY, "kid": "private", "d": "c2VjcmV0"},  # a published private key is a broken issuer
        {"kty": "RSA", "n": "sXch", "e": "AQAB"},  # no kid
    ]
    asked: list[str] = []
    jwks_uri = f"{ISSUER}/certs"
    cache = cache_answering(
        {metadata_urls(ISSUER)[0]: {"issuer": ISSUER, "jwks_uri": jwks_uri}, jwks_uri: {"keys": keys}}, asked
    )
    assert await cache.key("k1") == RSA_KEY
    for kid in ("shared", "enc", "private"):
        assert await cache.key(kid) is None
