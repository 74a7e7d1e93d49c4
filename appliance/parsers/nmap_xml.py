"""Parse nmap's XML report (`nmap -oX -`) into `NmapHost` models, line by line while nmap runs.

The document goes through defusedxml's `DefusedXMLParser`, so entity declarations and external
references are refused before anything is expanded or fetched. A streaming target keeps only the
fields the result models carry and records each host when its `</host>` closes; a document cut
anywhere (timeout, output cap) therefore still yields every host nmap had finished. `NmapStream`
is fed the runner's lines as they arrive; `parse_nmap_xml` feeds it a whole document.

A host lists its open ports in full; every port state it saw, the ports nmap folds into
`<extraports>` included, is only counted (`port_counts`).

Not covered: OS detection (`<os>`), traceroute, host and pre/post scripts (`<hostscript>`,
`<prescript>`, `<postscript>`), the structured `<elem>`/`<table>` script output (the flat `output`
attribute is kept), and timing data.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser, ParseError

from appliance.parsers.lines import ends_line, output_lines
from appliance.results import NmapHost, NmapPort, NmapScript

# nmap writes these inside the XML on stdout when run with `--stats-every`; one per line.
_TASKPROGRESS = re.compile(rb'<taskprogress\b[^>]*?\bpercent="(\d{1,3}(?:\.\d+)?)"')
# Whole lines wait until one may close a host, then go to expat together: one parser call per
# host instead of one per line, and each host is still reported at its own `</host>` line. Any
# line holding this is taken as a possible end (`</hostnames>` too: an early parse costs nothing).
_HOST_END = b"</host"
# ... or until this much waits (a document without hosts, a flood): what is held stays small.
PARSE_BATCH_BYTES = 64 * 1024


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


def _count(attrib: dict[str, str]) -> int | None:
    raw = attrib.get("count", "")
    # More ports than any protocol has is not a count nmap wrote.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6 or int(raw) > 65536:
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
        self._counts: dict[str, int] = {}
        self._port: NmapPort | None = None

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        if self.root is None:
            self.root = tag
        if self.root != "nmaprun":
            return
        if tag == "host":
            self._host, self._hostnames, self._ports, self._counts = {}, [], [], {}
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
        elif tag == "extraports":
            count = _count(attrib)
            if count is not None:
                self._tally(attrib.get("state", "unknown"), count)
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

    def _tally(self, state: str, count: int) -> None:
        self._counts[state] = self._counts.get(state, 0) + count

    def end(self, tag: str) -> None:
        if self.root != "nmaprun":
            return
        if tag == "nmaprun":
            self.complete = True
        elif tag == "port" and self._port is not None:
            self._tally(self._port.state, 1)
            # Closed and filtered ports are only counted: a sweep's thousands of them would bury
            # the few an agent acts on.
            if self._port.state == "open":
                self._ports.append(self._port)
            self._port = None
        elif tag == "host" and self._host is not None:
            address = self._host.get("ip") or self._host.get("other")
            # Without an address the host cannot be reported or checked against the scope.
            if address:
                status = self._host.get("status", "unknown")
                self.hosts.append(
                    NmapHost(
                        address=address,
                        status=status,
                        hostnames=self._hostnames,
                        ports=self._ports,
                        port_counts=self._counts,
                    )
                )
            self._host = None


class NmapStream:
    """nmap's XML fed line by line (the runner's line callback): one stream per run.

    Never raises on bad input: a malformed or hostile document stops the parse, and the hosts
    closed before the problem stay (none when defusedxml refused the document: entity
    declarations come before the root element, so before any host).
    """

    def __init__(self) -> None:
        self._collector = _HostCollector()
        self._parser = DefusedXMLParser(target=self._collector)
        self._error: str | None = None
        self._refused = False
        self._closed = False
        self._long_line: list[bytes] = []  # the pieces so far of a line longer than the runner's piece size
        self._waiting: list[bytes] = []  # whole lines not yet parsed (see _HOST_END)
        self._waiting_bytes = 0

    def feed(self, line: bytes) -> bool:
        """One line without its newline, or one piece of a longer line. True when a host closed."""
        if self._error is not None or self._closed:
            return False
        if not ends_line(line):
            # A piece of a longer line (a long script output): kept until the line ends, then
            # parsed whole. Fed piece by piece, expat would rescan the unfinished attribute from
            # its start at every piece (quadratic: one 16 MiB line took 5 s, 0.5 s whole); and a newline after a piece
            # would land inside an attribute value (where XML reads it as a space) or split a
            # name or a character reference such as `&#xa;`.
            self._long_line.append(line)
            return False
        if self._long_line:
            line = b"".join([*self._long_line, line])
            self._long_line.clear()
        self._waiting.append(line)
        self._waiting_bytes += len(line) + 1
        if _HOST_END not in line and self._waiting_bytes < PARSE_BATCH_BYTES:
            return False
        return self._parse_waiting()

    def _parse_waiting(self) -> bool:
        """Parse the lines that wait; True when a host closed among them."""
        before = len(self._collector.hosts)
        self._waiting.append(b"")  # each line ends with its newline, as nmap wrote it
        data = b"\n".join(self._waiting)
        self._waiting.clear()
        self._waiting_bytes = 0
        self._parse(data)
        if self._error is None:
            # expat >= 2.6 may hold a token back until more data arrives ("reparse deferral");
            # Python's flush() (3.11.9+) parses what it has, so a host is reported at its own line.
            # The image's expat 2.5.0 does not defer, and its Python has no flush.
            flush = getattr(self._parser, "flush", None)
            if flush is not None:
                self._parse_with(flush)
        return len(self._collector.hosts) > before

    def fields(self) -> dict[str, Any]:
        """`{"hosts": [...]}`: every host closed so far, for `NmapResult`."""
        return {"hosts": list(self._collector.hosts)}

    def close(self) -> NmapParse:
        """End of the document: what it yielded, and whether it was complete. Feeds after it are ignored."""
        if self._waiting and self._error is None and not self._closed:
            self._parse_waiting()
        if self._long_line and self._error is None and not self._closed:
            self._parse(b"".join(self._long_line))  # output cut inside a long line
            self._long_line.clear()
        if self._error is None and not self._closed:
            self._parse_with(self._parser.close)
        self._closed = True
        collector = self._collector
        if self._refused:
            return NmapParse(hosts=[], complete=False, error=self._error)
        if collector.root is not None and collector.root != "nmaprun":
            return NmapParse(hosts=[], complete=False, error=f"root element is <{collector.root}>, not <nmaprun>")
        error = self._error
        if error is None and not collector.complete:
            error = "document has no </nmaprun>"
        return NmapParse(
            hosts=list(collector.hosts),
            complete=collector.complete and error is None,
            error=error or collector.nmap_error,
        )

    def _parse(self, data: bytes) -> None:
        self._parse_with(lambda: self._parser.feed(data))

    def _parse_with(self, step: Callable[[], object]) -> None:
        try:
            step()
        except DefusedXmlException as exc:
            # Entity declarations are how billion-laughs and XXE start; nmap never writes them.
            self._error = f"XML refused by defusedxml: {exc}"
            self._refused = True
            self._collector.hosts.clear()
        except (ParseError, LookupError, ValueError) as exc:
            # LookupError and ValueError come from an encoding declaration expat hands to Python's codecs.
            self._error = f"XML ends early or is malformed: {exc}"


def parse_nmap_xml(data: bytes) -> NmapParse:
    """Parse a whole nmap XML document through `NmapStream`. Never raises on bad input:
    malformed, cut or hostile documents come back with `complete=False`, the hosts closed
    before the problem, and the reason in `error`."""
    stream = NmapStream()
    for line in output_lines(data):
        stream.feed(line)
    return stream.close()


def nmap_progress(line: bytes) -> float | None:
    """Percent done from a `<taskprogress ... percent="12.34" .../>` line (`--stats-every`), else None.

    The percent is per task (ping, port scan, service scan...), so it restarts at each phase.
    """
    matches = _TASKPROGRESS.findall(line)
    if not matches:
        return None
    percent = float(matches[-1])
    return percent if 0.0 <= percent <= 100.0 else None
