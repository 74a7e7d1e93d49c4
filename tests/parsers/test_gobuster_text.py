"""GobusterStream and parse_gobuster against real gobuster 3.5 output (see tests/fixtures/README.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.parsers.gobuster_text import GobusterStream, parse_gobuster
from appliance.parsers.lines import output_lines
from appliance.runner import MAX_LINE_BYTES

FIXTURES = Path(__file__).parent.parent / "fixtures" / "gobuster"

DIR_FINDINGS = [
    ("/admin", 301, 0),
    ("/images", 301, 0),
    ("/robots.txt", 200, 14),
    ("/backup.zip", 200, 2),
    ("/notes.txt", 200, 6),
    ("/index.html", 200, 3),
]


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_dir_reports_paths_with_status_and_size() -> None:
    findings = parse_gobuster(fixture("dir.txt"), "dir")

    assert [(f.value, f.status, f.size) for f in findings] == DIR_FINDINGS
    assert {f.kind for f in findings} == {"path"}


def test_dir_skips_banner_and_footer() -> None:
    findings = parse_gobuster(fixture("dir_banner.txt"), "dir")

    assert [(f.value, f.status, f.size) for f in findings] == DIR_FINDINGS


def test_dir_strips_terminal_colours() -> None:
    findings = parse_gobuster(fixture("dir_tty.txt"), "dir")

    assert [(f.value, f.status, f.size) for f in findings] == DIR_FINDINGS


def test_vhost_reports_hosts_that_differ_from_the_default_site() -> None:
    findings = parse_gobuster(fixture("vhost.txt"), "vhost")

    assert [(f.kind, f.value, f.status, f.size) for f in findings] == [
        ("vhost", "admin.lab.internal", 200, 14),
        ("vhost", "dev.lab.internal", 403, 25),
    ]


def test_dns_reports_names() -> None:
    findings = parse_gobuster(fixture("dns.txt"), "dns")

    assert [(f.kind, f.value, f.addresses) for f in findings] == [
        ("subdomain", "www.lab.internal", []),
        ("subdomain", "mail.lab.internal", []),
        ("subdomain", "vpn.lab.internal", []),
    ]


def test_dns_show_ips_reports_addresses() -> None:
    findings = parse_gobuster(fixture("dns_ips.txt"), "dns")

    assert {f.value: f.addresses for f in findings} == {
        "www.lab.internal": ["10.250.9.10"],
        "mail.lab.internal": ["10.250.9.20", "10.250.9.21"],
        "vpn.lab.internal": ["10.250.9.30"],
    }
    assert {(f.status, f.size) for f in findings} == {(None, None)}


# Handwritten variants of the same lines, for flags the fixtures do not use.
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param(
            b"http://127.0.0.1:18080/admin  (Status: 301) [Size: 0] [--> /admin/]",
            ("http://127.0.0.1:18080/admin", 301, 0),
            id="expanded-e",
        ),
        pytest.param(b"/admin                [Size: 0] [--> /admin/]", ("/admin", None, 0), id="no-status-n"),
        pytest.param(b"/admin                (Status: 301) [--> /admin/]", ("/admin", 301, None), id="hide-length"),
        pytest.param(b"/admin", ("/admin", None, None), id="no-status-and-hide-length"),
    ],
)
def test_dir_flag_variants(line: bytes, expected: tuple[str, int | None, int | None]) -> None:
    [finding] = parse_gobuster(line, "dir")

    assert (finding.value, finding.status, finding.size) == expected


def test_vhost_accepts_parenthesised_status() -> None:
    [finding] = parse_gobuster(b"Found: x.example (Status: 200) [Size: 123]\n", "vhost")

    assert (finding.value, finding.status, finding.size) == ("x.example", 200, 123)


def test_oversized_number_is_dropped_not_raised() -> None:
    [finding] = parse_gobuster(b"/admin (Status: 301) [Size: " + b"9" * 5000 + b"]\n", "dir")

    assert (finding.value, finding.status, finding.size) == ("/admin", 301, None)


def test_dns_cname_is_not_taken_for_an_address() -> None:
    [finding] = parse_gobuster(b"Found: www.lab.internal [lab.internal.]\n", "dns")

    assert (finding.value, finding.addresses) == ("www.lab.internal", [])


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("dir.txt", "vhost"),
        ("dir.txt", "dns"),
        ("vhost.txt", "dir"),
        ("vhost.txt", "dns"),
        ("dns_ips.txt", "dir"),
        ("dns_ips.txt", "vhost"),
    ],
)
def test_output_of_another_mode_yields_nothing(name: str, mode: Literal["dir", "vhost", "dns"]) -> None:
    assert parse_gobuster(fixture(name), mode) == []


@pytest.mark.parametrize("mode", ["dir", "vhost", "dns"])
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00\xff\xfe" * 50, id="binary"),
        pytest.param(b"[ERROR] 2026/11/25 context deadline exceeded\n", id="error-line"),
        pytest.param(b"\x1b[2K\rProgress: 3 / 14 (21.43%)\r", id="progress"),
        pytest.param(b"Found:\n", id="found-without-value"),
        pytest.param(b"Found: x (Status: \xd9\xa2\xd9\xa0\xd9\xa0)\n", id="non-ascii-digits"),
    ],
)
def test_garbage_yields_no_findings(data: bytes, mode: Literal["dir", "vhost", "dns"]) -> None:
    assert parse_gobuster(data, mode) == []


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["dir", "vhost", "dns"]))
def test_arbitrary_bytes_never_raise(data: bytes, mode: Literal["dir", "vhost", "dns"]) -> None:
    assert isinstance(parse_gobuster(data, mode), list)


# the stream: fed line by line, as the runner's line callback hands gobuster's stdout over


@pytest.mark.parametrize(
    ("name", "mode"),
    [("dir.txt", "dir"), ("dir_tty.txt", "dir"), ("vhost.txt", "vhost"), ("dns_ips.txt", "dns")],
)
def test_each_result_line_completes_a_finding_as_it_arrives(name: str, mode: Literal["dir", "vhost", "dns"]) -> None:
    lines = list(output_lines(fixture(name)))
    stream = GobusterStream(mode)
    counts = []
    for line in lines:
        stream.feed(line)
        counts.append(len(stream.fields()["findings"]))

    # One result per line, so the findings so far grow by one at each result line.
    assert counts == sorted(counts)
    assert counts[-1] == len(parse_gobuster(fixture(name), mode)) > 0
    assert all(later - earlier in (0, 1) for earlier, later in zip([0, *counts], counts, strict=False))


def test_a_piece_of_an_over_long_line_is_not_read_as_a_result() -> None:
    # Its first piece alone reads as a path with a status; the whole line is one flood.
    flood = b"/planted (Status: 200) [Size: 1]" + b"x" * MAX_LINE_BYTES
    stream = GobusterStream("dir")

    completed = [stream.feed(line) for line in output_lines(flood + b"\n/admin (Status: 301) [Size: 0]\n")]

    assert completed == [False, False, True]
    assert [f.value for f in stream.fields()["findings"]] == ["/admin"]
