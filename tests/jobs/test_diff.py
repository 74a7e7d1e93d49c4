"""The diff of two scans (appliance.jobs.diff): each entry kind per tool, order, summary, lenient input.

Inputs are written as the stored, compact results look (`model_dump(mode="json")` dicts with open
ports only), built by the small helpers below; one test goes through the result models themselves.
"""

from __future__ import annotations

import json
from typing import Any, get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.errors import ValidationError
from appliance.jobs.diff import (
    KIND_ORDER,
    SUMMARY_NAMED,
    TOOL_KINDS,
    DiffEntry,
    DiffKind,
    ScanDiff,
    diff_results,
    summary_line,
)
from appliance.results import GobusterFinding, GobusterResult, NmapHost, NmapPort, NmapResult

Result = dict[str, Any]


def port(number: int, protocol: str = "tcp", state: str = "open", **fields: str | None) -> Result:
    return {"port": number, "protocol": protocol, "state": state, "scripts": [], **fields}


def host(address: str, *ports: Result, status: str = "up") -> Result:
    return {
        "address": address,
        "status": status,
        "hostnames": [],
        "ports": list(ports),
        "port_counts": {"closed": 0, "filtered": 0},
    }


def nmap(*hosts: Result) -> Result:
    return {"tool": "nmap_scan", "hosts": list(hosts)}


def masscan(*findings: tuple[str, int, str]) -> Result:
    return {
        "tool": "masscan_scan",
        "findings": [{"ip": ip, "port": p, "protocol": "tcp", "status": s, "ttl": 64} for ip, p, s in findings],
    }


def gobuster(*findings: Result, mode: str = "dir") -> Result:
    return {"tool": "gobuster_scan", "mode": mode, "findings": list(findings)}


def path(value: str, status: int | None = 200, size: int | None = 100) -> Result:
    return {"kind": "path", "value": value, "status": status, "size": size, "addresses": []}


def diff(tool: str, before: Result, after: Result) -> ScanDiff:
    return diff_results(tool, before, after, scan_id="scan-2", against_scan_id="scan-1")


def kinds(result: ScanDiff) -> list[str]:
    return [entry.kind for entry in result.entries]


# nmap


def test_nmap_port_opened_on_a_known_host_names_its_service() -> None:
    result = diff(
        "nmap_scan",
        nmap(host("10.0.0.5", port(22, service="ssh"))),
        nmap(host("10.0.0.5", port(22, service="ssh"), port(8080, service="http"))),
    )
    assert result.entries == [
        DiffEntry(kind="port_opened", host="10.0.0.5", port=8080, protocol="tcp", after="http"),
    ]
    assert result.summary == "1 port opened (10.0.0.5:8080/tcp http)"
    assert (result.tool, result.scan_id, result.against_scan_id) == ("nmap_scan", "scan-2", "scan-1")


def test_nmap_port_closed_names_the_service_it_had() -> None:
    result = diff(
        "nmap_scan",
        nmap(host("10.0.0.5", port(22, service="ssh"), port(8080, service="http"))),
        nmap(host("10.0.0.5", port(22, service="ssh"))),
    )
    assert result.entries == [
        DiffEntry(kind="port_closed", host="10.0.0.5", port=8080, protocol="tcp", before="http"),
    ]
    assert result.summary == "1 port closed (10.0.0.5:8080/tcp http)"


def test_nmap_host_appeared_also_lists_its_open_ports() -> None:
    result = diff(
        "nmap_scan",
        nmap(host("10.0.0.5", port(22))),
        nmap(host("10.0.0.5", port(22)), host("10.0.0.7", port(80, service="http"), port(443, service="https"))),
    )
    assert result.entries == [
        DiffEntry(kind="port_opened", host="10.0.0.7", port=80, protocol="tcp", after="http"),
        DiffEntry(kind="port_opened", host="10.0.0.7", port=443, protocol="tcp", after="https"),
        DiffEntry(kind="host_appeared", host="10.0.0.7"),
    ]


def test_nmap_host_gone_closes_its_ports() -> None:
    result = diff(
        "nmap_scan",
        nmap(host("10.0.0.5", port(22)), host("10.0.0.9", port(8080, service="http"))),
        nmap(host("10.0.0.5", port(22))),
    )
    assert kinds(result) == ["port_closed", "host_gone"]
    assert result.summary == "1 port closed (10.0.0.9:8080/tcp http); 1 host gone (10.0.0.9)"


