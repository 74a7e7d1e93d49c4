"""A stored job as a file other tools read: JSON (the job record) or nmap XML (nmap jobs).

nmap XML is the stored raw output when that is a whole nmap document (it is what nmap wrote,
byte for byte); otherwise (raw output cut to `limits.stored_raw_bytes`, not stored, or a scan
stopped mid-way) a document is generated from the parsed result. The generated one carries
what the result models keep - hosts, status, addresses, hostnames, ports with state, reason,
service, product, version, extra info and script output - and follows nmap.dtd's element order,
so nmap's own tools and parsers (ndiff, python-libnmap, appliance.parsers.nmap_xml) read it.

Ports the compact result only counts (`port_counts`: closed, filtered, ...) become
`<extraports state=... count=...>`, so a parser reads back the same counts.

Not covered in a generated document: what the result never kept (OS detection, traceroute,
which closed or filtered port was which, timing, host scripts).
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from typing import Any
from xml.etree import ElementTree as ET

from appliance import __version__
from appliance.errors import ValidationError
from appliance.jobs.model import Job
from appliance.parsers.nmap_xml import parse_nmap_xml
from appliance.results import NmapHost

FORMATS = ("json", "nmap-xml")
# The version of nmap's XML output format that the generated document follows (nmap 7.x).
XML_OUTPUT_VERSION = "1.05"
# Characters XML 1.0 cannot carry even as references; ElementTree would write them as they are.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def export_json(job: Job) -> bytes:
    return json.dumps(job.to_record(), indent=2).encode() + b"\n"


def export_nmap_xml(job: Job, raw: bytes | None) -> bytes:
    """The job as an nmap XML document; refused for jobs of other tools."""
    if job.tool != "nmap_scan":
        raise ValidationError(
            f"scan {job.scan_id} is a {job.tool} scan; nmap XML exists for nmap_scan scans only",
            rule="export_format_unsupported",
            recovery_suggestion=f"Export it as JSON: appliance jobs export {job.scan_id} --format json",
        )
    if raw and parse_nmap_xml(raw).complete:
        return raw
    hosts = [NmapHost.model_validate(host) for host in (job.result or {}).get("hosts") or []]
    return generate_nmap_xml(job, hosts)


def _text(value: float) -> tuple[str, str]:
    """An epoch as nmap writes it: seconds, and the same as ctime-like text in UTC."""
    return str(int(value)), time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(value))


def _addrtype(address: str) -> str:
    try:
        return f"ipv{ipaddress.ip_address(address).version}"
    except ValueError:
        return "mac"  # the parser keeps a non-IP address only when a host has no IP


def _attrs(**values: str | None) -> dict[str, str]:
    """Attributes without the unset ones; text a scanner sent is made XML-safe (U+FFFD)."""
    return {name: _NOT_XML.sub("\ufffd", value) for name, value in values.items() if value is not None}


def _host(parent: ET.Element, host: NmapHost, started: str, ended: str) -> None:
    node = ET.SubElement(parent, "host", starttime=started, endtime=ended)
    # The result keeps no reasons for a host's status; nmap.dtd requires the attributes.
    ET.SubElement(node, "status", state=host.status, reason="unknown", reason_ttl="0")
    ET.SubElement(node, "address", addr=host.address, addrtype=_addrtype(host.address))
    names = ET.SubElement(node, "hostnames")
    for name in host.hostnames:
        ET.SubElement(names, "hostname", name=name, type="user")
    ports = ET.SubElement(node, "ports")
    listed: dict[str, int] = {}
    for port in host.ports:
        listed[port.state] = listed.get(port.state, 0) + 1
    for state, count in sorted(host.port_counts.items()):
        if count > listed.get(state, 0):  # nmap.dtd: extraports come before the ports
            ET.SubElement(ports, "extraports", state=state, count=str(count - listed.get(state, 0)))
    for port in host.ports:
        item = ET.SubElement(ports, "port", protocol=port.protocol, portid=str(port.port))
        ET.SubElement(item, "state", state=port.state, reason=port.reason or "unknown", reason_ttl="0")
        if port.service is not None:
            service = _attrs(name=port.service, product=port.product, version=port.version, extrainfo=port.extrainfo)
            ET.SubElement(item, "service", {**service, "method": "table", "conf": "3"})
        for script in port.scripts:
            ET.SubElement(item, "script", id=script.id, output=script.output)


def generate_nmap_xml(job: Job, hosts: list[NmapHost]) -> bytes:
    """An nmap XML document of `hosts`, with the job's argv, times and end state."""
    started, started_text = _text(job.created_at)
    ended_at = job.finished_at if job.finished_at is not None else job.updated_at
    ended, ended_text = _text(ended_at)
    root = ET.Element(
        "nmaprun",
        _attrs(
            scanner="nmap",
            args=" ".join(job.argv),
            start=started,
            startstr=started_text,
            version="unknown",
            xmloutputversion=XML_OUTPUT_VERSION,
        ),
    )
    root.append(
        ET.Comment(f" generated by mcp-scanner-appliance {__version__} from the stored result of {job.scan_id} ")
    )
    ET.SubElement(root, "verbose", level="0")
    ET.SubElement(root, "debugging", level="0")
    for host in hosts:
        _host(root, host, started, ended)
    stats = ET.SubElement(root, "runstats")
    up = sum(1 for host in hosts if host.status == "up")
    elapsed = f"{max(ended_at - job.created_at, 0.0):.2f}"
    summary = f"scan {job.scan_id} {job.state}; {len(hosts)} host(s), {up} up"
    exit_state = "success" if job.state == "completed" else "error"
    finished: dict[str, Any] = {"time": ended, "timestr": ended_text, "summary": summary, "elapsed": elapsed}
    if exit_state == "error":
        finished["errormsg"] = f"the scan ended {job.state}; this document holds the findings it kept"
    ET.SubElement(stats, "finished", {**finished, "exit": exit_state})
    ET.SubElement(stats, "hosts", up=str(up), down=str(len(hosts) - up), total=str(len(hosts)))
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE nmaprun>\n{body}\n'.encode()
