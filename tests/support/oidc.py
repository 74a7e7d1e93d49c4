"""A real OpenID provider on 127.0.0.1: npm `oauth2-mock-server` (pinned in tests/oidc/) on the
Node 22 of conformance/, started by tests/oidc/provider.mjs. It signs JWTs with its own keys and
serves them at its jwks_uri; `rotate()` replaces its key; `jwks_requests()` counts key fetches.

Both installs are scripts/test's (`scripts/conformance --install`, `scripts/install-oidc-provider`);
a missing one fails the test with what to run, it is never skipped.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from support.inspector import NODE
from support.policies import REPO

PROVIDER_DIR = REPO / "tests" / "oidc"
PROVIDER = PROVIDER_DIR / "provider.mjs"
PACKAGE = PROVIDER_DIR / "node_modules" / "oauth2-mock-server" / "package.json"
# Node start-up and one key generation; on a loaded CI host a few seconds.
PROVIDER_START_SECONDS = 20
ALL_TEST_SCOPES = "scan:read scan:run scan:intrusive"


def provider_missing() -> str | None:
    """Why the provider cannot run here (not installed), or None."""
    for path, install in ((NODE, "scripts/conformance --install"), (PACKAGE, "scripts/install-oidc-provider")):
        if not path.is_file():
            return f"{path} is missing: run {install} (needs npm and the npm registry)"
    return None


def _request(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - the loopback provider
        return json.loads(response.read())


@dataclass
class OidcProvider:
    proc: subprocess.Popen[bytes]
    issuer: str
    kid: str
    kids: list[str] = field(default_factory=list)

    def token(
        self,
        audience: str | list[str] | None,
        *,
        client_id: str = "alice",
        scope: str = ALL_TEST_SCOPES,
        claims: dict[str, Any] | None = None,
    ) -> str:
        """An access token from the real token endpoint (client credentials): `sub` is client_id."""
        body: dict[str, Any] = {"grant_type": "client_credentials", "client_id": client_id, "scope": scope}
        if audience is not None:
            body["aud"] = audience
        if claims:
            body["test_claims"] = claims
        token: str = _request(f"{self.issuer}/token", body)["access_token"]
        return token

    def rotate(self) -> str:
        """A new signing key replaces the current one; the new kid."""
        self.kid = _request(f"{self.issuer}/test/rotate", {})["kid"]
        self.kids.append(self.kid)
        return self.kid

    def jwks_requests(self) -> int:
        count: int = _request(f"{self.issuer}/test/stats")["jwks_requests"]
        return count

    def get(self, path: str) -> Any:
        return _request(f"{self.issuer}{path}")


@contextlib.contextmanager
def oidc_provider(alg: str = "RS256") -> Iterator[OidcProvider]:
    """The provider signing with a fresh `alg` key; stopped (stdin closed, then killed) after."""
    missing = provider_missing()
    assert missing is None, missing
    proc = subprocess.Popen(
        [str(NODE), str(PROVIDER), alg],
        cwd=PROVIDER_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        started = time.monotonic()
        line = proc.stdout.readline()  # the provider prints one line once it listens, or exits
        assert line, f"provider exited at start: {proc.stderr.read().decode() if proc.stderr else ''}"
        assert time.monotonic() - started < PROVIDER_START_SECONDS
        first = json.loads(line)
        yield OidcProvider(proc, first["issuer"], first["kid"], [first["kid"]])
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
