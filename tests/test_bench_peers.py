"""bench/peers.py: bench/peers.json's validation, `--peer NAME=PATH`, the skip messages of a
checkout that cannot run, and the ServerSpec a usable checkout gives. Nothing is started here."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import pytest

import bench.__main__ as main
from bench import peers
from bench.host_servers import PORT, TARGET

KNOWN = peers.load()
FUZZING = "fuzzinglabs-nmap-mcp"
MOHDHAJI = "mohdhaji87-nmap-mcp-server"


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "peers.json"
    path.write_text(json.dumps(data))
    return path


def _shipped() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(peers.PEERS_FILE.read_text())
    return data


def _checkout(tmp_path: Path, name: str, *, venv: bool = True) -> Path:
    """A folder shaped like a set-up checkout of `name` (its venv's python an executable file)."""
    peer = KNOWN[name]
    folder = tmp_path / name / peer.subdirectory if peer.subdirectory else tmp_path / name
    folder.mkdir(parents=True)
    if venv:
        python = folder / peer.venv / "bin" / "python"
        python.parent.mkdir(parents=True)
        python.write_text("")
        python.chmod(0o755)
    return tmp_path / name


def test_the_shipped_peers_file_names_both_known_peers_with_their_pinned_commits() -> None:
    assert set(KNOWN) == {FUZZING, MOHDHAJI}
    assert KNOWN[FUZZING].repository == "FuzzingLabs/mcp-security-hub"
    assert KNOWN[FUZZING].needs_root  # SYN scans only
    assert KNOWN[MOHDHAJI].repository == "mohdhaji87/Nmap-MCP-Server"
    assert all(len(peer.commit) == 40 for peer in KNOWN.values())


def _drop(entry: dict[str, Any], key: str) -> None:
    del entry[key]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: _drop(e, "tool"), "lacks tool"),
        (lambda e: e.update(command="python server.py"), "command must be a non-empty list of strings"),
        (lambda e: e.update(command=[]), "command must be a non-empty list of strings"),
        (lambda e: e.update(env={"A": 1}), "env must map strings to strings"),
        (lambda e: e.update(direct_argv=["nmap", "{home}"]), "unknown placeholder {home}"),
        (lambda e: e.update(open_pattern="(unclosed"), "open_pattern is not a regular expression"),
        (lambda e: e.update(name="Upper Case"), "must be lower-case letters"),
        (lambda e: e.update(needs_root="yes"), "needs_root must be true or false"),
    ],
)
def test_an_incomplete_or_wrong_peer_entry_is_refused_with_what_is_wrong(
    tmp_path: Path, change: Any, message: str
) -> None:
    data = _shipped()
    change(data["peers"][0])
    with pytest.raises(peers.PeerConfigError, match="peers\\[0\\]") as raised:
        peers.load(_write(tmp_path, data))
    assert message in str(raised.value)


def test_two_peers_of_one_name_are_refused(tmp_path: Path) -> None:
    data = _shipped()
    data["peers"].append(copy.deepcopy(data["peers"][0]))
    with pytest.raises(peers.PeerConfigError, match="a second peer named"):
        peers.load(_write(tmp_path, data))


@pytest.mark.parametrize("data", [{"peers": []}, {"version": 2, "peers": []}, {"version": 1, "peers": {}}, []])
def test_a_file_of_another_shape_or_version_is_refused(tmp_path: Path, data: Any) -> None:
    with pytest.raises(peers.PeerConfigError, match="expected an object with version 1"):
        peers.load(_write(tmp_path, data))


def test_peer_option_names_a_known_peer_and_its_checkout(tmp_path: Path) -> None:
    request = peers.parse_option(f"{MOHDHAJI}={tmp_path}", KNOWN)
    assert request.peer is KNOWN[MOHDHAJI]
    assert request.path == tmp_path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fuzzinglabs-nmap-mcp", "NAME=PATH"),
        ("=/tmp/x", "NAME=PATH"),
        (f"{FUZZING}=", "NAME=PATH"),
        ("hexstrike=/tmp/x", "unknown peer 'hexstrike'"),
    ],
)
def test_peer_option_refuses_a_malformed_value_or_an_unknown_name(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        peers.parse_option(text, KNOWN)


def test_the_command_line_takes_repeated_peers_and_refuses_an_unknown_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main.main(["--peer", "hexstrike=/tmp/x"])
    assert exited.value.code == 2
    assert "unknown peer 'hexstrike'" in capsys.readouterr().err


def test_a_missing_checkout_is_skipped_with_a_message(tmp_path: Path) -> None:
    request = peers.parse_option(f"{MOHDHAJI}={tmp_path / 'absent'}", KNOWN)
    assert peers.skip_reason(request, euid=0) == (
        f"{MOHDHAJI}: no checkout at {tmp_path / 'absent'} (see scripts/setup-bench-peers)"
    )


def test_a_checkout_without_the_servers_folder_is_skipped(tmp_path: Path) -> None:
    (tmp_path / FUZZING).mkdir()
    request = peers.parse_option(f"{FUZZING}={tmp_path / FUZZING}", KNOWN)
    assert peers.skip_reason(request, euid=0) == (
        f"{FUZZING}: {tmp_path / FUZZING} has no reconnaissance/nmap-mcp/ (a checkout of FuzzingLabs/mcp-security-hub?)"
    )


def test_a_checkout_without_its_venv_is_skipped_with_the_set_up_command(tmp_path: Path) -> None:
    request = peers.parse_option(f"{MOHDHAJI}={_checkout(tmp_path, MOHDHAJI, venv=False)}", KNOWN)
    reason = peers.skip_reason(request, euid=0)
    assert (
        reason == f"{MOHDHAJI}: no venv at {tmp_path / MOHDHAJI / '.venv'} (run scripts/setup-bench-peers {tmp_path})"
    )


def test_a_syn_only_peer_is_skipped_without_root_and_runs_with_it(tmp_path: Path) -> None:
    request = peers.parse_option(f"{FUZZING}={_checkout(tmp_path, FUZZING)}", KNOWN)
    assert peers.skip_reason(request, euid=1000) == f"{FUZZING}: needs root (it runs SYN scans only)"
    assert peers.skip_reason(request, euid=0) is None


def test_a_set_up_checkout_gives_its_server_with_every_placeholder_filled(tmp_path: Path) -> None:
    checkout = _checkout(tmp_path, FUZZING)
    scratch = tmp_path / "scratch"
    spec = peers.server(peers.parse_option(f"{FUZZING}={checkout}", KNOWN), scratch)
    folder = checkout / "reconnaissance" / "nmap-mcp"
    assert spec.command == (f"{folder}/.venv/bin/python", f"{folder}/server.py")
    assert spec.cwd == str(folder)
    assert spec.env["NMAP_OUTPUT_DIR"] == str(scratch)
    assert spec.arguments == {"target": TARGET, "ports": str(PORT)}
    assert spec.direct_argv is not None
    assert spec.direct_argv[-3:] == ("-p", str(PORT), TARGET)
    assert f"{scratch}/direct.xml" in spec.direct_argv
    text = json.dumps(spec.to_json())
    assert not [name for name in peers.PLACEHOLDERS if f"{{{name}}}" in text]
    assert spec.open_pattern is not None and f'"port": "{PORT}"' in spec.open_pattern