def test_nmap_host_reported_down_is_gone() -> None:
    result = diff("nmap_scan", nmap(host("10.0.0.9")), nmap(host("10.0.0.9", status="down")))
    assert result.entries == [DiffEntry(kind="host_gone", host="10.0.0.9")]


def test_nmap_host_up_without_open_ports_appears() -> None:
    # A ping sweep finds hosts, not ports: the host is news on its own.
    result = diff("nmap_scan", nmap(host("10.0.0.9", status="down")), nmap(host("10.0.0.9")))
    assert result.entries == [DiffEntry(kind="host_appeared", host="10.0.0.9")]


def test_summary_matches_the_documented_example() -> None:
    result = diff(
        "nmap_scan",
        nmap(host("10.0.0.5"), host("10.0.0.9")),
        nmap(host("10.0.0.5", port(8080, service="http"))),
    )
    assert result.summary == "1 port opened (10.0.0.5:8080/tcp http); 1 host gone (10.0.0.9)"


@pytest.mark.parametrize(
    ("field", "kind", "old", "new"),
    [
        ("service", "service_changed", "http", "http-proxy"),
        ("product", "product_changed", "nginx", "Apache httpd"),
        ("version", "version_changed", "1.24.0", "1.25.3"),
        # A value that appears or vanishes is a change too (a version scan after a connect scan).
        ("product", "product_changed", None, "nginx"),
        ("version", "version_changed", "2.4.57", None),
    ],
)
def test_nmap_field_change_on_a_port_open_in_both(field: str, kind: DiffKind, old: str | None, new: str | None) -> None:
    before, after = {**port(80), field: old}, {**port(80), field: new}
    result = diff("nmap_scan", nmap(host("10.0.0.5", before)), nmap(host("10.0.0.5", after)))
    assert result.entries == [DiffEntry(kind=kind, host="10.0.0.5", port=80, protocol="tcp", before=old, after=new)]


def test_nmap_service_product_and_version_changes_are_separate_entries() -> None:
    result = diff(
        "nmap_scan",
        nmap(host("10.0.0.5", port(80, service="http", product="nginx", version="1.24.0"))),
        nmap(host("10.0.0.5", port(80, service="https", product="Caddy", version="2.7"))),
    )
    assert kinds(result) == ["service_changed", "product_changed", "version_changed"]
    assert [(e.before, e.after) for e in result.entries] == [("http", "https"), ("nginx", "Caddy"), ("1.24.0", "2.7")]
    assert result.summary == (
        "1 service changed (10.0.0.5:80/tcp http -> https); 1 product changed (10.0.0.5:80/tcp nginx -> Caddy); "
        "1 version changed (10.0.0.5:80/tcp 1.24.0 -> 2.7)"
    )


def test_nmap_extrainfo_and_scripts_are_not_compared() -> None:
    before = nmap(host("10.0.0.5", port(80, extrainfo="Ubuntu")))
    after = nmap(host("10.0.0.5", {**port(80, extrainfo="Debian"), "scripts": [{"id": "http-title", "output": "x"}]}))
    assert diff("nmap_scan", before, after).entries == []


@pytest.mark.parametrize("state", ["closed", "filtered", "open|filtered", "unfiltered"])
def test_nmap_only_state_open_is_an_open_port(state: str) -> None:
    result = diff("nmap_scan", nmap(host("10.0.0.5")), nmap(host("10.0.0.5", port(80, state=state))))
    assert result.entries == []


def test_nmap_port_counts_are_not_compared() -> None:
    before, after = nmap(host("10.0.0.5")), nmap(host("10.0.0.5"))
    after["hosts"][0]["port_counts"] = {"closed": 997, "filtered": 3}
    assert diff("nmap_scan", before, after).entries == []


def test_nmap_protocol_tells_ports_apart() -> None:
    result = diff("nmap_scan", nmap(host("10.0.0.5", port(53, "tcp"))), nmap(host("10.0.0.5", port(53, "udp"))))
    assert [(e.kind, e.protocol) for e in result.entries] == [("port_opened", "udp"), ("port_closed", "tcp")]


def test_nmap_ipv6_spellings_of_one_address_are_one_host() -> None:
    result = diff("nmap_scan", nmap(host("fd00:0::5", port(22))), nmap(host("fd00::5", port(22), port(80))))
    assert result.entries == [DiffEntry(kind="port_opened", host="fd00::5", port=80, protocol="tcp")]
    assert result.summary == "1 port opened ([fd00::5]:80/tcp)"


