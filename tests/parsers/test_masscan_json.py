"""MasscanStream, parse_masscan_json and masscan_progress against real masscan 1.3.2 output (fixtures/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.parsers.lines import output_lines
from appliance.parsers.masscan_json import MasscanStream, masscan_progress, parse_masscan_json
from appliance.runner import MAX_LINE_BYTES

FIXTURES = Path(__file__).parent.parent / "fixtures" / "masscan"

# Handwritten, not captured: the shape older masscan releases (1.0.x) write, with a comma after
# each record and an unquoted `{finished: 1}` line. 1.3.2 puts commas on their own lines.
LEGACY_OUTPUT = (
    b"[\n"
    b'{   "ip": "10.250.0.1",   "timestamp": "1700000000", "ports": '
    b'[ {"port": 8080, "proto": "tcp", "status": "open", "reason": "syn-ack", "ttl": 64} ] },\n'
    b'{   "ip": "10.250.0.1",   "timestamp": "1700000001", "ports": '
    b'[ {"port": 2222, "proto": "tcp", "status": "open", "reason": "syn-ack", "ttl": 64} ] },\n'
    b"{finished: 1}\n"
    b"]\n"
)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_scan_reports_the_two_open_ports() -> None:
    findings = parse_masscan_json(fixture("scan.json"))

    # masscan reports in the order replies arrive, which changes between runs.
    assert sorted((f.ip, f.port, f.protocol, f.status, f.reason, f.ttl) for f in findings) == [
        ("10.250.0.1", 2222, "tcp", "open", "syn-ack", 64),
        ("10.250.0.1", 8080, "tcp", "open", "syn-ack", 64),
    ]


def test_show_closed_reports_rst_as_closed() -> None:
    findings = parse_masscan_json(fixture("show_closed.json"))

    by_port = {f.port: (f.status, f.reason) for f in findings}
    assert by_port == {
        2222: ("open", "syn-ack"),
        8080: ("open", "syn-ack"),
        **{port: ("closed", "rst-ack") for port in range(9990, 10000)},
    }


def test_legacy_trailing_commas_and_finished_line_are_tolerated() -> None:
    findings = parse_masscan_json(LEGACY_OUTPUT)

    assert [(f.ip, f.port) for f in findings] == [("10.250.0.1", 8080), ("10.250.0.1", 2222)]


def test_output_cut_by_a_kill_keeps_whole_records() -> None:
    data = fixture("show_closed.json")
    cut = data[: data.index(b"\n,\n", data.index(b"\n,\n") + 1) + 40]

    assert len(parse_masscan_json(cut)) == 2


def test_every_cut_yields_a_growing_list() -> None:
    data = fixture("show_closed.json")
    counts = [len(parse_masscan_json(data[:cut])) for cut in range(len(data) + 1)]

    assert counts == sorted(counts)
    assert counts[-1] == 12


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"[\n]\n", id="no-records"),
        pytest.param(b"{finished: 1}\n", id="finished-only"),
        pytest.param(b"not json at all\n", id="text"),
        pytest.param(b"\x00\xff\xfe{" * 100, id="binary"),
        pytest.param(b"{" + b"[" * 100_000 + b"\n", id="deep-nesting"),
        pytest.param(b'{"ip": "10.250.0.1", "ports": "80"}\n', id="ports-not-a-list"),
        pytest.param(b'{"ip": "not-an-ip", "ports": [{"port": 80, "status": "open"}]}\n', id="bad-ip"),
        pytest.param(b'{"ip": "10.250.0.1", "ports": [{"port": 70000, "status": "open"}]}\n', id="bad-port"),
        pytest.param(b'{"ip": "10.250.0.1", "ports": [{"port": true, "status": "open"}]}\n', id="bool-port"),
        pytest.param(
            b'{"ip": "10.250.0.1", "ports": [{"port": 80, "proto": "tcp", "service": {"name": "http"}}]}\n',
            id="banner-record",
        ),
    ],
)
def test_garbage_yields_no_findings(data: bytes) -> None:
    assert parse_masscan_json(data) == []


def test_missing_optional_fields_become_none() -> None:
    [finding] = parse_masscan_json(b'{"ip": "10.250.0.1", "ports": [{"port": 80, "status": "open", "ttl": true}]}')

    assert (finding.protocol, finding.reason, finding.ttl) == ("tcp", None, None)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    assert isinstance(parse_masscan_json(data), list)


# the stream: fed line by line, as the runner's line callback hands masscan's stdout over


def test_each_record_line_completes_a_finding_as_it_arrives() -> None:
    lines = list(output_lines(fixture("scan.json")))
    stream = MasscanStream()

    completed = [stream.feed(line) for line in lines]

    assert completed == [False, True, False, True, False]  # `[`, a record, `,`, a record, `]`
    assert stream.fields()["findings"] == parse_masscan_json(fixture("scan.json"))


def test_findings_so_far_grow_with_each_record() -> None:
    lines = list(output_lines(LEGACY_OUTPUT))
    stream = MasscanStream()
    seen = []
    for line in lines:
        stream.feed(line)
        seen.append([f.port for f in stream.fields()["findings"]])

    assert seen == [[], [8080], [8080, 2222], [8080, 2222], [8080, 2222]]


def test_a_piece_of_an_over_long_line_is_not_read_as_a_record() -> None:
    record = b'{"ip": "10.250.0.9", "ports": [{"port": 31337, "proto": "tcp", "status": "open"}]}'
    # The first piece alone is a record padded with spaces; the whole line is not JSON.
    flood = record + b" " * (MAX_LINE_BYTES - len(record)) + b"not json"
    after = b'{"ip": "10.250.0.1", "ports": [{"port": 22, "proto": "tcp", "status": "open"}]}'
    stream = MasscanStream()

    completed = [stream.feed(line) for line in output_lines(flood + b"\n" + after + b"\n")]

    assert completed == [False, False, True]
    assert [f.port for f in stream.fields()["findings"]] == [22]


# progress


def test_progress_from_real_status_chunk_is_the_last_update() -> None:
    lines = fixture("scan.stderr").split(b"\n")
    status = [line for line in lines if b"% done" in line]

    # masscan redraws with \r only, so the whole run arrives as one \n-terminated chunk.
    assert len(status) == 1
    assert masscan_progress(status[0]) == 100.0


def test_progress_of_each_real_update_rises() -> None:
    [status] = [line for line in fixture("scan.stderr").split(b"\n") if b"% done" in line]
    percents = [p for p in map(masscan_progress, status.split(b"\r")) if p is not None]

    assert percents[0] == pytest.approx(100 / 302, abs=0.01)
    assert percents == sorted(percents)
    assert percents[-1] == 100.0


def test_progress_takes_the_last_of_several_updates() -> None:
    chunk = (
        b"rate:  0.10-kpps, 15.23% done,   0:00:34 remaining, found=0       \r"
        b"rate:  0.10-kpps, 27.15% done,   0:00:16 remaining, found=1       \r"
    )

    assert masscan_progress(chunk) == 27.15


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"Starting masscan 1.3.2 (http://bit.ly/14GZzcT) at 2026-11-25 17:16:51 GMT",
        b"Scanning 1 hosts [302 ports/host]",
        b"rate:  0.10-kpps, 250.00% done, found=0",
        b"                                                                             \r",
    ],
)
def test_progress_is_none_for_other_lines(line: bytes) -> None:
    assert masscan_progress(line) is None
