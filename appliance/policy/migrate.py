"""Version 1 policy documents, read into the version 2 layout before validation.

Version 1 kept the concurrency limits in three places (`tools.<tool>.max_concurrent`/`max_queued`,
`resilience.max_concurrent_scans`, `limits.max_sessions`/`limits.per_principal.*`); version 2
holds them in one table, `limits.concurrency`. A version 1 file keeps its meaning: every old key
moves, value unchanged, to its new place, and validation then checks it there (bounds included).
A key version 1 did not know is moved under its own name, so validation still names the typo.

Not covered: the values themselves; this module only moves keys and never judges them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from appliance.errors import PolicyError

# The tools of the per-tool table (appliance.policy.model.PerToolConcurrency; a test keeps the
# two equal). Named here because this module runs before the model exists.
TOOL_NAMES = ("nmap_scan", "masscan_scan", "gobuster_scan")
TABLE = ("limits", "concurrency")
# Old key -> its name in the table, for the keys that sat under one old parent.
_TOOL_KEYS = {"max_concurrent": "running", "max_queued": "queued"}
_PRINCIPAL_KEYS = {"max_running_scans": "running", "max_queued_calls": "queued", "max_sessions": "sessions"}


@dataclass(frozen=True)
class Moved:
    """One version 1 key and where version 2 keeps it (dotted paths)."""

    old: str
    new: str


def _path(*parts: str) -> str:
    return ".".join(parts)


def _node(data: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    """The mapping at `path`, or None when a step is missing or not a mapping."""
    node: Any = data
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _simple_moves() -> tuple[tuple[tuple[str, ...], str, tuple[str, ...]], ...]:
    """(old parent, old key, new path) for every version 1 key with one fixed new place."""
    tools = tuple(
        (("tools", tool), old, (*TABLE, "per_tool", tool, new))
        for tool in TOOL_NAMES
        for old, new in _TOOL_KEYS.items()
    )
    return (
        *tools,
        (("resilience",), "max_concurrent_scans", (*TABLE, "global", "running")),
        (("limits",), "max_sessions", (*TABLE, "global", "sessions")),
    )


def version_1_keys(data: dict[str, Any]) -> tuple[Moved, ...]:
    """The version 1 keys present in `data`, each with its version 2 place."""
    found = [
        Moved(_path(*parent, old), _path(*new))
        for parent, old, new in _simple_moves()
        if old in (_node(data, parent) or {})
    ]
    limits = _node(data, ("limits",))
    if limits is not None and "per_principal" in limits:
        share = limits["per_principal"]
        if isinstance(share, dict) and share:
            for key in map(str, share):
                new = _PRINCIPAL_KEYS.get(key, key)
                found.append(Moved(_path("limits", "per_principal", key), _path(*TABLE, "per_principal", new)))
        else:
            found.append(Moved("limits.per_principal", _path(*TABLE, "per_principal")))
    return tuple(found)


def _room(data: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    """The mapping that is to hold the last key of `path`, made as needed; None if a step is not a mapping."""
    node = data
    for key in path[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            return None
        node = child
    return node


def from_version_1(data: dict[str, Any], source: str) -> tuple[dict[str, Any], tuple[Moved, ...]]:
    """A version 2 document with the same limits as the version 1 document `data` (left unchanged).

    Raises PolicyError when `data` already holds the version 2 table: which of the two would
    count is exactly the silent change of meaning this conversion exists to prevent. When a new
    place cannot be made (say `limits` is not a mapping), the old key stays where it is and
    validation names both problems.
    """
    limits = _node(data, ("limits",))
    if limits is not None and "concurrency" in limits:
        raise PolicyError(
            f"{source}: limits.concurrency is the version 2 limits table, but the file says version: 1",
            rule="policy_version_mismatch",
            recovery_suggestion="Set version: 2 and move every limit into limits.concurrency, "
            "or remove limits.concurrency and keep the version 1 keys.",
        )
    converted = copy.deepcopy(data)
    moved = version_1_keys(converted)
    for parent, old, new in _simple_moves():
        node = _node(converted, parent)
        room = _room(converted, new) if node is not None and old in node else None
        if node is not None and room is not None:
            room[new[-1]] = node.pop(old)
    limits = _node(converted, ("limits",))
    if limits is not None and "per_principal" in limits:
        share = limits.pop("per_principal")
        if isinstance(share, dict):
            share = {_PRINCIPAL_KEYS.get(key, key): value for key, value in share.items()}
        room = _room(converted, (*TABLE, "per_principal"))
        if room is not None:  # `limits` is a mapping here, so is the table made in it
            room["per_principal"] = share
    converted["version"] = 2
    return converted, moved


def refuse_version_1_keys(data: dict[str, Any], source: str) -> None:
    """Raise PolicyError naming the new key of every version 1 key in the version 2 document `data`."""
    stale = version_1_keys(data)
    if stale:
        names = "; ".join(f"{m.old} is now {m.new}" for m in stale)
        raise PolicyError(
            f"{source}: version 2 keeps every concurrency limit in limits.concurrency: {names}",
            rule="policy_key_moved",
            recovery_suggestion="Write each limit at its new key (README: Limits, breakers, retries), "
            "or keep the file at version: 1, which is converted at load.",
        )
