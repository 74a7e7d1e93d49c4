"""What changed between two scans of one tool: typed entries and a one-line summary.

Pure: it reads two structured results (`model_dump(mode="json")` dicts, the compact form) and
never touches the store. Input is read leniently: a missing key is an empty list or an unknown
value, and an entry that cannot be keyed (a host without an address, a port without a number) is
skipped rather than failing the whole diff, so results stored by older versions still diff.

Rules:
- nmap: a host is up when its status is "up" (a host without a status counts as up when it has an
  open port). An open port is state "open" exactly; `open|filtered` and the closed/filtered counts
  are not compared. For a port open in both scans, service, product and version are compared one
  by one, a value appearing or vanishing included: a version scan diffed against a connect scan
  therefore names every product it learnt.
- masscan: a host is up when it has any finding; an open port is a finding with status "open".
- gobuster: a finding is keyed by (kind, value). For one found in both, a status change is one
  `finding_changed` entry with the statuses as before/after ("301"/"200"). A size change with the
  same status is one `finding_changed` entry with sizes as "1234 bytes"/"1240 bytes" (the unit
  tells it from a status); with a changed status the size is not reported, it belongs to another
  response. A dns finding's address change is one entry with the sorted addresses
  ("10.0.0.5, 10.0.0.6"). Sizes are compared exactly: a page that differs on every request shows
  up on every diff.
- A port on a host that appeared is `port_opened` (and on a host that went, `port_closed`), so the
  caller sees what is there without a second call.
- Not covered: which ports and hosts each scan covered. The compact result lists open ports only,
  so a port that the later scan did not probe reads as closed; compare scans of the same request.

Entries come in `KIND_ORDER`, then by host in address order (IPv4 before IPv6, unparseable
addresses last), port, protocol and item. Swapping the two scans swaps appeared/gone,
opened/closed and each change's before/after; a scan diffed against itself has no entries.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from appliance.errors import ValidationError

DiffKind = Literal[
    "host_appeared",
    "host_gone",
    "port_opened",
    "port_closed",
    "service_changed",
    "product_changed",
    "version_changed",
    "finding_appeared",
    "finding_gone",
    "finding_changed",
]
# Open ports first: they are what a caller acts on, and the summary names the first few entries.
KIND_ORDER: tuple[DiffKind, ...] = (
    "port_opened",
    "port_closed",
    "service_changed",
    "product_changed",
    "version_changed",
    "host_appeared",
    "host_gone",
    "finding_appeared",
    "finding_gone",
    "finding_changed",
)
_HOST_KINDS: tuple[DiffKind, ...] = ("port_opened", "port_closed", "host_appeared", "host_gone")
# The kinds each tool can produce: `counts` lists all of them, zeros included.
TOOL_KINDS: dict[str, tuple[DiffKind, ...]] = {
    "nmap_scan": tuple(k for k in KIND_ORDER if not k.startswith("finding_")),
    "masscan_scan": _HOST_KINDS,
    "gobuster_scan": ("finding_appeared", "finding_gone", "finding_changed"),
}
# How many entries the summary line names before "and N more".
SUMMARY_NAMED = 5

_NMAP_FIELDS: tuple[tuple[str, DiffKind], ...] = (
    ("service", "service_changed"),
    ("product", "product_changed"),
    ("version", "version_changed"),
)


class DiffEntry(BaseModel):
    """One typed change between two scans."""

    kind: DiffKind
    host: str | None = Field(default=None, description="The address (nmap, masscan); null for gobuster.")
    port: int | None = None
    protocol: str | None = None
    item: str | None = Field(default=None, description="gobuster: the path, virtual host or name.")
    # The opened/closed and appeared/gone kinds fill the side that exists too (the port's service,
    # the finding's status), so an entry names what is there and swapping the scans swaps sides.
    before: str | None = Field(
        default=None, description="*_changed: the earlier value; port_closed: its service; finding_gone: its status."
    )
    after: str | None = Field(
        default=None, description="*_changed: the later value; port_opened: its service; finding_appeared: its status."
    )


class ScanDiff(BaseModel):
    """The changes of scan `scan_id` since scan `against_scan_id`."""

    tool: str
    scan_id: str
    against_scan_id: str
    entries: list[DiffEntry]
    summary: str = Field(description='One line, e.g. "1 port opened (10.0.0.5:8080/tcp http)"; "no changes".')
    counts: dict[str, int] = Field(description="Entries per kind, zeros included, for the kinds this tool has.")


# A port's identity and its compared fields (service, product, version for nmap).
_PortKey = tuple[str, int, str]
_Ports = dict[_PortKey, dict[str, str | None]]
_PortsView = Mapping[_PortKey, Mapping[str, str | None]]


@dataclass(frozen=True)
class ResultView:
    """What a diff reads from one result (`result_view`): a result diffed twice is read once
    (a rescan's `changes_since_previous` reads the previous scan's view again)."""

    named: Any  # the result's own `tool` key, when it has one
    mode: Any  # gobuster's mode
    up: frozenset[str] = frozenset()
    ports: _PortsView = dataclasses.field(default_factory=dict)
    findings: Mapping[tuple[str, str], Mapping[str, Any]] = dataclasses.field(default_factory=dict)


def result_view(tool: str, result: Mapping[str, Any]) -> ResultView:
    """The parts of `result` (a `tool` result) that `diff_views` compares."""
    named, mode = result.get("tool", tool), result.get("mode")
    if tool == "gobuster_scan":
        return ResultView(named, mode, findings=_gobuster_findings(result))
    if tool in ("nmap_scan", "masscan_scan"):
        up, ports = (_nmap_view if tool == "nmap_scan" else _masscan_view)(result)
        return ResultView(named, mode, frozenset(up), ports)
    return ResultView(named, mode)


def diff_results(
    tool: str, before: Mapping[str, Any], after: Mapping[str, Any], *, scan_id: str, against_scan_id: str
) -> ScanDiff:
    """The changes from `before` (scan `against_scan_id`) to `after` (scan `scan_id`).

    Raises `ValidationError` for a tool this module does not know, when a result names another
    tool than `tool` (a result without a `tool` key is taken as the named tool), and for two
    gobuster scans of different modes (a result without a `mode` is compared).
    """
    return diff_views(
        tool, result_view(tool, before), result_view(tool, after), scan_id=scan_id, against_scan_id=against_scan_id
    )


def diff_views(tool: str, before: ResultView, after: ResultView, *, scan_id: str, against_scan_id: str) -> ScanDiff:
    """`diff_results` of two results already read with `result_view`."""
    if tool not in TOOL_KINDS:
        raise ValidationError(
            f"scans of {tool!r} cannot be diffed",
            rule="diff_tool_unknown",
            recovery_suggestion="Diff scans of nmap_scan, masscan_scan or gobuster_scan.",
        )
    for scan, view in ((against_scan_id, before), (scan_id, after)):
        if view.named != tool:
            raise ValidationError(
                f"scan {scan} is a {view.named} scan, not {tool}",
                rule="diff_tool_mismatch",
                recovery_suggestion=f"Diff against an earlier {tool} scan (list_scans with tool={tool}).",
            )
    if tool == "gobuster_scan":
        _check_same_mode(before.mode, after.mode, scan_id=scan_id, against_scan_id=against_scan_id)
        entries = list(_finding_entries(before.findings, after.findings))
    else:
        entries = list(_host_entries(before.up, before.ports, after.up, after.ports))
    entries.sort(key=_order)
    counts = dict.fromkeys(TOOL_KINDS[tool], 0)
    for entry in entries:
        counts[entry.kind] += 1
    return ScanDiff(
        tool=tool,
        scan_id=scan_id,
        against_scan_id=against_scan_id,
        entries=entries,
        summary=summary_line(entries),
        counts=counts,
    )


def _check_same_mode(old: Any, new: Any, *, scan_id: str, against_scan_id: str) -> None:
    # A dir scan's paths and a vhost scan's hosts share no key: every finding would read as gone
    # and every other as appeared, which says nothing about the target.
    if old is not None and new is not None and old != new:
        raise ValidationError(
            f"scan {scan_id} is a gobuster {new} scan and scan {against_scan_id} a {old} scan",
            rule="diff_mode_mismatch",
            recovery_suggestion=f"Diff against an earlier gobuster {new} scan of the same target.",
        )


def summary_line(entries: Iterable[DiffEntry]) -> str:
    """One line: each kind's count in `KIND_ORDER`, naming the first `SUMMARY_NAMED` entries.

    "2 ports opened (10.0.0.5:22/tcp ssh, 10.0.0.5:80/tcp http); 1 host gone (10.0.0.9)";
    a kind whose entries are named only in part says "and N more"; "no changes" when empty.
    """
    by_kind: dict[DiffKind, list[DiffEntry]] = {}
    for entry in entries:
        by_kind.setdefault(entry.kind, []).append(entry)
    budget = SUMMARY_NAMED
    parts: list[str] = []
    for kind in KIND_ORDER:
        group = by_kind.get(kind, [])
        if not group:
            continue
        noun, verb = kind.split("_")
        part = f"{len(group)} {noun}{'' if len(group) == 1 else 's'} {verb}"
        named = [_describe(entry) for entry in group[:budget]]
        budget -= len(named)
        if named:
            rest = len(group) - len(named)
            part += f" ({', '.join(named)}{f' and {rest} more' if rest else ''})"
        parts.append(part)
    return "; ".join(parts) or "no changes"


def _describe(entry: DiffEntry) -> str:
    if entry.kind in ("host_appeared", "host_gone"):
        return entry.host or "?"
    if entry.host is not None:
        host = f"[{entry.host}]" if ":" in entry.host else entry.host
        where = f"{host}:{entry.port}/{entry.protocol}"
        if entry.kind in ("port_opened", "port_closed"):
            service = entry.after if entry.kind == "port_opened" else entry.before
            return f"{where} {service}" if service else where
        return f"{where} {entry.before or 'none'} -> {entry.after or 'none'}"
    if entry.kind == "finding_changed":
        return f"{entry.item} {entry.before or 'none'} -> {entry.after or 'none'}"
    status = entry.after if entry.kind == "finding_appeared" else entry.before
    return f"{entry.item} {status}" if status else str(entry.item)


def _host_entries(
    up_before: AbstractSet[str], ports_before: _PortsView, up_after: AbstractSet[str], ports_after: _PortsView
) -> Iterator[DiffEntry]:
    for host in sorted(up_after - up_before):
        yield DiffEntry(kind="host_appeared", host=host)
    for host in sorted(up_before - up_after):
        yield DiffEntry(kind="host_gone", host=host)
    # Opened/closed ports carry the service name (after resp. before) so the summary can name it.
    for key in sorted(ports_after.keys() - ports_before.keys()):
        yield _port_entry("port_opened", key, after=ports_after[key].get("service"))
    for key in sorted(ports_before.keys() - ports_after.keys()):
        yield _port_entry("port_closed", key, before=ports_before[key].get("service"))
    for key in sorted(ports_before.keys() & ports_after.keys()):
        for field, kind in _NMAP_FIELDS:
            old, new = ports_before[key].get(field), ports_after[key].get(field)
            if old != new:
                yield _port_entry(kind, key, before=old, after=new)


def _port_entry(kind: DiffKind, key: _PortKey, *, before: str | None = None, after: str | None = None) -> DiffEntry:
    host, port, protocol = key
    return DiffEntry(kind=kind, host=host, port=port, protocol=protocol, before=before, after=after)


def _finding_entries(
    before: Mapping[tuple[str, str], Mapping[str, Any]], after: Mapping[tuple[str, str], Mapping[str, Any]]
) -> Iterator[DiffEntry]:
    for key in sorted(after.keys() - before.keys()):
        yield DiffEntry(kind="finding_appeared", item=key[1], after=_status(after[key]))
    for key in sorted(before.keys() - after.keys()):
        yield DiffEntry(kind="finding_gone", item=key[1], before=_status(before[key]))
    for key in sorted(before.keys() & after.keys()):
        old, new = before[key], after[key]
        if old["status"] != new["status"]:
            yield DiffEntry(kind="finding_changed", item=key[1], before=_status(old), after=_status(new))
        elif old["size"] != new["size"]:
            yield DiffEntry(kind="finding_changed", item=key[1], before=_size(old), after=_size(new))
        elif old["addresses"] != new["addresses"]:
            yield DiffEntry(
                kind="finding_changed",
                item=key[1],
                before=", ".join(old["addresses"]) or None,
                after=", ".join(new["addresses"]) or None,
            )


def _status(finding: Mapping[str, Any]) -> str | None:
    return None if finding["status"] is None else str(finding["status"])


def _size(finding: Mapping[str, Any]) -> str | None:
    return None if finding["size"] is None else f"{finding['size']} bytes"


def _nmap_view(result: Mapping[str, Any]) -> tuple[set[str], _Ports]:
    up: set[str] = set()
    ports: _Ports = {}
    for host in _mappings(result.get("hosts")):
        address = _address(host.get("address"))
        if address is None:
            continue
        host_ports = [p for p in _mappings(host.get("ports")) if p.get("state") == "open"]
        status = host.get("status")
        if status == "up" or (status is None and host_ports):
            up.add(address)
        for port in host_ports:
            number = _int(port.get("port"))
            if number is not None:
                key = (address, number, _text(port.get("protocol")) or "tcp")
                # A host listed twice (one address in two host groups) keeps its first report.
                ports.setdefault(key, {field: _text(port.get(field)) for field, _ in _NMAP_FIELDS})
    return up, ports


def _masscan_view(result: Mapping[str, Any]) -> tuple[set[str], _Ports]:
    up: set[str] = set()
    ports: _Ports = {}
    for finding in _mappings(result.get("findings")):
        address = _address(finding.get("ip"))
        if address is None:
            continue
        up.add(address)
        number = _int(finding.get("port"))
        if number is not None and finding.get("status") == "open":
            ports[(address, number, _text(finding.get("protocol")) or "tcp")] = {}
    return up, ports


def _gobuster_findings(result: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    findings: dict[tuple[str, str], dict[str, Any]] = {}
    for finding in _mappings(result.get("findings")):
        kind, value = _text(finding.get("kind")), _text(finding.get("value"))
        if kind is None or value is None:
            continue
        addresses = finding.get("addresses")
        findings.setdefault(
            (kind, value),
            {
                "status": _int(finding.get("status")),
                "size": _int(finding.get("size")),
                "addresses": sorted({a for a in addresses if isinstance(a, str)})
                if isinstance(addresses, list)
                else [],
            },
        )
    return findings


# Ties (one value found as a path in one scan and as a vhost in the other) keep the order of the
# generators above, which walk sorted keys: the output never depends on set iteration order.
def _order(entry: DiffEntry) -> tuple[int, tuple[int, int, int, str], int, str, str]:
    return (
        KIND_ORDER.index(entry.kind),
        _host_order(entry.host),
        -1 if entry.port is None else entry.port,
        entry.protocol or "",
        entry.item or "",
    )


def _host_order(host: str | None) -> tuple[int, int, int, str]:
    if host is None:
        return (0, 0, 0, "")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return (2, 0, 0, host)
    return (1, ip.version, int(ip), "")


def _address(value: Any) -> str | None:
    """An address in its canonical spelling, so "fd00::0:5" and "fd00::5" are one host; other text as is."""
    text = _text(value)
    if text is None:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def _mappings(value: Any) -> Iterator[Mapping[str, Any]]:
    return (item for item in value if isinstance(item, Mapping)) if isinstance(value, list) else iter(())


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    # bool is an int subclass; JSON true is not a port or a status.
    return value if isinstance(value, int) and not isinstance(value, bool) else None
