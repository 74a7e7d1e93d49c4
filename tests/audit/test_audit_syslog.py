"""Syslog forwarding: each line after the file has it, to a receiver the test starts; failures
are counted and never refuse a call."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.audit import KEY, records, udp_syslog, unix_syslog

from appliance.audit import AuditSink
from appliance.audit.syslog import SyslogForwarder, SyslogTarget
from appliance.config import Settings

# RFC 5424: <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG
HEADER = re.compile(rb"<86>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \S+ appliance \d+ audit - ")


def test_lines_reach_a_unix_socket_receiver_after_the_file(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with unix_syslog(tmp_path / "log.sock") as receiver:
        sink = AuditSink(audit, key=KEY, forward=SyslogForwarder(SyslogTarget.parse(receiver.target)))
        sink.write({"event": "call"})
        got = receiver.take(2)  # the chain_start line and the call
        sink.close()
    written = audit.read_bytes().splitlines()
    for datagram, line in zip(got, written, strict=True):
        header = HEADER.match(datagram)
        assert header is not None and datagram[header.end() :] == line


def test_lines_reach_a_udp_receiver_on_loopback(tmp_path: Path) -> None:
    with udp_syslog() as receiver:
        sink = AuditSink(tmp_path / "audit.jsonl", forward=SyslogForwarder(SyslogTarget.parse(receiver.target)))
        sink.write({"event": "call", "i": 1})
        got = receiver.take(2)
        sink.close()
    assert b'"event": "call", "i": 1' in got[1]
    assert sink.describe()["syslog"]["forwarded"] == 2


def test_a_missing_receiver_is_counted_and_the_call_still_audited(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    forward = SyslogForwarder(SyslogTarget.parse(f"unix:{tmp_path / 'no-daemon.sock'}"))
    sink = AuditSink(audit, forward=forward)
    sink.write({"event": "call"})
    sink.close()
    assert [line["event"] for line in records(audit)] == ["chain_start", "call"]
    status = sink.describe()["syslog"]
    assert status["failed"] == 2 and status["forwarded"] == 0
    assert status["last_error"] == "No such file or directory"
    assert sink.figures().syslog_failures == 2


@pytest.mark.parametrize(
    "target",
    [
        # unsafe
        "tcp://127.0.0.1:514",
        "udp://127.0.0.1",
        "udp://127.0.0.1:0",
        "unix:relative/path",
        "/dev/log",
    ],
)
def test_settings_refuse_a_syslog_target_of_another_form(target: str) -> None:
    with pytest.raises(ValueError, match=r"unix:/dev/log or udp://HOST:PORT|port must be"):
        Settings(audit_syslog=target)


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        # safe
        ("unix:/dev/log", "unix:/dev/log"),
        ("udp://127.0.0.1:514", "udp://127.0.0.1:514"),
        ("udp://[::1]:514", "udp://[::1]:514"),
        ("udp://syslog.lab.internal:5514", "udp://syslog.lab.internal:5514"),
    ],
)
def test_syslog_targets_of_both_forms_are_accepted(target: str, shown: str) -> None:
    assert str(SyslogTarget.parse(target)) == shown
