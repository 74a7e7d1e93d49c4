"""JWT access tokens from a real OpenID provider (oauth2-mock-server on 127.0.0.1), verified by
JwtVerifier with the provider's own keys; a token the provider cannot issue (alg none, HS256 with
the public key, a kid it never had) is forged here with PyJWT or hmac against its real metadata."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from support.oidc import OidcProvider, oidc_provider

from appliance.auth import PRINCIPAL
from appliance.identity.jwks import JWKS_MAX_AGE_SECONDS, JWKS_REFRESH_COOLDOWN_SECONDS, JwksCache
from appliance.identity.jwt import LEEWAY_SECONDS, JwtVerifier
from appliance.identity.refusals import TokenRefusal

pytestmark = pytest.mark.anyio
RESOURCE = "https://scanner.lab.example/mcp"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with oidc_provider("RS256") as started:
        yield started


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def verifier_for(provider: OidcProvider, clock: FakeClock) -> JwtVerifier:
    return JwtVerifier(provider.issuer, RESOURCE, JwksCache(provider.issuer, clock=clock), PRINCIPAL)


async def refusal_of(verifier: JwtVerifier, token: str, reserved: tuple[str, ...] = ()) -> str:
    with pytest.raises(TokenRefusal) as caught:
        await verifier.verify(token, reserved)
    return caught.value.rule


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def good_claims(provider: OidcProvider, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": provider.issuer, "sub": "alice", "aud": RESOURCE, "exp": now + 300, "iat": now, **extra}


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "EdDSA"])
async def test_provider_token_is_verified_with_each_allowed_algorithm(alg: str, clock: FakeClock) -> None:
    with oidc_provider(alg) as issuer:
        verifier = verifier_for(issuer, clock)
        token = issuer.token(RESOURCE, client_id="alice", scope="scan:read scan:run")
        access = await verifier.verify(token)
    assert jwt.get_unverified_header(token)["alg"] == alg
    assert (access.client_id, access.subject) == ("alice", "alice")
    assert access.scopes == ["scan:read", "scan:run"]
    assert access.claims == {"iss": issuer.issuer}  # the SDK tells this alice from a static token's
    assert access.resource == RESOURCE


async def test_audience_list_containing_the_resource_is_accepted(provider: OidcProvider, clock: FakeClock) -> None:
    token = provider.token(["https://other.example/api", RESOURCE + "/"])
    assert (await verifier_for(provider, clock).verify(token)).client_id == "alice"


@pytest.mark.parametrize(
    ("claims", "audience", "rule"),
    [
        # unsafe
        ({"exp": int(time.time()) - LEEWAY_SECONDS - 60}, RESOURCE, "token_expired"),
        ({"nbf": int(time.time()) + LEEWAY_SECONDS + 300}, RESOURCE, "token_not_yet_valid"),
        ({"iss": "https://attacker.example"}, RESOURCE, "token_issuer_invalid"),
        ({}, "https://other-service.example/mcp", "token_audience_invalid"),
        ({}, None, "bearer_token_invalid"),  # no aud at all
    ],
    ids=["expired", "not_yet_valid", "wrong_issuer", "wrong_audience", "no_audience"],
)
async def test_provider_signed_token_with_bad_claim_is_refused(
    provider: OidcProvider, clock: FakeClock, claims: dict[str, Any], audience: str | None, rule: str
) -> None:
    token = provider.token(audience, claims=claims)
    assert await refusal_of(verifier_for(provider, clock), token) == rule


async def test_expiry_within_leeway_is_accepted(provider: OidcProvider, clock: FakeClock) -> None:
    token = provider.token(RESOURCE, claims={"exp": int(time.time()) - LEEWAY_SECONDS // 2})
    assert (await verifier_for(provider, clock).verify(token)).client_id == "alice"


@pytest.mark.parametrize("subject", ["auth0|12345", "-alice", "a" * 65, ""])
async def test_subject_that_is_no_principal_name_is_refused(
    provider: OidcProvider, clock: FakeClock, subject: str
) -> None:
    token = provider.token(RESOURCE, client_id=subject)
    assert await refusal_of(verifier_for(provider, clock), token) == "token_subject_invalid"


async def test_subject_of_a_static_token_principal_is_refused(provider: OidcProvider, clock: FakeClock) -> None:
    token = provider.token(RESOURCE, client_id="default")
    assert await refusal_of(verifier_for(provider, clock), token, reserved=("default",)) == "token_subject_reserved"


async def test_alg_none_token_is_refused(provider: OidcProvider, clock: FakeClock) -> None:
    # The provider never signs with "none": forged here, naming the provider's real key.
    token = jwt.encode(good_claims(provider), key=None, algorithm="none", headers={"kid": provider.kid})
    assert await refusal_of(verifier_for(provider, clock), token) == "token_algorithm_refused"


async def test_hs256_token_signed_with_the_public_key_is_refused(provider: OidcProvider, clock: FakeClock) -> None:
    # The classic key-confusion attack: HMAC keyed with the issuer's public key (PEM, as a
    # verifier that takes the alg from the token would load it), forged from the real JWKS.
    [jwk] = [k for k in provider.get("/jwks")["keys"] if k["kid"] == provider.kid]
    pem = jwt.PyJWK(jwk).key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": provider.kid}).encode())
    payload = _b64(json.dumps(good_claims(provider)).encode())
    signature = _b64(hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    assert await refusal_of(verifier_for(provider, clock), f"{header}.{payload}.{signature}") == (
        "token_algorithm_refused"
    )


async def test_token_signed_by_another_key_under_the_providers_kid_is_refused(
    provider: OidcProvider, clock: FakeClock
) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(good_claims(provider), stranger, algorithm="RS256", headers={"kid": provider.kid})
    assert await refusal_of(verifier_for(provider, clock), token) == "bearer_token_invalid"


async def test_rotation_is_picked_up_after_one_refresh_and_the_old_kid_is_then_unknown(clock: FakeClock) -> None:
    with oidc_provider("RS256") as issuer:
        verifier = verifier_for(issuer, clock)
        old = issuer.token(RESOURCE)
        assert (await verifier.verify(old)).client_id == "alice"
        assert issuer.jwks_requests() == 1
        issuer.rotate()
        new = issuer.token(RESOURCE)
        # Within the cooldown the new kid is not fetched yet: refused, and the issuer not asked.
        assert await refusal_of(verifier, new) == "token_key_unknown"
        assert issuer.jwks_requests() == 1
        clock.now += JWKS_REFRESH_COOLDOWN_SECONDS
        assert (await verifier.verify(new)).client_id == "alice"
        assert issuer.jwks_requests() == 2  # exactly one refresh
        # The old key is gone from the provider, so from the cache: its tokens fail now.
        assert await refusal_of(verifier, old) == "token_key_unknown"
        assert issuer.jwks_requests() == 2


async def test_flood_of_unknown_kids_costs_the_issuer_one_fetch_per_cooldown(clock: FakeClock) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with oidc_provider("RS256") as issuer:
        verifier = verifier_for(issuer, clock)
        assert (await verifier.verify(issuer.token(RESOURCE))).client_id == "alice"
        clock.now += JWKS_REFRESH_COOLDOWN_SECONDS  # the first unknown kid may refresh at once
        forged = [
            jwt.encode(good_claims(issuer), stranger, algorithm="RS256", headers={"kid": f"made-up-{n}"})
            for n in range(50)
        ]
        rules = {await refusal_of(verifier, token) for token in forged}
        assert rules == {"token_key_unknown"}
        assert issuer.jwks_requests() == 2  # the first fetch and one refresh, not 51
        # The same made-up kid never refreshes again, even after the cooldown.
        clock.now += JWKS_REFRESH_COOLDOWN_SECONDS
        assert await refusal_of(verifier, forged[0]) == "token_key_unknown"
        assert issuer.jwks_requests() == 2


async def test_stale_keys_are_fetched_again(provider: OidcProvider, clock: FakeClock) -> None:
    verifier = verifier_for(provider, clock)
    before = provider.jwks_requests()
    token = provider.token(RESOURCE)
    await verifier.verify(token)
    await verifier.verify(token)
    assert provider.jwks_requests() == before + 1  # cached
    clock.now += JWKS_MAX_AGE_SECONDS
    await verifier.verify(token)
    assert provider.jwks_requests() == before + 2


async def test_unreachable_issuer_refuses_tokens(clock: FakeClock) -> None:
    with oidc_provider("RS256") as issuer:
        token = issuer.token(RESOURCE)
        url = issuer.issuer
    # The provider has stopped: nothing listens on its port any more.
    verifier = JwtVerifier(url, RESOURCE, JwksCache(url, clock=clock), PRINCIPAL)
    assert await refusal_of(verifier, token) == "jwks_unavailable"
