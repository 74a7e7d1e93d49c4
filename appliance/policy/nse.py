"""Check a policy's NSE allowlist against nmap's own script database (script.db).

A script qualifies when script.db lists it and none of its categories talks to third parties,
floods the segment or attacks the target. Not covered: what a script does beyond its declared
categories (that is nmap's own review).
"""

from __future__ import annotations

import atexit
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import PolicyError
from appliance.policy.model import FORBIDDEN_SCRIPT_CATEGORIES, Policy

SCRIPT_DB = Path("/usr/share/nmap/scripts/script.db")
log = logging.getLogger(__name__)

ENTRY = re.compile(r'Entry \{ filename = "(?P<name>[^"]+)\.nse", categories = \{ (?P<cats>[^}]*)\} \}')


def parse_script_db(text: str) -> dict[str, frozenset[str]]:
    return {m["name"]: frozenset(re.findall(r'"([a-z]+)"', m["cats"])) for m in ENTRY.finditer(text)}


def check_script_allowlist(policy: Policy, script_db: Path = SCRIPT_DB) -> None:
    """Refuse a policy whose allowlist names an unknown or unsafe-category script."""
    try:
        database = parse_script_db(script_db.read_text(encoding="utf-8"))
    except OSError as exc:
        if not policy.tools.nmap_scan.allowed_scripts:
            return
        raise PolicyError(
            f"cannot read nmap's script database {script_db} to check the NSE allowlist: {exc.strerror}",
            rule="policy_scripts_unverifiable",
        ) from exc
    for name in policy.tools.nmap_scan.allowed_scripts:
        categories = database.get(name)
        if categories is None:
            raise PolicyError(f"allowed script {name!r} is not in {script_db}", rule="policy_script_unknown")
        bad = categories & FORBIDDEN_SCRIPT_CATEGORIES
        if bad:
            raise PolicyError(
                f"allowed script {name!r} is in forbidden categories {sorted(bad)}", rule="policy_script_unsafe"
            )


# --- the private nmap data directory ------------------------------------------------------------
#
# `-sV` runs every script of the "version" category that script.db lists, whatever --script says.
# The image ships only the allowed scripts; a host install ships all of them. So when nmap's own
# script.db lists a script the policy does not allow, the appliance builds a data directory
# holding only the allowed scripts and their script.db, and passes it with --datadir. nmap
# 7.93 looks in --datadir first and falls back to its own directory for every file the private
# one lacks (nselib, nse_main.lua, nmap-service-probes ...), so only scripts/ is built. (NMAPDIR
# and ~/.nmap come before that fallback; the runner passes neither: no NMAPDIR, HOME=/nonexistent.)


@dataclass(frozen=True)
class NmapDatadir:
    """What nmap_scan passes as --datadir for one allowlist."""

    path: Path | None = None  # None: nmap's own directory holds only allowed scripts
    # Set when a private directory was needed and could not be built: -sV is then refused.
    problem: str | None = None


# Built directories by (script.db, allowlist), and the one the store last accepted per allowlist.
_BUILT: dict[tuple[Path, tuple[str, ...]], NmapDatadir] = {}
_ACCEPTED: dict[tuple[str, ...], NmapDatadir] = {}


def _key(allowed: list[str]) -> tuple[str, ...]:
    return tuple(sorted(set(allowed)))


def build_nmap_datadir(allowed: list[str], script_db: Path = SCRIPT_DB, base: Path | None = None) -> NmapDatadir:
    """Prepare the --datadir for this allowlist (at policy load), once per script.db and allowlist.

    The directory is a fresh private temporary directory. One that cannot be written (a
    read-only file system, a seccomp profile without mkdir) is reported in `problem`, not
    raised: connect scans and named scripts stay safe without it. Not covered: scripts named by
    path (the request model only takes allowlisted names).
    """
    key = _key(allowed)
    if (script_db, key) not in _BUILT:
        _BUILT[script_db, key] = _build(key, script_db, base)
    built = _ACCEPTED[key] = _BUILT[script_db, key]
    return built


def _build(key: tuple[str, ...], script_db: Path, base: Path | None) -> NmapDatadir:
    try:
        text = script_db.read_text(encoding="utf-8")
    except OSError as exc:
        # Fail closed: nmap may still find a script.db of its own elsewhere (a source build under
        # /usr/local) and -sV would run its version scripts unchecked.
        problem = f"nmap's script database {script_db} cannot be read ({exc.strerror}), so -sV cannot be limited"
        log.warning("version scans are refused: %s", problem)
        return NmapDatadir(problem=problem)
    if set(parse_script_db(text)) <= set(key):
        return NmapDatadir()  # the image: it ships the allowed scripts only
    try:
        root = Path(tempfile.mkdtemp(prefix="appliance-nmap-", dir=base))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        scripts = root / "scripts"
        scripts.mkdir()
        for name in key:
            shutil.copyfile(script_db.parent / f"{name}.nse", scripts / f"{name}.nse")
        entries = [m[0] for m in ENTRY.finditer(text) if m["name"] in key]
        (scripts / "script.db").write_text("".join(f"{entry}\n" for entry in entries), encoding="utf-8")
    except OSError as exc:
        problem = f"cannot build the private nmap data directory that limits NSE to the allowlist: {exc}"
        log.warning("version scans are refused: %s", problem, extra={"script_db": str(script_db)})
        return NmapDatadir(problem=problem)
    return NmapDatadir(path=root)


def nmap_datadir(allowed: list[str]) -> NmapDatadir:
    """The --datadir for this allowlist: the one built when the store accepted it, else built now."""
    key = _key(allowed)
    found = _ACCEPTED.get(key)
    if found is not None and (found.path is None or (found.path / "scripts" / "script.db").is_file()):
        return found
    # Never built, or its directory was removed under us (a /tmp cleaner): without it nmap would
    # fall back to its own directory and every version script. Build it again.
    for stale in [k for k in _BUILT if k[1] == key]:
        del _BUILT[stale]
    return build_nmap_datadir(allowed)
