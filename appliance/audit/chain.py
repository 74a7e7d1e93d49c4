"""The chain of audit lines: the canonical bytes of a line, its chain value, the key.

A line is the JSON object of the record as `json.dumps` writes it (`seq` first, ASCII only,
`", "` and `": "` between items) with one last member `"chain": "<64 hex>"` added before the
closing brace. The canonical bytes of a line are those bytes without that member: cut
`, "chain": "<64 hex>"` off the end and keep the `}`. So a verifier
in any language checks the bytes as written, without re-encoding JSON (README: Audit trail).

    chain(n) = HMAC-SHA256(key, chain(n-1) + canonical(n))   with a key
    chain(n) = SHA-256(chain(n-1) + canonical(n))            without one

`chain(n-1)` is the previous line's chain value as 64 lowercase hex characters (ASCII); the
first line of a chain (`chain_start`, seq 1) uses GENESIS.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError

GENESIS = "0" * 64
HMAC_MODE = "hmac-sha256"
SHA256_MODE = "sha256"
# The events that open a chain (at seq 1, from GENESIS) and that carry it into a new file.
CHAIN_START = "chain_start"
CHAIN_CONTINUES = "chain_continues"
# The reason of a stderr sink's chain_start: each process starts its own chain, linked to nothing
# (the lines before it in a container log are another process's).
STDERR_CHAIN = "stderr sink: the chain runs within this process"
# A key shorter than this is a typo or a placeholder, not a secret (scripts/create-token: 43).
MIN_KEY_BYTES = 16
_SEALED = re.compile(rb', "chain": "([0-9a-f]{64})"\}\Z')
_KEY_ID_LABEL = b"appliance audit key id"


class NotChained(ValueError):
    """A line that does not end with a chain member, or is not a JSON object with an integer seq."""


@dataclass(frozen=True)
class Head:
    """The last line of a chain: its sequence number and chain value."""

    seq: int
    chain: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.chain}"


@dataclass(frozen=True)
class Chainer:
    """Computes chain values with the key, or a plain SHA-256 chain without one."""

    key: bytes | None = None

    @property
    def mode(self) -> str:
        return HMAC_MODE if self.key is not None else SHA256_MODE

    @property
    def key_id(self) -> str | None:
        """A fingerprint that names the key in `chain_start` lines without revealing it."""
        if self.key is None:
            return None
        return hmac.new(self.key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]

    def link(self, previous: str, canonical: bytes) -> str:
        data = previous.encode("ascii") + canonical
        if self.key is None:
            return hashlib.sha256(data).hexdigest()
        return hmac.new(self.key, data, hashlib.sha256).hexdigest()

    def seal(self, previous: str, record: dict[str, Any]) -> tuple[bytes, str]:
        """The line (without its newline) of `record` after `previous`, and its chain value."""
        # json.dumps's default separators: the lines read as the trail's lines always did.
        canonical = json.dumps(record, default=str).encode("ascii")
        chain = self.link(previous, canonical)
        return canonical[:-1] + b', "chain": "' + chain.encode("ascii") + b'"}', chain


@dataclass(frozen=True)
class Sealed:
    """A line taken apart: its record, canonical bytes and chain value."""

    record: dict[str, Any]
    canonical: bytes
    chain: str

    @property
    def seq(self) -> int:
        seq: int = self.record["seq"]
        return seq

    @property
    def event(self) -> object:
        return self.record.get("event")


def unseal(line: bytes) -> Sealed:
    """Split a written line (without its newline); raise NotChained for anything else."""
    found = _SEALED.search(line)
    if found is None:
        raise NotChained("no chain value at the end of the line")
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise NotChained(f"not JSON ({exc})") from exc
    if not isinstance(record, dict) or type(record.get("seq")) is not int or record["seq"] < 1:
        raise NotChained("no positive integer seq")
    return Sealed(record, line[: found.start()] + b"}", found.group(1).decode("ascii"))


def line_digest(line: bytes) -> str:
    """How a `chain_start` names the line before it (its bytes without the newline)."""
    return hashlib.sha256(line).hexdigest()


def load_key(path: Path | None, *, default: Path) -> bytes | None:
    """The key in `path` (surrounding whitespace stripped). The default path may be absent
    (no key: a SHA-256 chain); a path set on purpose must be readable, else start is refused."""
    if path is None:
        return None
    try:
        key = path.read_bytes().strip()
    except FileNotFoundError:
        if path == default:
            return None
        raise ConfigError(
            f"the audit key file {path} does not exist",
            rule="audit_key_unreadable",
            recovery_suggestion="Create it (scripts/create-token FILE) or unset APPLIANCE_AUDIT_KEY_FILE.",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"the audit key file {path} cannot be read: {exc.strerror}",
            rule="audit_key_unreadable",
            recovery_suggestion="Make it readable by the appliance's user (UID 65532 in the image).",
        ) from exc
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"the audit key in {path} is shorter than {MIN_KEY_BYTES} bytes",
            rule="audit_key_weak",
            recovery_suggestion="Use a random key: scripts/create-token FILE writes one.",
        )
    return key