def test_nmap_results_built_by_the_result_models_diff() -> None:
    def dump(*ports: NmapPort) -> Result:
        report = NmapResult(
            tool="nmap_scan",
            request_id="r",
            target="web.lab.internal",
            scanned_address="10.20.0.5",
            argv=["nmap"],
            dry_run=False,
            hosts=[NmapHost(address="10.20.0.5", status="up", ports=list(ports))],
        )
        return report.model_dump(mode="json")

    ssh = NmapPort(port=22, protocol="tcp", state="open", service="ssh")
    web = NmapPort(port=80, protocol="tcp", state="open", service="http", product="nginx")
    result = diff("nmap_scan", dump(ssh), dump(ssh, web))
    assert result.entries == [DiffEntry(kind="port_opened", host="10.20.0.5", port=80, protocol="tcp", after="http")]


# masscan


def test_masscan_port_opened_and_closed_on_a_known_host() -> None:
    result = diff(
        "masscan_scan",
        masscan(("10.0.0.5", 22, "open"), ("10.0.0.5", 80, "open")),
        masscan(("10.0.0.5", 22, "open"), ("10.0.0.5", 443, "open")),
    )
    assert result.entries == [
        DiffEntry(kind="port_opened", host="10.0.0.5", port=443, protocol="tcp"),
        DiffEntry(kind="port_closed", host="10.0.0.5", port=80, protocol="tcp"),
    ]
    assert result.summary == "1 port opened (10.0.0.5:443/tcp); 1 port closed (10.0.0.5:80/tcp)"


def test_masscan_host_with_any_finding_is_up() -> None:
    result = diff("masscan_scan", masscan(("10.0.0.9", 22, "open")), masscan(("10.0.0.7", 22, "closed")))
    assert result.entries == [
        DiffEntry(kind="port_closed", host="10.0.0.9", port=22, protocol="tcp"),
        DiffEntry(kind="host_appeared", host="10.0.0.7"),
        DiffEntry(kind="host_gone", host="10.0.0.9"),
    ]


def test_masscan_open_to_closed_status_closes_the_port_but_keeps_the_host() -> None:
    result = diff("masscan_scan", masscan(("10.0.0.5", 22, "open")), masscan(("10.0.0.5", 22, "closed")))
    assert result.entries == [DiffEntry(kind="port_closed", host="10.0.0.5", port=22, protocol="tcp")]


# gobuster


def test_gobuster_finding_appeared_and_gone() -> None:
    result = diff("gobuster_scan", gobuster(path("/old", 200)), gobuster(path("/admin", 301)))
    assert result.entries == [
        DiffEntry(kind="finding_appeared", item="/admin", after="301"),
        DiffEntry(kind="finding_gone", item="/old", before="200"),
    ]
    assert result.summary == "1 finding appeared (/admin 301); 1 finding gone (/old 200)"
    assert all(entry.host is None and entry.port is None for entry in result.entries)


def test_gobuster_status_change_gives_the_statuses() -> None:
    result = diff("gobuster_scan", gobuster(path("/admin", 301, 0)), gobuster(path("/admin", 200, 5120)))
    # The size belongs to another response once the status changed: only the status is reported.
    assert result.entries == [DiffEntry(kind="finding_changed", item="/admin", before="301", after="200")]
    assert result.summary == "1 finding changed (/admin 301 -> 200)"


def test_gobuster_size_change_with_the_same_status_gives_the_sizes() -> None:
    result = diff("gobuster_scan", gobuster(path("/", 200, 1234)), gobuster(path("/", 200, 1240)))
    assert result.entries == [
        DiffEntry(kind="finding_changed", item="/", before="1234 bytes", after="1240 bytes"),
    ]


def test_gobuster_dns_address_change() -> None:
    def name(*addresses: str) -> Result:
        return {
            "kind": "subdomain",
            "value": "web.lab.internal",
            "status": None,
            "size": None,
            "addresses": list(addresses),
        }

    before = gobuster(name("10.20.0.6", "10.20.0.5"), mode="dns")
    assert diff("gobuster_scan", before, gobuster(name("10.20.0.5", "10.20.0.6"), mode="dns")).entries == []
    result = diff("gobuster_scan", before, gobuster(name("10.20.0.7"), mode="dns"))
    assert result.entries == [
        DiffEntry(kind="finding_changed", item="web.lab.internal", before="10.20.0.5, 10.20.0.6", after="10.20.0.7")
    ]


