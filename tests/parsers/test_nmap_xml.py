"""parse_nmap_xml and nmap_progress against real nmap 7.93 reports (see tests/fixtures/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.parsers.nmap_xml import nmap_progress, parse_nmap_xml

FIXTURES = Path(__file__).parent.parent / "fixtures" / "nmap"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_connect_scan_reports_open_and_closed_ports() -> None:
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
        (18083, "tcp", "closed", "conn-refused"),
    ]


def test_version_scan_reads_service_product_version_and_scripts() -> None:
    result = parse_nmap_xml(fixture("version.xml"))

    assert result.complete
    ports = {p.port: p for p in result.hosts[0].ports}
    ssh, http, closed = ports[18022], ports[18080], ports[18083]
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
    assert (closed.state, closed.reason, closed.service, closed.scripts) == ("closed", "reset", None, [])


def test_ping_scan_reports_host_without_ports() -> None:
    result = parse_nmap_xml(fixture("ping.xml"))

    assert result.complete
    [host] = result.hosts
    assert (host.address, host.status, host.ports) == ("127.0.0.1", "up", [])


def test_two_hosts_keep_their_own_ports() -> None:
    result = parse_nmap_xml(fixture("two_hosts.xml"))

    assert result.complete
    assert {h.address: [(p.port, p.state) for p in h.ports] for h in result.hosts} == {
        "10.250.1.1": [(2222, "closed"), (8080, "open"), (9999, "closed")],
        "10.250.1.2": [(2222, "open"), (8080, "open"), (9999, "closed")],
    }
    # -sT without -sV: the service name is nmap's guess from its port table.
    assert result.hosts[0].ports[1].service == "http-proxy"


def test_progress_run_parses_like_any_report() -> None:
    result = parse_nmap_xml(fixture("progress.xml"))

    assert result.complete
    [host] = result.hosts
    # The 1999 closed ports are folded into <extraports>, which is not reported.
    assert [(p.port, p.state) for p in host.ports] == [(20500, "open")]


def test_partial_document_keeps_only_closed_hosts() -> None:
    result = parse_nmap_xml(fixture("partial.xml"))

    assert not result.complete
    assert result.error is not None
    assert [h.address for h in result.hosts] == ["10.250.1.1"]
    assert len(result.hosts[0].ports) == 3


def test_every_cut_of_a_report_yields_the_hosts_closed_before_it() -> None:
    data = fixture("two_hosts.xml")
    end = data.rindex(b"</nmaprun>") + len(b"</nmaprun>")
    for cut in range(end):
        result = parse_nmap_xml(data[:cut])
        assert not result.complete, cut
        assert result.error is not None, cut
        assert len(result.hosts) == data[:cut].count(b"</host>"), cut


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
