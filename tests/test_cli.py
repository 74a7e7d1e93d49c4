"""The `appliance` command line, run as a real process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support import REPO, write_policy
from support import run_cli as run

from appliance.config import DEFAULT_POLICY_PATH


def test_check_allowed_prints_verdict_and_argv(tmp_path: Path) -> None:
    policy = write_policy(tmp_path)
    code, body, _ = run(
        "check",
        "nmap_scan",
        "--args-json",
        '{"target": "10.20.0.5", "ports": "22,80"}',
        APPLIANCE_POLICY_PATH=str(policy),
    )
    assert code == 0
    assert body["verdict"] == "allowed" and body["rule"] is None
    assert body["argv"][0].endswith("nmap") and body["argv"][-1] == "10.20.0.5"
    assert "-n" in body["argv"]


@pytest.mark.parametrize(
    ("tool", "arguments", "rule"),
    [
        # unsafe
        ("nmap_scan", {"target": "169.254.169.254"}, "target_denied_link_local"),
        ("nmap_scan", {"target": "10.0.0.0/8"}, "target_cidr_too_large"),
        ("nmap_scan", {"target": "10.0.0.1", "extra_args": ["-iL", "/etc/passwd"]}, "flag_file_io"),
        ("nmap_scan", {"target": "10.0.0.1", "bogus": 1}, "argument_unknown"),
        ("masscan_scan", {"target": "10.0.0.1", "ports": "80"}, "tool_unavailable_in_connect_mode"),
        ("gobuster_scan", {"target": "http://x@10.0.0.1/"}, "url_userinfo"),
        ("gobuster_scan", {"mode": "dns", "target": "lab.internal"}, "dns_mode_requires_resolver"),
    ],
)
def test_check_refused_names_rule_and_exits_1(tmp_path: Path, tool: str, arguments: dict[str, Any], rule: str) -> None:
    policy = write_policy(tmp_path)
    code, body, _ = run("check", tool, "--args-json", json.dumps(arguments), APPLIANCE_POLICY_PATH=str(policy))
    assert code == 1
    assert body["verdict"] == "refused"
    assert body["rule"] == rule
    assert body["recovery_suggestion"]


def test_check_unknown_tool_is_a_usage_error() -> None:
    code, _, err = run("check", "rm_rf", "--args-json", "{}")
    assert code == 2
    assert "unknown tool" in err


def test_policy_validate_accepts_the_shipped_policy() -> None:
    code, body, _ = run("policy", "validate", str(DEFAULT_POLICY_PATH))
    assert code == 0
    assert body["valid"] is True
    assert "0.0.0.0/8 (target_denied_unspecified)" in body["denied_ranges"]
    assert body["concurrency"]["global"] == {"running": 4, "sessions": 256}
    assert "file_version" not in body  # a version 2 file needs no conversion
    assert body["engagements"] is None


def test_policy_validate_lists_the_engagements_of_a_version_3_file() -> None:
    code, body, _ = run("policy", "validate", str(REPO / "policies" / "engagements.example.yaml"))

    assert code == 0
    assert body["version"] == 3
    assert [(e["name"], e["timezone"], e["tools"]) for e in body["engagements"]] == [
        ("red-team-q4", "Europe/Berlin", ["masscan_scan", "nmap_scan"]),
        ("webapp-audit", "America/New_York", ["gobuster_scan", "nmap_scan"]),
    ]


def test_policy_validate_shows_a_version_1_file_in_the_version_2_layout(tmp_path: Path) -> None:
    old = tmp_path / "v1.yaml"
    old.write_text(
        "version: 1\ntools:\n  nmap_scan: {max_concurrent: 3}\nlimits:\n  per_principal: {max_sessions: 5}\n"
    )
    code, body, err = run("policy", "validate", str(old))
    assert code == 0
    assert (body["version"], body["file_version"]) == (2, 1)
    assert body["moved_keys"] == {
        "tools.nmap_scan.max_concurrent": "limits.concurrency.per_tool.nmap_scan.running",
        "limits.per_principal.max_sessions": "limits.concurrency.per_principal.sessions",
    }
    assert body["concurrency"]["per_tool"]["nmap_scan"] == {"running": 3, "queued": 4}
    assert body["concurrency"]["per_principal"]["sessions"] == 5
    converted = body["converted_policy"]
    assert converted["version"] == 2 and "max_concurrent" not in converted["tools"]["nmap_scan"]
    assert converted["limits"]["concurrency"]["global"] == {"running": 4, "sessions": 256}
    assert err.count("version 1 layout") == 1


def test_policy_validate_names_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 2\nscope:\n  allow_networks: [10.0.0.1/8]\n  alow_typo: true\n")
    code, body, _ = run("policy", "validate", str(bad))
    assert code == 1
    assert body["valid"] is False
    assert body["rule"] == "policy_invalid"
    assert "allow_networks" in body["message"] and "alow_typo" in body["message"]


def test_version_reports_pinned_scanners() -> None:
    code, body, _ = run("version")
    assert code == 0
    assert body["nmap"].startswith("Nmap version 7.93")
    assert "1.3.2" in body["masscan"]
    assert "3.5" in body["gobuster"]


def test_config_show_redacts_the_token() -> None:
    code, body, _ = run("config", "show", APPLIANCE_AUTH_TOKEN="s3cret-value")
    assert code == 0
    assert body["auth_token"] == "**redacted**"
    assert "s3cret-value" not in json.dumps(body)


def test_invalid_setting_is_refused_with_its_name() -> None:
    code, _, err = run("config", "show", APPLIANCE_PORT="not-a-port")
    assert code == 2
    assert "APPLIANCE_PORT" in err


def test_demo_scans_through_a_running_appliance(tmp_path: Path) -> None:
    from support import LOOPBACK_POLICY, tcp_listener
    from test_transports import TOKEN, http_server

    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with http_server(policy, APPLIANCE_AUTH_TOKEN=TOKEN) as url, tcp_listener(b"SSH-2.0-OpenSSH_9.2\r\n") as port:
        code, output, err = run(
            "demo", "--url", url, "--token-file", str(token_file), "--target", "127.0.0.1", "--ports", str(port)
        )
    assert code == 0, err
    assert f"127.0.0.1:{port}/tcp open" in output
    assert "target_denied_link_local" in output
