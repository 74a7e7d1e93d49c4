"""Parse masscan's JSON output (`masscan -oJ -`) and its status line on stderr.

masscan writes one record per line between `[` and `]`, with the separating commas on lines of
their own (1.3.2) or trailing the record (older releases, which also end with `{finished: 1}`).
A killed run has no closing `]`. So the document is never parsed as a whole: each line that
holds a JSON object is decoded on its own (`json.loads`, never eval) as it arrives
(`MasscanStream`, fed the runner's lines) and the rest is skipped.

Not covered: banner records (`--banners`, entries with a `service` and no `status`), records
split across lines (masscan does not write them; an over-long line is dropped), and the
`timestamp` field.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from appliance.parsers.lines import WholeLines, output_lines
from appliance.results import MasscanFinding

# "rate:  0.10-kpps, 15.23% done,   0:00:34 remaining, found=0"; the percent is padded with spaces.
_PERCENT_DONE = re.compile(rb"(\d{1,3}(?:\.\d+)?)% done")


def _optional_int(value: Any) -> int | None:
    # bool is an int subclass; JSON true is not a TTL.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _findings_of(record: Any) -> list[MasscanFinding]:
    if not isinstance(record, dict) or not isinstance(record.get("ip"), str):
        return []
    try:
        ip = str(ipaddress.ip_address(record["ip"]))
    except ValueError:
        return []
    ports = record.get("ports")
    findings: list[MasscanFinding] = []
    for entry in ports if isinstance(ports, list) else []:
        if not isinstance(entry, dict):
            continue
        port = _optional_int(entry.get("port"))
        status, proto, reason = entry.get("status"), entry.get("proto"), entry.get("reason")
        if port is None or not 0 <= port <= 65535 or not isinstance(status, str):
            continue
        findings.append(
            MasscanFinding(
                ip=ip,
                port=port,
                protocol=proto if isinstance(proto, str) else "tcp",
                status=status,
                reason=reason if isinstance(reason, str) else None,
                ttl=_optional_int(entry.get("ttl")),
            )
        )
    return findings


class MasscanStream:
    """masscan's `-oJ` stdout fed line by line (the runner's line callback): one stream per run.

    Never raises: lines that are not a well-formed record (brackets, commas, `{finished: 1}`, a
    line cut by a kill) are skipped.
    """

    def __init__(self) -> None:
        self._lines = WholeLines()
        self._findings: list[MasscanFinding] = []

    def feed(self, line: bytes) -> bool:
        """One line without its newline. True when it held at least one port record."""
        whole = self._lines.whole(line)
        if whole is None:
            return False
        before = len(self._findings)
        for text in whole.decode("utf-8", errors="replace").splitlines():
            self._findings.extend(_findings_of(_record(text)))
        return len(self._findings) > before

    def fields(self) -> dict[str, Any]:
        """`{"findings": [...]}` in output order, for `MasscanResult`."""
        return {"findings": list(self._findings)}


def _record(line: str) -> Any:
    candidate = line.strip().rstrip(",").rstrip()
    if not candidate.startswith("{"):
        return None
    try:
        return json.loads(candidate)
    except (ValueError, RecursionError):
        # RecursionError: the C decoder gives up on deeply nested arrays instead of a JSON error.
        return None


def parse_masscan_json(data: bytes) -> list[MasscanFinding]:
    """Findings from a whole masscan `-oJ` output, in output order, through `MasscanStream`."""
    stream = MasscanStream()
    for line in output_lines(data):
        stream.feed(line)
    findings: list[MasscanFinding] = stream.fields()["findings"]
    return findings


def masscan_progress(line: bytes) -> float | None:
    """Percent done from a chunk of masscan's stderr status output, else None.

    masscan redraws its status with carriage returns, so one `\\n`-terminated chunk holds many
    updates; the last one is the current state.
    """
    matches = _PERCENT_DONE.findall(line)
    if not matches:
        return None
    percent = float(matches[-1])
    return percent if 0.0 <= percent <= 100.0 else None
