"""The chained sink: across restarts, beside another writer, from many threads, on stderr."""

from __future__ import annotations

import io
import json
import logging
import threading
from pathlib import Path

import pytest
from support.audit import KEY, OTHER_KEY, chained_file, records, rewrite_lines

from appliance.audit import AuditSink
from appliance.audit.chain import Chainer, line_digest
from appliance.audit.verify import verify

THREADS = 8
LINES_PER_THREAD = 50


def test_a_restart_continues_the_chain_from_the_last_line(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    chained_file(audit, 3)
    chained_file(audit, 2)
    lines = records(audit)
    assert [line["seq"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert [line["event"] for line in lines].count("chain_start") == 1
    assert verify([audit], Chainer(KEY)).intact


def test_a_restart_after_an_edited_last_line_starts_a_new_chain_and_says_why(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    chained_file(audit, 3)
    rewrite_lines(audit, lambda lines: [*lines[:-1], lines[-1].replace(b'"i": 2', b'"i": 7')])
    edited = audit.read_bytes().splitlines()[-1]
    chained_file(audit, 1)
    start = records(audit)[4]
    assert start["event"] == "chain_start" and start["seq"] == 1
    assert "(seq 4) does not verify" in start["reason"]
    assert start["previous_line_sha256"] == line_digest(edited)
    report = verify([audit], Chainer(KEY))
    assert not report.intact and report.problem is not None and report.problem.line == 4


def test_a_restart_under_another_key_starts_a_new_chain(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    chained_file(audit, 2)
    chained_file(audit, 1, key=OTHER_KEY)
    start = records(audit)[3]
    assert start["event"] == "chain_start" and "another key" in start["reason"]
    assert start["key_id"] == Chainer(OTHER_KEY).key_id


def test_a_restart_after_a_torn_last_line_ends_it_before_the_new_chain(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    chained_file(audit, 2)
    audit.write_bytes(audit.read_bytes() + b'{"seq": 4, "time": "2026-')
    chained_file(audit, 1)
    lines = audit.read_bytes().splitlines()
    assert lines[3] == b'{"seq": 4, "time": "2026-'
    start = json.loads(lines[4])
    assert start["event"] == "chain_start" and "incomplete" in start["reason"]
    assert json.loads(lines[5])["seq"] == 2


def test_a_file_of_lines_from_before_the_chain_gets_a_named_chain_start(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    audit.write_text('{"time": "2026-01-01T00:00:00.000+00:00", "event": "appliance_start"}\n')
    chained_file(audit, 1)
    start = records(audit)[1]
    assert start["event"] == "chain_start" and "not a chain line" in start["reason"]


def test_threads_writing_at_once_keep_seq_order(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    sink = AuditSink(audit, key=KEY)
    barrier = threading.Barrier(THREADS)

    def writer(number: int) -> None:
        barrier.wait()
        for index in range(LINES_PER_THREAD):
            sink.write({"event": "call", "thread": number, "i": index})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sink.close()
    lines = records(audit)
    assert [line["seq"] for line in lines] == list(range(1, THREADS * LINES_PER_THREAD + 2))
    assert len({line["chain"] for line in lines}) == len(lines)
    assert verify([audit], Chainer(KEY)).intact


def test_another_writer_on_the_same_file_joins_the_chain(tmp_path: Path) -> None:
    # The appliance and an `appliance jobs purge` both append to the one trail.
    audit = tmp_path / "audit.jsonl"
    server, operator = AuditSink(audit, key=KEY), AuditSink(audit, key=KEY)
    server.write({"event": "appliance_start"})
    operator.write({"event": "jobs_purged"})
    server.write({"event": "call"})
    operator.close()
    server.close()
    assert [(line["seq"], line["event"]) for line in records(audit)] == [
        (1, "chain_start"),
        (2, "appliance_start"),
        (3, "jobs_purged"),
        (4, "call"),
    ]
    assert verify([audit], Chainer(KEY)).intact


def test_the_stderr_sink_is_chained_within_the_process() -> None:
    stream = io.StringIO()
    sink = AuditSink(stream=stream)
    sink.write({"event": "a"})
    sink.write({"event": "b"})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["seq"], line["event"]) for line in lines] == [(1, "chain_start"), (2, "a"), (3, "b")]
    assert lines[0]["chain_mode"] == "sha256" and "within this process" in lines[0]["reason"]
    assert sink.head is not None and sink.head.chain == lines[-1]["chain"]


def test_a_checkpoint_logs_the_head_and_keeps_it_for_the_metrics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = chained_file(tmp_path / "audit.jsonl", 2)
    assert sink.figures().seq == 0  # nothing checkpointed yet
    with caplog.at_level(logging.INFO, logger="appliance.audit.sink"):
        head = sink.checkpoint("start")
    assert head is not None and head.seq == 3
    logged = next(r for r in caplog.records if r.getMessage() == "audit chain head")
    assert (logged.seq, logged.chain, logged.reason) == (3, head.chain, "start")  # type: ignore[attr-defined]
    figures = sink.figures()
    assert (figures.seq, figures.chain, figures.mode) == (3, head.chain, "hmac-sha256")


def test_health_says_when_the_chain_has_no_key(tmp_path: Path) -> None:
    assert AuditSink(tmp_path / "a.jsonl").describe()["chain"].startswith("sha256 (no key: not tamper-evident")
    assert AuditSink(tmp_path / "b.jsonl", key=KEY).describe()["chain"] == "hmac-sha256"
