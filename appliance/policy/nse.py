"""Check a policy's NSE allowlist against nmap's own script database (script.db).

A script qualifies when script.db lists it and none of its categories talks to third parties,
floods the segment or attacks the target. Not covered: what a script does beyond its declared
categories (that is nmap's own review).
"""

from __future__ import annotations

import re
from pathlib import Path

from appliance.errors import PolicyError
from appliance.policy.model import FORBIDDEN_SCRIPT_CATEGORIES, Policy

SCRIPT_DB = Path("/usr/share/nmap/scripts/script.db")
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