def test_gobuster_diff_of_two_modes_is_refused() -> None:
    vhost = {"kind": "vhost", "value": "admin", "status": 200, "size": 10, "addresses": []}
    with pytest.raises(ValidationError) as caught:
        diff("gobuster_scan", gobuster(path("admin", 200, 10)), gobuster(vhost, mode="vhost"))
    assert caught.value.rule == "diff_mode_mismatch"
    assert "gobuster vhost scan" in caught.value.recovery_suggestion


def test_gobuster_findings_are_keyed_by_kind_and_value() -> None:
    # Without a mode (older data) the two results are compared; the kind keeps the findings apart.
    vhost = {"kind": "vhost", "value": "admin", "status": 200, "size": 10, "addresses": []}
    result = diff("gobuster_scan", {"findings": [path("admin", 200, 10)]}, {"findings": [vhost]})
    assert kinds(result) == ["finding_appeared", "finding_gone"]


def test_gobuster_results_built_by_the_result_models_diff() -> None:
    def dump(*findings: GobusterFinding) -> Result:
        report = GobusterResult(
            tool="gobuster_scan",
            request_id="r",
            target="http://web.lab.internal/",
            scanned_address="10.20.0.5",
            argv=["gobuster"],
            dry_run=False,
            mode="dir",
            findings=list(findings),
        )
        return report.model_dump(mode="json")

    result = diff("gobuster_scan", dump(), dump(GobusterFinding(kind="path", value="/.git", status=403, size=0)))
    assert result.entries == [DiffEntry(kind="finding_appeared", item="/.git", after="403")]


# Every tool: no changes, counts, order, summary length, refusals


@pytest.mark.parametrize(
    ("tool", "result"),
    [
        ("nmap_scan", nmap(host("10.0.0.5", port(22, service="ssh", product="OpenSSH", version="9.6")))),
        ("masscan_scan", masscan(("10.0.0.5", 22, "open"), ("10.0.0.6", 80, "closed"))),
        ("gobuster_scan", gobuster(path("/admin", 301, 0), path("/", 200, 1234))),
    ],
)
def test_a_scan_diffed_against_an_equal_scan_has_no_changes(tool: str, result: Result) -> None:
    outcome = diff(tool, result, json.loads(json.dumps(result)))
    assert outcome.entries == []
    assert outcome.summary == "no changes"
    assert outcome.counts == dict.fromkeys(TOOL_KINDS[tool], 0)


def test_counts_list_every_kind_of_the_tool() -> None:
    result = diff(
        "nmap_scan",
        nmap(host("10.0.0.5", port(80, service="http"))),
        nmap(host("10.0.0.5", port(80, service="https"), port(443)), host("10.0.0.6", port(22))),
    )
    assert result.counts == {
        "port_opened": 2,
        "port_closed": 0,
        "service_changed": 1,
        "product_changed": 0,
        "version_changed": 0,
        "host_appeared": 1,
        "host_gone": 0,
    }
    assert set(TOOL_KINDS["masscan_scan"]) == {"port_opened", "port_closed", "host_appeared", "host_gone"}
    assert set(TOOL_KINDS["gobuster_scan"]) == {"finding_appeared", "finding_gone", "finding_changed"}


def test_entries_are_ordered_by_kind_then_address_then_port() -> None:
    before = nmap(host("10.0.0.100", port(22)), host("10.0.0.20"))
    after = nmap(
        host("10.0.0.100", port(8080), port(443)),
        host("fd00::1", port(22)),
        host("10.0.0.9", port(80)),
        host("10.0.0.20", port(22)),
    )
    result = diff("nmap_scan", before, after)
    # Numeric address order (10.0.0.9 < 10.0.0.20 < 10.0.0.100), IPv4 before IPv6, numeric ports.
    assert [(e.kind, e.host, e.port) for e in result.entries] == [
        ("port_opened", "10.0.0.9", 80),
        ("port_opened", "10.0.0.20", 22),
        ("port_opened", "10.0.0.100", 443),
        ("port_opened", "10.0.0.100", 8080),
        ("port_opened", "fd00::1", 22),
        ("port_closed", "10.0.0.100", 22),
        ("host_appeared", "10.0.0.9", None),
        ("host_appeared", "fd00::1", None),
    ]


def test_kind_order_covers_every_kind_once() -> None:
    assert sorted(KIND_ORDER) == sorted(get_args(DiffKind))
    assert len(set(KIND_ORDER)) == len(KIND_ORDER)


