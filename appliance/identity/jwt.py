"""JWT access tokens of the configured OAuth issuer, verified with its own keys (PyJWT).

Checked: the signature with the issuer's key named by `kid`, an allowlisted asymmetric algorithm
that fits that key (never `none`, never HS*: an HS256 token "signed" with the public key fails),
`iss` exactly the issuer, `aud` containing this resource (APPLIANCE_PUBLIC_URL, RFC 8707), `exp`
and `nbf` with LEEWAY_SECONDS, and a `sub` that is a valid principal name. The principal is `sub`;
the issuer travels in the claims, so the SDK's session-owner check tells it apart from a static
token's principal of the same name.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from typing import Any

import jwt
from mcp.server.auth.provider import AccessToken

from appliance.identity.jwks import JwksCache, JwksUnavailableError
from appliance.identity.refusals import TokenRefusal
from appliance.identity.scopes import token_scopes

log = logging.getLogger(__name__)

# Clock skew tolerated on exp and nbf: small, so an expired token is not good for long.
LEEWAY_SECONDS = 30
# Asymmetric algorithms only, each with the key type it needs.
ALGORITHM_KEY_TYPES = {"RS256": "RSA", "PS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}
# Larger is no access token an issuer sends; refused before it is parsed.
MAX_TOKEN_CHARS = 16 * 1024


def _same_resource(a: str, b: str) -> bool:
    return a.removesuffix("/") == b.removesuffix("/")


class JwtVerifier:
    def __init__(self, issuer: str, resource: str, keys: JwksCache, principal: re.Pattern[str]) -> None:
        """`principal` is the compiled pattern a principal name must match (appliance.auth.PRINCIPAL)."""
        self.issuer = issuer
        self.resource = resource
        self.keys = keys
        self._principal = principal

    async def verify(self, token: str, reserved: Collection[str] = ()) -> AccessToken:
        """The verified token, or TokenRefusal. `reserved` are principal names a JWT may not take
        (the static tokens' principals: jobs are owned by principal name)."""
        if token.count(".") != 2 or len(token) > MAX_TOKEN_CHARS:
            raise TokenRefusal("bearer_token_invalid", "neither a static token nor a JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenRefusal("bearer_token_invalid", "not a JWT") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHM_KEY_TYPES:
            raise TokenRefusal("token_algorithm_refused", f"algorithm {str(alg)[:16]!r} is not allowed")
        if not isinstance(kid, str):
            raise TokenRefusal("token_key_unknown", "the token names no key (kid)")
        try:
            jwk = await self.keys.key(kid)
        except JwksUnavailableError as exc:
            raise TokenRefusal("jwks_unavailable", str(exc)) from exc
        if jwk is None:
            raise TokenRefusal("token_key_unknown", "the issuer publishes no key with this kid")
        if jwk.get("kty") != ALGORITHM_KEY_TYPES[alg] or jwk.get("alg", alg) != alg:
            raise TokenRefusal("token_algorithm_refused", f"algorithm {alg} does not fit the issuer's key {kid}")
        claims = self._decode(token, jwk, alg)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not self._principal.fullmatch(subject):
            raise TokenRefusal("token_subject_invalid", "sub is not a principal name this appliance accepts")
        if subject in reserved:
            raise TokenRefusal("token_subject_reserved", "sub is the principal of a static token")
        exp = claims["exp"]
        return AccessToken(
            token=token,
            client_id=subject,
            subject=subject,
            scopes=token_scopes(claims),
            # The SDK refuses a token past expires_at on its own: the same leeway as the check above.
            expires_at=int(exp) + LEEWAY_SECONDS,
            resource=self.resource,
            claims={"iss": self.issuer},
        )

    def _decode(self, token: str, jwk: dict[str, Any], alg: str) -> dict[str, Any]:
        try:
            key = jwt.PyJWK(jwk, algorithm=alg)
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenRefusal("token_expired", "the token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise TokenRefusal("token_not_yet_valid", "the token is not valid yet (nbf or iat)") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenRefusal("token_issuer_invalid", "iss is not the configured issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRefusal("bearer_token_invalid", f"the token has no {exc.claim} claim") from exc
        except jwt.PyJWTError as exc:
            raise TokenRefusal("bearer_token_invalid", type(exc).__name__) from exc
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
        if not any(isinstance(a, str) and _same_resource(a, self.resource) for a in audiences):
            raise TokenRefusal("token_audience_invalid", "aud does not contain this resource (APPLIANCE_PUBLIC_URL)")
        return claims
