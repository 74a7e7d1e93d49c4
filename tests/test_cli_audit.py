"""`appliance audit verify`, run as a real process on trails the tests write and then damage."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from support import run_cli
from support.audit import KEY, OTHER_KEY, chained_file, records, rewrite_lines

from appliance.audit import AuditSink
from appliance.audit.rotation import rotated

SMALL_FILE = 1000


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "audit_key"
    path.write_bytes(KEY + b"\n")
    return path


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    """Ten call lines after the chain_start line: seq 1..11."""
    audit = tmp_path / "audit.jsonl"
    chained_file(audit, 10)
    return audit


def verify(*args: str | Path) -> tuple[int, dict[str, object], str]:
    code, body, stderr = run_cli("audit", "verify", *(str(a) for a in args))
    return code, body, stderr


def head_of(path: Path) -> str:
    last = records(path)[-1]
    return f"{last['seq']}:{last['chain']}"


def test_an_intact_trail_exits_0_and_prints_its_head(trail: Path, key_file: Path) -> None:
    code, body, _ = verify(trail, "--key-file", key_file)
    assert code == 0, body
    assert body["intact"] is True and body["lines_verified"] == 11
    assert body["head"] == head_of(trail) and body["chain_mode"] == ["hmac-sha256"]


def test_an_edited_line_is_named(trail: Path, key_file: Path) -> None:
    rewrite_lines(trail, lambda lines: [*lines[:5], lines[5].replace(b'"i": 4', b'"i": 9'), *lines[6:]])
    code, body, _ = verify(trail, "--key-file", key_file)
    assert code == 1
    assert (body["line"], body["seq"]) == (6, 6)
    assert "the line was edited" in str(body["problem"])
    assert body["head"] == f"5:{records(trail)[4]['chain']}"  # the last line that verified


def test_an_edited_line_with_a_recomputed_chain_is_caught_by_the_key(trail: Path, key_file: Path) -> None:
    # Without the key an intruder can only recompute a plain SHA-256 chain, which the key rejects.
    unkeyed = trail.with_name("unkeyed.jsonl")
    chained_file(unkeyed, 10, key=None)
    code, body, _ = verify(unkeyed, "--key-file", key_file)
    assert code == 1 and body["line"] == 1
    assert "unkeyed (sha256) chain opens here although a key was given" in str(body["problem"])


def test_a_deleted_line_is_named(trail: Path, key_file: Path) -> None:
    rewrite_lines(trail, lambda lines: lines[:4] + lines[5:])
    code, body, _ = verify(trail, "--key-file", key_file)
    assert code == 1
    assert (body["line"], body["seq"]) == (5, 6)
    assert "seq 6 where 5 was expected: lines 5..5 removed" in str(body["problem"])


def test_swapped_lines_are_named_as_reordered(trail: Path, key_file: Path) -> None:
    rewrite_lines(trail, lambda lines: [*lines[:3], lines[4], lines[3], *lines[5:]])
    code, body, _ = verify(trail, "--key-file", key_file)
    assert code == 1
    assert body["line"] == 4
    assert "seq 5 where 4 was expected; it is at line 5: lines reordered" in str(body["problem"])


def test_a_truncated_tail_is_caught_with_the_expected_head(trail: Path, key_file: Path) -> None:
    head = head_of(trail)
    rewrite_lines(trail, lambda lines: lines[:-2])
    code, body, _ = verify(trail, "--key-file", key_file)
    assert code == 0  # what is left is a valid chain: only a head kept elsewhere shows the cut
    code, body, _ = verify(trail, "--key-file", key_file, "--expect-head", head)
    assert code == 1
    assert "truncated: the chain ends at seq 9, the expected head is seq 11" in str(body["problem"])


def test_an_expected_head_of_another_chain_is_refused(trail: Path, key_file: Path) -> None:
    code, body, _ = verify(trail, "--key-file", key_file, "--expect-head", f"5:{'0' * 64}")
    assert code == 1 and "no line with seq 5 has the expected chain value" in str(body["problem"])
    code, body, _ = verify(trail, "--key-file", key_file, "--expect-head", f"5:{records(trail)[4]['chain']}")
    assert code == 0  # an older head of this chain: the chain grew since


def test_a_cut_last_line_is_named(trail: Path, key_file: Path) -> None:
    trail.write_bytes(trail.read_bytes()[:-30])
    code, body, _ = verify(trail, "--key-file", key_file)
    assert code == 1 and body["line"] == 11
    assert "not a chain line" in str(body["problem"])


def test_a_key_mismatch_is_named(trail: Path, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    other.write_bytes(OTHER_KEY)
    code, body, _ = verify(trail, "--key-file", other)
    assert code == 1 and body["line"] == 1
    assert "key mismatch: this chain was written with key id" in str(body["problem"])


def test_a_keyed_chain_without_a_key_is_a_usage_error(trail: Path) -> None:
    code, _, stderr = verify(trail)
    assert code == 2
    assert "give --key-file" in json.loads(stderr)["message"]


def test_rotated_files_verify_as_one_chain_oldest_first(tmp_path: Path, key_file: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    chained_file(audit, 30, max_bytes=SMALL_FILE, keep_files=2)
    code, body, _ = verify(rotated(audit, 2), rotated(audit, 1), audit, "--key-file", key_file)
    assert code == 0, body
    assert body["head"] == head_of(audit)
    assert body["continues_from"] is not None  # the oldest kept file continues one rotated away
    code, body, _ = verify(rotated(audit, 1), rotated(audit, 2), audit, "--key-file", key_file)
    assert code == 1 and "out of order" in str(body["problem"])


def test_a_chain_runs_across_restarts(trail: Path, key_file: Path) -> None:
    chained_file(trail, 3)
    code, body, _ = verify(trail, "--key-file", key_file)
    assert code == 0 and body["lines_verified"] == 14 and body["restarts"] == []


def restarted_after_a_lost_newline(audit: Path) -> None:
    """seq 1..3, the last newline lost (an incomplete line to the next start), then a new chain."""
    chained_file(audit, 2, key=None)
    audit.write_bytes(audit.read_bytes()[:-1])
    chained_file(audit, 1, key=None)


def test_a_restart_that_started_a_new_chain_is_listed(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    restarted_after_a_lost_newline(audit)
    code, body, _ = verify(audit)
    assert code == 0, body
    assert body["restarts"] == [{"file": str(audit), "line": 4, "reason": records(audit)[3]["reason"]}]
    assert "incomplete" in str(records(audit)[3]["reason"])


def test_lines_removed_before_a_restart_are_caught(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    restarted_after_a_lost_newline(audit)
    rewrite_lines(audit, lambda lines: [*lines[:2], *lines[3:]])  # seq 3, just before the restart
    code, body, _ = verify(audit)
    assert code == 1 and body["line"] == 3
    assert "names another line before it than the one there: lines before it were removed" in str(body["problem"])


def test_an_absent_key_file_given_on_purpose_is_refused(trail: Path, tmp_path: Path) -> None:
    code, _, stderr = verify(trail, "--key-file", tmp_path / "absent")
    assert code == 2 and json.loads(stderr)["rule"] == "audit_key_unreadable"


def test_a_malformed_expected_head_is_a_usage_error(trail: Path, key_file: Path) -> None:
    code, _, stderr = verify(trail, "--key-file", key_file, "--expect-head", "11")
    assert code == 2 and "write SEQ:HASH" in stderr


def test_serve_refuses_to_start_when_the_key_file_set_is_missing(tmp_path: Path) -> None:
    code, _, stderr = run_cli(
        "serve", APPLIANCE_AUDIT_KEY_FILE=str(tmp_path / "absent"), APPLIANCE_AUDIT_PATH=str(tmp_path / "a.jsonl")
    )
    assert code == 2
    assert json.loads(stderr.splitlines()[-1])["rule"] == "audit_key_unreadable"
    assert not (tmp_path / "a.jsonl").exists()  # refused before anything ran


def test_audit_lines_of_several_stderr_sinks_verify_one_process_chain_after_another(tmp_path: Path) -> None:
    # `docker logs` of a container restarted once: each process chained its own stderr lines.
    first, second = io.StringIO(), io.StringIO()
    for stream in (first, second):
        sink = AuditSink(stream=stream, key=KEY)
        sink.write({"event": "appliance_start"})
        sink.write({"event": "appliance_stop"})
    log = tmp_path / "container.log"
    log.write_text(first.getvalue() + second.getvalue())
    key = tmp_path / "key"
    key.write_bytes(KEY)
    code, body, _ = verify(log, "--key-file", key)
    assert code == 0, body
    assert [restart["line"] for restart in body["restarts"]] == [4]
