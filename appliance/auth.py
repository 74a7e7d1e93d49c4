"""Bearer tokens for the HTTP transport: static tokens (several at once, for rotation) and the
configured OAuth issuer's JWTs (appliance.identity.jwt), each naming a principal.

Static tokens come from `APPLIANCE_AUTH_TOKEN` (principal "default") and from a file of
`principal token [scopes]` lines that is re-read on reload. The SDK checks them through one
`TokenVerifier` (`BearerTokenVerifier`), so the principal is the ASGI `user` and the SDK's own
session-owner check applies: a session opened by one principal answers 404 to every other.

Revocation fails closed, a deliberate exception to "a bad reload keeps the last good state": a
missing or unreadable file means no file tokens, and a malformed line is dropped alone (logged
with its line number, counted, shown in /healthz) while the good lines stay valid.
"""

from __future__ import annotations

import hmac
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings

from appliance.errors import ConfigError
from appliance.identity.refusals import TokenRefusal, note_refusal
from appliance.identity.scopes import SCAN_READ, STATIC_DEFAULT_SCOPES
from appliance.jobs.model import ANONYMOUS_PRINCIPAL, STDIO_PRINCIPAL

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from appliance.identity.jwt import JwtVerifier  # HTTP with an issuer only: PyJWT loads then

log = logging.getLogger(__name__)

PRINCIPAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{16,512}")  # at least 16 characters: a guessable token is no token
SCOPE = re.compile(r"[a-z][a-z0-9:._-]{0,63}")
# The issuer a static token's identity carries: a later JWT for a principal of the same name
# comes from another issuer, so it can never take over a session opened with a static token.
STATIC_ISSUER = "urn:mcp-scanner-appliance:static-tokens"
# Owners of scans no token started (stdio's client, the loopback no-auth mode's callers).
RESERVED_PRINCIPALS = frozenset({STDIO_PRINCIPAL, ANONYMOUS_PRINCIPAL})
# The SDK's auth settings for static tokens. They have no authorization server: with no
# resource_server_url the SDK publishes no protected-resource metadata (which would send clients
# to an OAuth issuer that does not exist), and this issuer URL is never served or advertised;
# it only satisfies AuthSettings, which requires one. scan:read is needed for the endpoint.
STATIC_TOKENS_AUTH = AuthSettings(
    issuer_url="http://127.0.0.1/static-tokens", resource_server_url=None, required_scopes=[SCAN_READ]
)


@dataclass(frozen=True)
class TokenEntry:
    principal: str
    token: bytes = field(repr=False)
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TokenTable:
    entries: tuple[TokenEntry, ...] = ()
    # Line numbers of the tokens file that were dropped as malformed.
    bad_lines: tuple[int, ...] = ()

    def lookup(self, presented: str) -> TokenEntry | None:
        """The entry whose token matches, comparing against every entry in constant time."""
        candidate = presented.encode()
        found: TokenEntry | None = None
        for entry in self.entries:
            # No early exit: the time taken does not tell which entry (or how much of one) matched.
            if hmac.compare_digest(candidate, entry.token) and found is None:
                found = entry
        return found

    def principal_for(self, presented: str) -> str | None:
        entry = self.lookup(presented)
        return None if entry is None else entry.principal

    def __len__(self) -> int:
        return len(self.entries)


def _parse_line(line: str) -> TokenEntry | None:
    """One `principal token [scope,scope...]` line, or None when it is malformed."""
    parts = line.split()
    if len(parts) not in (2, 3) or not PRINCIPAL.fullmatch(parts[0]) or not TOKEN.fullmatch(parts[1]):
        return None
    # No scopes column: what a token could do before scopes were checked (appliance.identity.scopes).
    scopes = tuple(parts[2].split(",")) if len(parts) == 3 else STATIC_DEFAULT_SCOPES
    if not all(SCOPE.fullmatch(scope) for scope in scopes):
        return None
    return TokenEntry(parts[0], parts[1].encode(), scopes)


