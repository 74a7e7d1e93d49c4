"""The key ring that seals 2026-07-28 request state, read once at start from a secret file.

Fleet fronts answer any request (stateless HTTP), so the state one front seals must open on
every other: they share these keys (APPLIANCE_REQUEST_STATE_KEY_FILE). One key a line; the first
seals, every line opens (the SDK's rotation ring). The keys are never logged, and no message here
shows them (only the file's path and a key's length).
"""

from __future__ import annotations

from pathlib import Path

from mcp.server.request_state import RequestStateSecurity

from appliance.errors import ConfigError

# The SDK's floor for an operator secret (AESGCMRequestStateCodec): 32 bytes of randomness.
MIN_KEY_BYTES = 32


def load_keys(path: Path | None) -> list[bytes] | None:
    """The keys in `path` (blank lines skipped, whitespace stripped); None when no file is set.
    A file that is set but unreadable, empty, holds a short key or a key twice refuses start."""
    if path is None:
        return None
    recovery = "Write one random key a line: scripts/create-token FILE makes one (give every front the same file)."
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"the request-state key file {path} cannot be read: {exc.strerror}",
            rule="request_state_key_unreadable",
            recovery_suggestion="Make it readable by the appliance's user (UID 65532 in the image), or unset "
            "APPLIANCE_REQUEST_STATE_KEY_FILE.",
        ) from exc
    keys = [line.strip() for line in text.splitlines() if line.strip()]
    if not keys:
        raise ConfigError(
            f"the request-state key file {path} holds no key",
            rule="request_state_key_weak",
            recovery_suggestion=recovery,
        )
    for number, key in enumerate(keys, start=1):
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(
                f"key {number} in {path} is {len(key)} bytes; request-state keys need {MIN_KEY_BYTES} or more",
                rule="request_state_key_weak",
                recovery_suggestion=recovery,
            )
    if len(set(keys)) != len(keys):
        raise ConfigError(
            f"the request-state key file {path} holds a key twice",
            rule="request_state_key_weak",
            recovery_suggestion="Keep each key once (rotation: the new key first, the old one after it).",
        )
    return keys


def request_state_security(keys: list[bytes] | None) -> RequestStateSecurity | None:
    """The SDK's protection of request state under `keys`; None: the SDK's own per-process key."""
    return None if keys is None else RequestStateSecurity(keys=keys)
