"""The chain's canonical form and key: what the README promises an external verifier."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path

import pytest
from support.audit import KEY, chained_file

from appliance.audit.chain import GENESIS, Chainer, NotChained, load_key, unseal
from appliance.errors import ConfigError

DEFAULT = Path("/run/secrets/appliance_audit_key")


def readme_verifier(path: Path, key: bytes | None) -> int:
    """The verifier the README's "Audit trail" section describes, written from it alone (bytes,
    a regex, hashlib): the appliance's own code is not used. Returns the lines it checked."""
    previous = GENESIS
    suffix = re.compile(rb', "chain": "([0-9a-f]{64})"\}$')
    lines = path.read_bytes().split(b"\n")
    assert lines.pop() == b""
    for line in lines:
        found = suffix.search(line)
        assert found is not None
        canonical = line[: found.start()] + b"}"
        data = previous.encode() + canonical
        value = hmac.new(key, data, "sha256").hexdigest() if key else hashlib.sha256(data).hexdigest()
        assert value == found.group(1).decode()
        previous = value
    return len(lines)


@pytest.mark.parametrize("key", [KEY, None], ids=["hmac", "sha256"])
def test_a_verifier_written_from_the_readme_accepts_the_lines(tmp_path: Path, key: bytes | None) -> None:
    audit = tmp_path / "audit.jsonl"
    chained_file(audit, 5, key=key)
    assert readme_verifier(audit, key) == 6  # the chain_start line and five calls


def test_a_line_is_ascii_json_with_seq_first_and_chain_last(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    chained_file(audit, 1)
    first, call = audit.read_bytes().splitlines()
    assert first.startswith(b'{"seq": 1, "time": "')
    record = json.loads(call)
    assert list(record)[:2] == ["seq", "time"] and list(record)[-1] == "chain"
    assert record["seq"] == 2 and record["event"] == "call"
    assert call.endswith(b', "chain": "' + record["chain"].encode() + b'"}') and call.isascii()


def test_the_first_line_starts_the_chain_and_names_mode_and_key(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    chained_file(audit, 1)
    start = json.loads(audit.read_bytes().splitlines()[0])
    assert start["event"] == "chain_start" and start["seq"] == 1
    assert start["chain_mode"] == "hmac-sha256"
    assert start["key_id"] == Chainer(KEY).key_id and KEY.hex()[:16] not in start["key_id"]
    assert start["reason"] == "audit.jsonl is a new audit file"
    assert start["previous_line_sha256"] is None


@pytest.mark.parametrize(
    "line",
    [
        # unsafe
        b'{"seq": 1, "event": "x"}',
        b'{"seq": 1, "event": "x", "chain": "' + b"g" * 64 + b'"}',
        b'{"seq": "1", "chain": "' + b"0" * 64 + b'"}',
        b'{"seq": 0, "chain": "' + b"0" * 64 + b'"}',
        b'["seq", 1, "chain": "' + b"0" * 64 + b'"}',
    ],
    ids=["no_chain", "chain_not_hex", "seq_a_string", "seq_zero", "not_an_object"],
)
def test_unseal_rejects_lines_that_are_not_chain_lines(line: bytes) -> None:
    with pytest.raises(NotChained):
        unseal(line)


def test_the_default_key_path_may_be_absent(tmp_path: Path) -> None:
    assert load_key(tmp_path / "absent", default=tmp_path / "absent") is None


def test_a_key_file_set_on_purpose_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load_key(tmp_path / "absent", default=DEFAULT)
    assert refused.value.rule == "audit_key_unreadable"


def test_a_short_key_refuses_start(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(b"short\n")
    with pytest.raises(ConfigError) as refused:
        load_key(key, default=DEFAULT)
    assert refused.value.rule == "audit_key_weak"


def test_the_key_is_the_file_without_its_newline(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(KEY + b"\n")
    assert load_key(key, default=DEFAULT) == KEY