def parse_tokens(text: str, source: str) -> TokenTable:
    """Every well-formed line of a tokens file; a malformed line is dropped and named by number.

    Not covered: two lines with one token for different principals (the first line wins).
    """
    entries: list[TokenEntry] = []
    bad: list[int] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entry = _parse_line(line)
        if entry is None:
            # The line itself may hold a secret: name the line, never print it.
            log.error(
                "tokens file line dropped: expected 'principal token [scopes]' (token of 16+ URL-safe characters)",
                extra={"rule": "tokens_line_invalid", "file": source, "line": number},
            )
            bad.append(number)
            continue
        entries.append(entry)
    return TokenTable(tuple(entries), tuple(bad))


class TokenSource:
    """The current token table; `reload()` re-reads the file, failing closed (see the module doc)."""

    def __init__(self, single: str | None, path: Path | None, registry: CollectorRegistry | None = None) -> None:
        if single is not None and not TOKEN.fullmatch(single):
            raise ConfigError(
                "APPLIANCE_AUTH_TOKEN must be 16+ URL-safe characters",
                rule="tokens_invalid",
                recovery_suggestion="Create one with scripts/create-token.",
            )
        self._single = None if single is None else TokenEntry("default", single.encode(), STATIC_DEFAULT_SCOPES)
        self._path = path
        self.file_problem: str | None = None
        from prometheus_client import Gauge  # HTTP only: stdio starts without prometheus_client

        self._bad_lines = Gauge(
            "appliance_auth_token_lines_rejected",
            "Malformed lines of the tokens file dropped at its last load.",
            registry=registry,
        )
        self.table = self._load()

    @property
    def path(self) -> Path | None:
        return self._path

    def _load(self) -> TokenTable:
        entries: list[TokenEntry] = [] if self._single is None else [self._single]
        bad: tuple[int, ...] = ()
        self.file_problem = None
        if self._path is not None:
            try:
                text = self._path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                # Deleting the file is how an operator revokes every file token at once.
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
                self.file_problem = f"cannot read {self._path}: {reason}; no file tokens are valid"
                log.error("tokens file unreadable: no file tokens are valid", extra={"file": str(self._path)})
            else:
                parsed = parse_tokens(text, str(self._path))
                entries.extend(parsed.entries)
                bad = parsed.bad_lines
        self._bad_lines.set(len(bad))
        return TokenTable(tuple(entries), bad)

    def reload(self) -> bool:
        """Re-read the file; True when it was read whole (no unreadable file, no dropped line)."""
        self.table = self._load()
        log.info("tokens reloaded", extra={"principals": sorted({e.principal for e in self.table.entries})})
        return self.file_problem is None and not self.table.bad_lines

    def status(self) -> dict[str, Any]:
        """What /healthz shows: counts and line numbers, never a token."""
        return {
            "file": None if self._path is None else str(self._path),
            "file_problem": self.file_problem,
            "tokens": len(self.table),
            "bad_lines": list(self.table.bad_lines),
        }


class BearerTokenVerifier:
    """The SDK `TokenVerifier` of the appliance: static tokens first, then the issuer's JWTs.

    The principal becomes `AccessToken.client_id` (the audit's `principal`, the SDK's session
    owner) and `subject`; the issuer claim tells a static token's identity from a JWT's. A refusal
    is noted for the HTTP wrapper that audits and counts it (appliance.identity.refusals).
    """

    def __init__(self, tokens: TokenSource, jwt: JwtVerifier | None = None) -> None:
        self._tokens = tokens
        self._jwt = jwt

    async def verify_token(self, token: str) -> AccessToken | None:
        presented = token.strip()
        entry = self._tokens.table.lookup(presented)
        if entry is None and self._jwt is not None:
            try:
                # A JWT may not take a static token's principal name, nor the owner name of stdio's
                # or the no-auth mode's scans: jobs are owned by name.
                reserved = {e.principal for e in self._tokens.table.entries} | RESERVED_PRINCIPALS
                return await self._jwt.verify(presented, reserved)
            except TokenRefusal as refusal:
                extra = {"rule": refusal.rule, "reason": refusal.reason}
                log.warning("HTTP request refused: JWT not accepted", extra=extra)
                note_refusal(refusal.rule)
                return None
        if entry is None:
            log.warning("HTTP request refused: wrong bearer token", extra={"rule": "bearer_token_invalid"})
            note_refusal("bearer_token_invalid")
            return None
        return AccessToken(
            token=token,
            client_id=entry.principal,
            subject=entry.principal,
            scopes=list(entry.scopes),
            claims={"iss": STATIC_ISSUER},
        )
