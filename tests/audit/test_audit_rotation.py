"""Rotation by the sink: FILE -> FILE.1 ... FILE.N, the chain running across the files."""

from __future__ import annotations

import json
from pathlib import Path

from support.audit import KEY, chained_file, records

from appliance.audit import AuditSink
from appliance.audit.chain import Chainer
from appliance.audit.rotation import rotated
from appliance.audit.verify import verify

# A call line is about 90 bytes, a chain_continues line about 300: a few lines per file.
SMALL_FILE = 1000


def oldest_first(audit: Path, keep: int) -> list[Path]:
    return [p for p in (rotated(audit, n) for n in range(keep, 0, -1)) if p.exists()] + [audit]


def test_rotation_keeps_n_files_and_the_chain_runs_across_them(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    chained_file(audit, 40, max_bytes=SMALL_FILE, keep_files=3)
    files = oldest_first(audit, 3)
    assert [p.name for p in files] == ["audit.jsonl.3", "audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"]
    assert not rotated(audit, 4).exists()
    assert all(p.stat().st_size <= SMALL_FILE for p in files)
    for newer in files[1:]:
        link = records(newer)[0]
        assert link["event"] == "chain_continues"
    report = verify(files, Chainer(KEY))
    assert report.intact, report.as_json()
    assert report.head is not None and report.head.seq == records(audit)[-1]["seq"]


def test_the_link_line_names_the_head_of_the_file_before(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    chained_file(audit, 20, max_bytes=SMALL_FILE, keep_files=2)
    last_before = records(rotated(audit, 1))[-1]
    link = records(audit)[0]
    assert (link["previous_seq"], link["previous_chain"]) == (last_before["seq"], last_before["chain"])
    assert link["seq"] == last_before["seq"] + 1 and link["previous_file"] == "audit.jsonl.1"


def test_a_missing_middle_file_breaks_the_chain(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    chained_file(audit, 40, max_bytes=SMALL_FILE, keep_files=3)
    report = verify([rotated(audit, 3), rotated(audit, 1), audit], Chainer(KEY))
    assert report.problem is not None and report.problem.file.endswith("audit.jsonl.1")
    assert "a file is missing or the files are out of order" in report.problem.what


def test_a_failed_rotation_loses_no_line_and_is_reported(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    rotated(audit, 1).mkdir()  # rename(FILE, FILE.1) onto a directory fails (EISDIR)
    (rotated(audit, 1) / "occupied").touch()
    sink = chained_file(audit, 30, max_bytes=SMALL_FILE, keep_files=1)
    lines = records(audit)
    assert [line["seq"] for line in lines] == list(range(1, 32))  # every line, in the current file
    described = sink.describe()["rotation"]
    assert described["failures"] == 1  # retried only after ROTATION_RETRY_SECONDS
    assert "rotation of" in described["problem"] and "lines go on in it" in described["problem"]
    assert verify([audit], Chainer(KEY)).intact


def test_rotation_is_tried_again_after_the_retry_interval(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    blocker = rotated(audit, 1)
    blocker.mkdir()
    (blocker / "occupied").touch()
    now = [0.0]
    sink = AuditSink(audit, key=KEY, max_bytes=SMALL_FILE, keep_files=1, clock=lambda: now[0])
    for index in range(15):
        sink.write({"event": "call", "i": index})
    assert sink.rotation_problem is not None
    (blocker / "occupied").unlink()
    blocker.rmdir()
    now[0] = 61.0
    sink.write({"event": "call", "i": 15})
    sink.close()
    assert sink.rotation_problem is None
    assert records(audit)[0]["event"] == "chain_continues"
    assert verify([rotated(audit, 1), audit], Chainer(KEY)).intact


def test_a_restart_after_a_rotation_cut_short_links_to_the_file_before(tmp_path: Path) -> None:
    # A stop between the rename and the new file's first line leaves no current file.
    audit = tmp_path / "audit.jsonl"
    chained_file(audit, 3)
    audit.rename(rotated(audit, 1))
    chained_file(audit, 1)
    link = json.loads(audit.read_bytes().splitlines()[0])
    assert link["event"] == "chain_continues" and link["previous_seq"] == 4
    assert verify([rotated(audit, 1), audit], Chainer(KEY)).intact


def test_a_writer_follows_a_rotation_done_by_another(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    operator = AuditSink(audit, key=KEY)
    operator.write({"event": "jobs_purged"})
    server = AuditSink(audit, key=KEY, max_bytes=SMALL_FILE, keep_files=2)
    for index in range(12):
        server.write({"event": "call", "i": index})
    operator.write({"event": "jobs_purged"})  # its descriptor is the rotated file's
    server.close()
    operator.close()
    assert records(audit)[-1]["event"] == "jobs_purged"
    assert verify(oldest_first(audit, 2), Chainer(KEY)).intact


def test_an_oversized_file_whose_end_does_not_verify_rotates_into_a_new_chain(tmp_path: Path) -> None:
    # An audit file from before the chain, already past the size limit, at the first start.
    audit = tmp_path / "audit.jsonl"
    old_line = '{"time": "2026-01-01T00:00:00.000+00:00", "event": "appliance_start"}'
    audit.write_text((old_line + "\n") * 20)
    chained_file(audit, 1, max_bytes=SMALL_FILE, keep_files=2)
    assert rotated(audit, 1).read_text() == (old_line + "\n") * 20  # moved aside untouched
    start, call = records(audit)
    assert start["event"] == "chain_start" and "not a chain line" in start["reason"]
    assert call["seq"] == 2
    assert verify([audit], Chainer(KEY)).intact
