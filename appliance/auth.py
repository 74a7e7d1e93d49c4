"""Bearer tokens for the HTTP transport: several at once (rotation), each naming a principal.

Tokens come from `APPLIANCE_AUTH_TOKEN` (principal "default") and from a file of
`principal token` lines that is re-read on reload. A bad file keeps the last good table.
"""

from __future__ import annotations

import hmac
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ConfigError

log = logging.getLogger(__name__)

PRINCIPAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{16,512}")  # at least 16 characters: a guessable token is no token


@dataclass(frozen=True)
class TokenTable:
    entries: tuple[tuple[str, bytes], ...] = ()

    def principal_for(self, presented: str) -> str | None:
        """The principal whose token matches, comparing against every entry in constant time."""
        candidate = presented.encode()
        found: str | None = None
        for principal, token in self.entries:
            # No early exit: the time taken does not tell which entry (or how much of one) matched.
            if hmac.compare_digest(candidate, token) and found is None:
                found = principal
        return found

    def __len__(self) -> int:
        return len(self.entries)


def parse_tokens(text: str, source: str) -> TokenTable:
    entries: list[tuple[str, bytes]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not PRINCIPAL.fullmatch(parts[0]) or not TOKEN.fullmatch(parts[1]):
            # The line itself may hold a secret: name the line, never print it.
            raise ConfigError(
                f"{source} line {number}: expected 'principal token' (token of 16+ URL-safe characters)",
                rule="tokens_invalid",
            )
        entries.append((parts[0], parts[1].encode()))
    return TokenTable(tuple(entries))


class TokenSource:
    """The current token table; `reload()` re-reads the file and keeps the old table on error."""

    def __init__(self, single: str | None, path: Path | None) -> None:
        self._single = single
        self._path = path
        self.table = self._load()

    @property
    def path(self) -> Path | None:
        return self._path

    def _load(self) -> TokenTable:
        entries: list[tuple[str, bytes]] = []
        if self._single is not None:
            if not TOKEN.fullmatch(self._single):
                raise ConfigError("APPLIANCE_AUTH_TOKEN must be 16+ URL-safe characters", rule="tokens_invalid")
            entries.append(("default", self._single.encode()))
        if self._path is not None:
            try:
                text = self._path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot read {self._path}: {exc.strerror}", rule="tokens_unreadable") from exc
            entries.extend(parse_tokens(text, str(self._path)).entries)
        return TokenTable(tuple(entries))

    def reload(self) -> bool:
        try:
            table = self._load()
        except ConfigError as exc:
            log.error("token reload refused; the previous tokens stay", extra={"rule": exc.rule, "reason": exc.message})
            return False
        self.table = table
        log.info("tokens reloaded", extra={"principals": [p for p, _ in table.entries]})
        return True
