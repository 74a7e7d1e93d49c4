"""The request-state key ring a fleet's fronts share: read from a file, refused when weak."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from mcp.server.request_state import RequestStateSecurity

from appliance.approval.keys import load_keys, request_state_security
from appliance.errors import ConfigError

STRONG = secrets.token_urlsafe(32)  # 43 characters
OTHER = secrets.token_urlsafe(32)


def test_no_file_set_means_the_sdks_own_per_process_key() -> None:
    assert load_keys(None) is None
    assert request_state_security(None) is None


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        # safe
        (f"{STRONG}\n", [STRONG]),
        (f"\n  {STRONG}  \n\n{OTHER}\n", [STRONG, OTHER]),  # rotation: the first seals, both open
    ],
)
def test_keys_are_read_one_a_line(tmp_path: Path, text: str, keys: list[str]) -> None:
    path = tmp_path / "key"
    path.write_text(text)
    assert load_keys(path) == [key.encode() for key in keys]


def test_a_state_sealed_under_the_first_key_opens_with_a_ring_that_still_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(f"{STRONG}\n")
    old = request_state_security(load_keys(path))
    path.write_text(f"{OTHER}\n{STRONG}\n")
    rotated = request_state_security(load_keys(path))
    assert isinstance(old, RequestStateSecurity) and isinstance(rotated, RequestStateSecurity)
    assert rotated.codec.unseal(old.codec.seal(b"state")) == b"state"


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        # unsafe
        ("", "request_state_key_weak"),
        ("\n\n", "request_state_key_weak"),
        ("short-key\n", "request_state_key_weak"),
        (f"{STRONG}\n{STRONG[:31]}\n", "request_state_key_weak"),
        (f"{STRONG}\n{STRONG}\n", "request_state_key_weak"),
    ],
)
def test_a_weak_key_file_refuses_start_without_showing_a_key(tmp_path: Path, text: str, rule: str) -> None:
    path = tmp_path / "key"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_keys(path)
    assert refused.value.rule == rule
    assert STRONG not in refused.value.message and STRONG[:31] not in refused.value.message


def test_a_key_file_that_cannot_be_read_refuses_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load_keys(tmp_path / "missing")
    assert refused.value.rule == "request_state_key_unreadable"