@pytest.mark.parametrize("kind", get_args(DiffKind))
def test_summary_names_an_entry_of_every_kind(kind: DiffKind) -> None:
    entry = DiffEntry(kind=kind, host="10.0.0.5", port=80, protocol="tcp", before="a", after="b")
    if kind.startswith("finding_"):
        entry = DiffEntry(kind=kind, item="/x", before="a", after="b")
    line = summary_line([entry])
    assert line.startswith(f"1 {kind.split('_')[0]} {kind.split('_')[1]} (")
    assert ("/x" if kind.startswith("finding_") else "10.0.0.5") in line


def test_summary_names_the_first_entries_then_counts_the_rest() -> None:
    before = nmap(*(host(f"10.0.1.{i}") for i in range(2)))
    after = nmap(host("10.0.0.5", *(port(p) for p in range(1, 8))))
    result = diff("nmap_scan", before, after)
    assert len(result.entries) == 7 + 1 + 2
    assert result.summary == (
        "7 ports opened (10.0.0.5:1/tcp, 10.0.0.5:2/tcp, 10.0.0.5:3/tcp, 10.0.0.5:4/tcp, 10.0.0.5:5/tcp and 2 more); "
        "1 host appeared; 2 hosts gone"
    )
    assert SUMMARY_NAMED == 5


def test_summary_of_nothing_is_no_changes() -> None:
    assert summary_line([]) == "no changes"


def test_diff_of_an_unknown_tool_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        diff("nikto_scan", {}, {})
    assert caught.value.rule == "diff_tool_unknown"


def test_diff_against_a_scan_of_another_tool_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        diff("nmap_scan", masscan(("10.0.0.5", 22, "open")), nmap(host("10.0.0.5", port(22))))
    assert caught.value.rule == "diff_tool_mismatch"
    assert "scan-1" in caught.value.message
    assert "list_scans" in caught.value.recovery_suggestion


def test_scan_diff_dump_is_json_and_validates_back() -> None:
    result = diff(
        "nmap_scan", nmap(host("10.0.0.5", port(80, version="1"))), nmap(host("10.0.0.5", port(80, version="2")))
    )
    text = json.dumps(result.model_dump())
    assert ScanDiff.model_validate(json.loads(text)) == result


# Lenient input: results stored by older versions, or missing optional keys


def test_lenient_empty_results() -> None:
    for tool in TOOL_KINDS:
        assert diff(tool, {}, {}).entries == []
    result = diff("nmap_scan", {}, nmap(host("10.0.0.5", port(22))))
    assert kinds(result) == ["port_opened", "host_appeared"]


def test_lenient_nmap_missing_keys() -> None:
    before = {"hosts": [{"address": "10.0.0.5", "status": "up", "ports": [{"port": 22, "state": "open"}]}]}
    after = {
        "hosts": [
            # No port_counts, no protocol (taken as tcp), no status but open ports (taken as up).
            {"address": "10.0.0.5", "ports": [{"port": 22, "protocol": "tcp", "state": "open"}]},
            {"address": "10.0.0.6", "ports": [{"port": 80, "state": "open", "service": "http"}]},
            # Unkeyable or malformed entries are skipped, not fatal.
            {"status": "up", "ports": [{"port": 1, "state": "open"}]},
            {"address": "10.0.0.7", "status": "up", "ports": [{"state": "open"}, {"port": "80", "state": "open"}, 7]},
            "10.0.0.8",
            {"address": "10.0.0.9", "ports": None},
        ]
    }
    result = diff("nmap_scan", before, after)
    assert [(e.kind, e.host, e.port) for e in result.entries] == [
        ("port_opened", "10.0.0.6", 80),
        ("host_appeared", "10.0.0.6", None),
        ("host_appeared", "10.0.0.7", None),
    ]


def test_lenient_masscan_and_gobuster_missing_keys() -> None:
    result = diff(
        "masscan_scan",
        {"findings": [{"ip": "10.0.0.5", "port": 22, "status": "open"}]},
        {"findings": [{"ip": "10.0.0.5", "port": 22, "protocol": "tcp", "status": "open"}, {"port": 80}, None]},
    )
    assert result.entries == []
    result = diff(
        "gobuster_scan",
        {"findings": [{"kind": "path", "value": "/a"}]},
        {"findings": [{"kind": "path", "value": "/a", "status": 200}, {"value": "/b"}, {"kind": "path"}]},
    )
    assert result.entries == [DiffEntry(kind="finding_changed", item="/a", before=None, after="200")]
    assert result.summary == "1 finding changed (/a none -> 200)"


# Properties: a scan against itself, and swapping the two scans

