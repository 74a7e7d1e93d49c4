"""The NSE allowlist against nmap's script.db (a sample file; the host's nmap is not needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.errors import PolicyError
from appliance.policy.model import Policy
from appliance.policy.nse import check_script_allowlist, parse_script_db

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
