"""The NSE allowlist against nmap's script.db (a sample file; the host's nmap is not needed)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import PolicyError
from appliance.policy.model import Policy
from appliance.policy.nse import (
    NmapDatadir,
    build_nmap_datadir,
    check_script_allowlist,
    nmap_datadir,
    parse_script_db,
)

SCRIPT_DB = """\
Entry { filename = "banner.nse", categories = { "discovery", "safe", } }
Entry { filename = "http-title.nse", categories = { "default", "discovery", "safe", } }
Entry { filename = "http-brute.nse", categories = { "brute", "intrusive", } }
Entry { filename = "broadcast-dhcp-discover.nse", categories = { "broadcast", "safe", } }
Entry { filename = "whois-ip.nse", categories = { "discovery", "external", "safe", } }
"""


def with_scripts(lab_policy_data: dict[str, Any], scripts: list[str]) -> Policy:
    lab_policy_data["tools"]["nmap_scan"]["allowed_scripts"] = scripts
    return Policy.model_validate(lab_policy_data)


def test_parse_script_db_reads_categories() -> None:
    database = parse_script_db(SCRIPT_DB)

    assert database["http-title"] == {"default", "discovery", "safe"}
    assert database["http-brute"] == {"brute", "intrusive"}


@pytest.mark.parametrize(
    ("scripts", "rule"),
    [
        # safe
        (["banner", "http-title"], None),
        ([], None),
        # unsafe
        (["http-brute"], "policy_script_unsafe"),
        (["broadcast-dhcp-discover"], "policy_script_unsafe"),
        (["whois-ip"], "policy_script_unsafe"),
        (["banner", "no-such-script"], "policy_script_unknown"),
    ],
)
def test_script_allowlist(
    scripts: list[str], rule: str | None, lab_policy_data: dict[str, Any], tmp_path: Path
) -> None:
    database = tmp_path / "script.db"
    database.write_text(SCRIPT_DB)
    policy = with_scripts(lab_policy_data, scripts)

    if rule is None:
        check_script_allowlist(policy, database)
        return
    with pytest.raises(PolicyError) as refused:
        check_script_allowlist(policy, database)
    assert refused.value.rule == rule


def test_missing_script_db_refuses_a_non_empty_allowlist(lab_policy_data: dict[str, Any], tmp_path: Path) -> None:
    check_script_allowlist(with_scripts(lab_policy_data, []), tmp_path / "missing.db")

    with pytest.raises(PolicyError) as refused:
        check_script_allowlist(with_scripts(lab_policy_data, ["banner"]), tmp_path / "missing.db")

    assert refused.value.rule == "policy_scripts_unverifiable"


# --- the private --datadir ----------------------------------------------------------------------


@pytest.fixture
def nmap_data(tmp_path: Path) -> Path:
    """A stand-in for /usr/share/nmap/scripts: SCRIPT_DB's entries and a file per script."""
    scripts = tmp_path / "share" / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "script.db").write_text(SCRIPT_DB)
    for name in parse_script_db(SCRIPT_DB):
        (scripts / f"{name}.nse").write_text(f"-- {name}\n")
    return scripts / "script.db"


def test_version_scan_cannot_reach_scripts_outside_the_allowlist(nmap_data: Path, tmp_path: Path) -> None:
    datadir = build_nmap_datadir(["http-title", "banner"], nmap_data, base=tmp_path).path

    assert datadir is not None
    scripts = datadir / "scripts"
    assert sorted(p.name for p in scripts.iterdir()) == ["banner.nse", "http-title.nse", "script.db"]
    assert set(parse_script_db((scripts / "script.db").read_text())) == {"banner", "http-title"}
    assert nmap_datadir(["banner", "http-title"]).path == datadir  # what nmap_scan passes as --datadir


def test_same_allowlist_reuses_its_datadir(nmap_data: Path, tmp_path: Path) -> None:
    first = build_nmap_datadir(["banner"], nmap_data, base=tmp_path)

    assert build_nmap_datadir(["banner", "banner"], nmap_data, base=tmp_path) == first


def test_no_datadir_when_nmap_ships_only_allowed_scripts(nmap_data: Path, tmp_path: Path) -> None:
    everything = sorted(parse_script_db(SCRIPT_DB))

    assert build_nmap_datadir(everything, nmap_data, base=tmp_path) == NmapDatadir()
    assert nmap_datadir(everything) == NmapDatadir()


def test_unwritable_datadir_is_reported_not_silently_skipped(nmap_data: Path, tmp_path: Path) -> None:
    # nmap_scan refuses -sV on this (tests/tools/test_nmap.py); the policy itself still loads.
    datadir = build_nmap_datadir(["banner"], nmap_data, base=tmp_path / "missing")

    assert datadir.path is None
    assert datadir.problem is not None and "private nmap data directory" in datadir.problem


def test_unreadable_script_db_refuses_version_scans_instead_of_failing_open(tmp_path: Path) -> None:
    # A source-built nmap keeps its scripts elsewhere: -sV would run them all, unchecked.
    datadir = build_nmap_datadir([], tmp_path / "no-such" / "script.db", base=tmp_path)

    assert datadir.path is None
    assert datadir.problem is not None and "cannot be read" in datadir.problem


def test_datadir_removed_under_the_appliance_is_built_again(nmap_data: Path, tmp_path: Path) -> None:
    # A /tmp cleaner removing it would make nmap fall back to its own directory (every script).
    first = build_nmap_datadir(["banner"], nmap_data, base=tmp_path).path
    assert first is not None
    shutil.rmtree(first)

    again = nmap_datadir(["banner"])  # rebuilt from this host's nmap (the suite runs beside nmap)

    assert again.path is not None and again.path != first
    assert sorted(p.name for p in (again.path / "scripts").iterdir()) == ["banner.nse", "script.db"]
