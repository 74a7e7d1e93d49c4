"""Parse nmap's XML report (`nmap -oX -`) into `NmapHost` models, including cut-short documents.

The document goes through defusedxml's `DefusedXMLParser`, so entity declarations and external
references are refused before anything is expanded or fetched. A streaming target keeps only the
fields the result models carry and records each host when its `</host>` closes; a document cut
anywhere (timeout, output cap) therefore still yields every host nmap had finished.

Not covered: OS detection (`<os>`), traceroute, host and pre/post scripts (`<hostscript>`,
`<prescript>`, `<postscript>`), the structured `<elem>`/`<table>` script output (the flat `output`
attribute is kept), ports that nmap folds into `<extraports>` counts, and timing data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser, ParseError

from appliance.results import NmapHost, NmapPort, NmapScript

# nmap writes these inside the XML on stdout when run with `--stats-every`; one per line.
_TASKPROGRESS = re.compile(rb'<taskprogress\b[^>]*?\bpercent="(\d{1,3}(?:\.\d+)?)"')


@dataclass(frozen=True)
class NmapParse:
    """What a report yielded. `complete` means `</nmaprun>` was reached; `error` says why not,
    or carries nmap's own error message from `<finished exit="error">`."""

    hosts: list[NmapHost]
    complete: bool
    error: str | None


def _port_number(attrib: dict[str, str]) -> int | None:
    raw = attrib.get("portid", "")
    # isascii: str.isdigit also accepts digits such as "²" that int() rejects.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 5 or int(raw) > 65535:
        return None
    return int(raw)


class _HostCollector:
    """Parser target: builds one `NmapHost` per closed `<host>` and drops everything else."""

    def __init__(self) -> None:
        self.hosts: list[NmapHost] = []
        self.root: str | None = None
        self.complete = False
        self.nmap_error: str | None = None
        self._host: dict[str, str] | None = None
        self._hostnames: list[str] = []
        self._ports: list[NmapPort] = []
        self._port: NmapPort | None = None

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        if self.root is None:
            self.root = tag
        if self.root != "nmaprun":
            return
        if tag == "host":
            self._host, self._hostnames, self._ports = {}, [], []
        elif tag == "finished" and attrib.get("exit") == "error":
            self.nmap_error = attrib.get("errormsg") or "nmap reported exit=error"
        elif self._host is None:
            return
        elif tag == "status":
            self._host["status"] = attrib.get("state", "unknown")
        elif tag == "address":
            # A MAC address also appears here on local Ethernet; the IP is what callers scanned.
            kind = "ip" if attrib.get("addrtype") in ("ipv4", "ipv6") else "other"
            if kind not in self._host and "addr" in attrib:
                self._host[kind] = attrib["addr"]
        elif tag == "hostname" and attrib.get("name"):
            self._hostnames.append(attrib["name"])
        elif tag == "port":
            number = _port_number(attrib)
            self._port = None
            if number is not None:
                self._port = NmapPort(port=number, protocol=attrib.get("protocol", "tcp"), state="unknown")
        elif self._port is not None:
            self._port_detail(self._port, tag, attrib)

    @staticmethod
    def _port_detail(port: NmapPort, tag: str, attrib: dict[str, str]) -> None:
        if tag == "state":
            port.state = attrib.get("state", "unknown")
            port.reason = attrib.get("reason")
        elif tag == "service":
            port.service = attrib.get("name")
            port.product = attrib.get("product")
            port.version = attrib.get("version")
            port.extrainfo = attrib.get("extrainfo")
        elif tag == "script" and "id" in attrib:
            port.scripts.append(NmapScript(id=attrib["id"], output=attrib.get("output", "")))

    def end(self, tag: str) -> None:
        if self.root != "nmaprun":
            return
        if tag == "nmaprun":
            self.complete = True
        elif tag == "port" and self._port is not None:
            self._ports.append(self._port)
            self._port = None
        elif tag == "host" and self._host is not None:
            address = self._host.get("ip") or self._host.get("other")
            # Without an address the host cannot be reported or checked against the scope.
            if address:
                status = self._host.get("status", "unknown")
                self.hosts.append(
                    NmapHost(address=address, status=status, hostnames=self._hostnames, ports=self._ports)
                )
            self._host = None


def parse_nmap_xml(data: bytes) -> NmapParse:
    """Parse nmap XML. Never raises on bad input: malformed, cut or hostile documents come back
    with `complete=False`, the hosts closed before the problem, and the reason in `error`."""
    collector = _HostCollector()
    parser = DefusedXMLParser(target=collector)
    error: str | None = None
    try:
        parser.feed(data)
        parser.close()
    except DefusedXmlException as exc:
        # Entity declarations are how billion-laughs and XXE start; nmap never writes them.
        return NmapParse(hosts=[], complete=False, error=f"XML refused by defusedxml: {exc}")
    except (ParseError, LookupError, ValueError) as exc:
        # LookupError and ValueError come from an encoding declaration expat hands to Python's codecs.
        error = f"XML ends early or is malformed: {exc}"
    if collector.root is not None and collector.root != "nmaprun":
        return NmapParse(hosts=[], complete=False, error=f"root element is <{collector.root}>, not <nmaprun>")
    if error is None and not collector.complete:
        error = "document has no </nmaprun>"
    return NmapParse(
        hosts=collector.hosts,
        complete=collector.complete and error is None,
        error=error or collector.nmap_error,
    )


def nmap_progress(line: bytes) -> float | None:
    """Percent done from a `<taskprogress ... percent="12.34" .../>` line (`--stats-every`), else None.

    The percent is per task (ping, port scan, service scan...), so it restarts at each phase.
    """
    matches = _TASKPROGRESS.findall(line)
    if not matches:
        return None
    percent = float(matches[-1])
    return percent if 0.0 <= percent <= 100.0 else None
