"""The privilege self-check: kernel status parsing and the per-mode capability policy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import run_cli as run
from support import write_policy

from appliance.config import DEFAULT_CAPABILITY_POLICY_PATH
from appliance.privileges import (
    Privileges,
    capability_names,
    excess_privileges,
    load_capability_policy,
    missing_privileges,
    parse_status,
    root_is_read_only,
)

POLICY = load_capability_policy(DEFAULT_CAPABILITY_POLICY_PATH)
NET_RAW = 1 << 13


def held(**changes: object) -> Privileges:
    base: dict[str, object] = {
        "uid": 65532,
        "gid": 65532,
        "cap_effective": 0,
        "cap_permitted": 0,
        "cap_bounding": 0,
        "cap_ambient": 0,
        "no_new_privs": True,
        "seccomp_mode": 2,
        "root_read_only": True,
    }
    base.update(changes)
    return Privileges(**base)  # type: ignore[arg-type]


def test_status_fields_parse() -> None:
    status = parse_status("Name:\tpython3\nCapEff:\t0000000000002000\nNoNewPrivs:\t1\nSeccomp:\t2\n")
    assert int(status["CapEff"], 16) == NET_RAW
    assert capability_names(NET_RAW) == ["NET_RAW"]


def test_last_root_mount_decides_read_only() -> None:
    assert root_is_read_only("overlay / overlay ro,relatime 0 0\n")
    assert not root_is_read_only("overlay / overlay ro 0 0\noverlay / overlay rw 0 0\n")


@pytest.mark.parametrize(
    ("mode", "privileges", "problem"),
    [
        # safe
        ("connect", held(), None),
        ("raw", held(cap_effective=NET_RAW, cap_permitted=NET_RAW, cap_bounding=NET_RAW, cap_ambient=NET_RAW), None),
        # unsafe
        ("connect", held(cap_effective=NET_RAW), "cap_effective holds ['NET_RAW']"),
        ("raw", held(cap_bounding=NET_RAW | (1 << 12)), "cap_bounding holds ['NET_ADMIN']"),
        ("connect", held(cap_bounding=(1 << 41) - 1), "SYS_ADMIN"),  # --privileged
        ("connect", held(uid=0), "runs as uid 0"),
        ("connect", held(no_new_privs=False), "no-new-privileges is off"),
        ("connect", held(seccomp_mode=0), "seccomp mode is 0"),
        ("connect", held(root_read_only=False), "root filesystem is writable"),
    ],
)
def test_excess_privileges(mode: str, privileges: Privileges, problem: str | None) -> None:
    problems = excess_privileges(privileges, POLICY.modes[mode])  # type: ignore[index]
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def test_raw_mode_without_net_raw_is_reported_missing() -> None:
    assert missing_privileges(held(), POLICY.modes["raw"]) == ["effective set lacks ['NET_RAW']"]


@pytest.mark.skipif(os.getuid() == 65532, reason="the check needs a uid other than the policy's")
def test_enforced_self_check_refuses_to_start(tmp_path: Path) -> None:
    policy = write_policy(tmp_path)
    code, _, err = run(
        "serve", APPLIANCE_POLICY_PATH=str(policy), APPLIANCE_ENFORCE_PRIVILEGES="true", APPLIANCE_HEALTH_PORT="0"
    )
    assert code == 3
    assert "privileges_exceed_policy" in err
    assert "uid" in err