_ADDRESSES = st.sampled_from(["10.0.0.5", "10.0.0.10", "10.0.1.5", "fd00::5", "fd00::a"])
_VALUES = st.one_of(st.none(), st.sampled_from(["http", "ssh", "nginx", "1.0", "2.0"]))
_NMAP_PORTS = st.builds(
    lambda n, proto, state, service, product, version: port(
        n, proto, state, service=service, product=product, version=version
    ),
    st.sampled_from([22, 80, 443, 8080]),
    st.sampled_from(["tcp", "udp"]),
    st.sampled_from(["open", "open", "closed", "filtered"]),
    _VALUES,
    _VALUES,
    _VALUES,
)
_NMAP = st.lists(
    st.builds(
        lambda address, status, ports: host(address, *ports, status=status),
        _ADDRESSES,
        st.sampled_from(["up", "up", "down"]),
        st.lists(_NMAP_PORTS, max_size=4),
    ),
    max_size=4,
).map(lambda hosts: nmap(*hosts))
_MASSCAN = st.lists(
    st.tuples(_ADDRESSES, st.sampled_from([22, 80, 443]), st.sampled_from(["open", "open", "closed"])), max_size=6
).map(lambda findings: masscan(*findings))
# One gobuster mode finds one kind of finding (dir: paths, vhost: vhosts, dns: subdomains).
_GOBUSTER_KINDS = {"dir": "path", "vhost": "vhost", "dns": "subdomain"}


def _gobuster(mode: str) -> st.SearchStrategy[Result]:
    finding = st.builds(
        lambda value, status, size, addresses: {
            "kind": _GOBUSTER_KINDS[mode],
            "value": value,
            "status": status,
            "size": size,
            "addresses": addresses,
        },
        st.sampled_from(["/", "/admin", "/.git", "admin"]),
        st.one_of(st.none(), st.sampled_from([200, 301, 403])),
        st.one_of(st.none(), st.sampled_from([0, 10, 1234])),
        st.lists(st.sampled_from(["10.0.0.5", "10.0.0.6"]), max_size=2),
    )
    return st.lists(finding, max_size=5).map(lambda findings: gobuster(*findings, mode=mode))


_SCANS = st.one_of(
    st.tuples(st.just("nmap_scan"), _NMAP, _NMAP),
    st.tuples(st.just("masscan_scan"), _MASSCAN, _MASSCAN),
    st.sampled_from(sorted(_GOBUSTER_KINDS)).flatmap(
        lambda mode: st.tuples(st.just("gobuster_scan"), _gobuster(mode), _gobuster(mode))
    ),
)
_SWAPPED: dict[str, str] = {
    "host_appeared": "host_gone",
    "host_gone": "host_appeared",
    "port_opened": "port_closed",
    "port_closed": "port_opened",
    "finding_appeared": "finding_gone",
    "finding_gone": "finding_appeared",
}


def _swapped(entry: DiffEntry) -> tuple[object, ...]:
    kind = _SWAPPED.get(entry.kind, entry.kind)
    return (kind, entry.host, entry.port, entry.protocol, entry.item, entry.after, entry.before)


def _plain(entry: DiffEntry) -> tuple[object, ...]:
    return (entry.kind, entry.host, entry.port, entry.protocol, entry.item, entry.before, entry.after)


@given(_SCANS)
def test_property_a_scan_against_itself_has_no_changes(scans: tuple[str, Result, Result]) -> None:
    tool, scan, _ = scans
    result = diff(tool, scan, scan)
    assert result.entries == []
    assert result.summary == "no changes"


@given(_SCANS)
def test_property_swapping_the_scans_swaps_appeared_gone_and_before_after(scans: tuple[str, Result, Result]) -> None:
    tool, first, second = scans
    forward, backward = diff(tool, first, second), diff(tool, second, first)
    assert sorted(map(_swapped, forward.entries), key=repr) == sorted(map(_plain, backward.entries), key=repr)
    assert sum(forward.counts.values()) == len(forward.entries)
    assert len(set(map(_plain, forward.entries))) == len(forward.entries)


@given(_SCANS)
def test_property_entries_are_in_kind_order_and_json(scans: tuple[str, Result, Result]) -> None:
    tool, first, second = scans
    result = diff(tool, first, second)
    ranks = [KIND_ORDER.index(entry.kind) for entry in result.entries]
    assert ranks == sorted(ranks)
    assert set(kinds(result)) <= set(TOOL_KINDS[tool])
    assert ScanDiff.model_validate_json(json.dumps(result.model_dump())) == result
