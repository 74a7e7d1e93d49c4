"""Peers of the host comparison: bench/peers.json (what each known peer is and how to start it),
`--peer NAME=PATH` (a checkout of one, with its own venv) and the ServerSpec a checkout gives.

A peer's code is never part of this repository: the operator checks it out and runs
scripts/setup-bench-peers on it; a missing checkout or venv is skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.host_servers import PORT, TARGET, ServerSpec, base_env

PEERS_FILE = Path(__file__).resolve().parent / "peers.json"
VERSION = 1
PLACEHOLDERS = frozenset({"checkout", "venv", "scratch", "target", "port"})
_PLACEHOLDER = re.compile(r"\{([a-z]+)\}")
_NAME = re.compile(r"[a-z0-9][a-z0-9.-]*")
_STRINGS = ("name", "repository", "commit", "subdirectory", "venv", "tool", "open_pattern", "notes")


class PeerConfigError(ValueError):
    """bench/peers.json does not describe its peers completely or correctly."""


@dataclass(frozen=True)
class Peer:
    """One known peer (an entry of bench/peers.json)."""

    name: str
    repository: str
    commit: str
    subdirectory: str  # where the server lives in the checkout ("" for its root)
    venv: str  # relative to the server's folder
    command: tuple[str, ...]
    env: Mapping[str, str]
    tool: str
    arguments: Mapping[str, str]
    direct_argv: tuple[str, ...]
    open_pattern: str
    needs_root: bool
    notes: str


@dataclass(frozen=True)
class PeerRequest:
    """`--peer NAME=PATH`: the known peer NAME, checked out at PATH."""

    peer: Peer
    path: Path


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise PeerConfigError(f"{where} must be a non-empty list of strings")
    return tuple(value)


def _mapping(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise PeerConfigError(f"{where} must map strings to strings")
    return dict(value)


def _check_placeholders(texts: Sequence[str], where: str) -> None:
    for text in texts:
        unknown = set(_PLACEHOLDER.findall(text)) - PLACEHOLDERS
        if unknown:
            raise PeerConfigError(f"{where}: unknown placeholder {{{sorted(unknown)[0]}}} in {text!r}")


def _peer(entry: Any, index: int) -> Peer:
    where = f"peers[{index}]"
    if not isinstance(entry, dict):
        raise PeerConfigError(f"{where} must be an object")
    required = (*_STRINGS, "command", "env", "arguments", "direct_argv", "needs_root")
    missing = [key for key in required if key not in entry]
    if missing:
        raise PeerConfigError(f"{where} lacks {', '.join(missing)}")
    for key in _STRINGS:
        if not isinstance(entry[key], str):
            raise PeerConfigError(f"{where}.{key} must be a string")
    if not _NAME.fullmatch(entry["name"]):
        raise PeerConfigError(f"{where}.name {entry['name']!r} must be lower-case letters, digits, '.' and '-'")
    if not isinstance(entry["needs_root"], bool):
        raise PeerConfigError(f"{where}.needs_root must be true or false")
    command = _strings(entry["command"], f"{where}.command")
    direct = _strings(entry["direct_argv"], f"{where}.direct_argv")
    env = _mapping(entry["env"], f"{where}.env")
    arguments = _mapping(entry["arguments"], f"{where}.arguments")
    _check_placeholders([*command, *direct, *env.values(), *arguments.values(), entry["open_pattern"]], where)
    try:
        re.compile(entry["open_pattern"].replace("{port}", str(PORT)))
    except re.error as exc:
        raise PeerConfigError(f"{where}.open_pattern is not a regular expression: {exc}") from exc
    return Peer(
        name=entry["name"],
        repository=entry["repository"],
        commit=entry["commit"],
        subdirectory=entry["subdirectory"],
        venv=entry["venv"],
        command=command,
        env=env,
        tool=entry["tool"],
        arguments=arguments,
        direct_argv=direct,
        open_pattern=entry["open_pattern"],
        needs_root=entry["needs_root"],
        notes=entry["notes"],
    )


def load(path: Path = PEERS_FILE) -> dict[str, Peer]:
    """The known peers by name; PeerConfigError says what is wrong with the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PeerConfigError(f"{path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("peers"), list):
        raise PeerConfigError(f"{path}: expected an object with version {VERSION} and a list of peers")
    peers: dict[str, Peer] = {}
    for index, entry in enumerate(data["peers"]):
        peer = _peer(entry, index)
        if peer.name in peers:
            raise PeerConfigError(f"peers[{index}]: a second peer named {peer.name!r}")
        peers[peer.name] = peer
    return peers


def parse_option(text: str, known: Mapping[str, Peer]) -> PeerRequest:
    """`NAME=PATH` with NAME a known peer (argparse's error otherwise; a missing PATH is not an
    error here: the comparison skips it with a message)."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--peer takes NAME=PATH, not {text!r}")
    if name not in known:
        raise argparse.ArgumentTypeError(f"unknown peer {name!r}; bench/peers.json knows: {', '.join(sorted(known))}")
    return PeerRequest(known[name], Path(path).expanduser().absolute())


def server_folder(request: PeerRequest) -> Path:
    return request.path / request.peer.subdirectory if request.peer.subdirectory else request.path


def venv_python(request: PeerRequest) -> Path:
    return server_folder(request) / request.peer.venv / "bin" / "python"


def skip_reason(request: PeerRequest, euid: int | None = None) -> str | None:
    """Why this checkout cannot run (None when it can): the message the report shows."""
    name, folder = request.peer.name, server_folder(request)
    if not request.path.is_dir():
        return f"{name}: no checkout at {request.path} (see scripts/setup-bench-peers)"
    if not folder.is_dir():
        return f"{name}: {request.path} has no {request.peer.subdirectory}/ (a checkout of {request.peer.repository}?)"
    if not os.access(venv_python(request), os.X_OK):
        return f"{name}: no venv at {folder / request.peer.venv} (run scripts/setup-bench-peers {request.path.parent})"
    if request.peer.needs_root and (os.geteuid() if euid is None else euid) != 0:
        return f"{name}: needs root (it runs SYN scans only)"
    return None


def _fill(text: str, values: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def server(request: PeerRequest, scratch: Path) -> ServerSpec:
    """The peer's ServerSpec for a run, its placeholders filled (`scratch`: a fresh folder)."""
    folder = server_folder(request)
    values = {
        "checkout": str(folder),
        "venv": str(folder / request.peer.venv),
        "scratch": str(scratch),
        "target": TARGET,
        "port": str(PORT),
    }
    peer = request.peer
    return ServerSpec(
        name=peer.name,
        command=tuple(_fill(part, values) for part in peer.command),
        env=base_env() | {key: _fill(value, values) for key, value in peer.env.items()},
        tool=peer.tool,
        arguments={key: _fill(value, values) for key, value in peer.arguments.items()},
        cwd=str(folder),
        direct_argv=tuple(_fill(part, values) for part in peer.direct_argv),
        open_pattern=_fill(peer.open_pattern, values),
        notes=peer.notes,
    )
