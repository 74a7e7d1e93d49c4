"""Parse masscan's JSON output (`masscan -oJ -`) and its status line on stderr.

masscan writes one record per line between `[` and `]`, with the separating commas on lines of
their own (1.3.2) or trailing the record (older releases, which also end with `{finished: 1}`).
A killed run has no closing `]`. So the document is never parsed as a whole: each line that
holds a JSON object is decoded on its own (`json.loads`, never eval) and the rest is skipped.

Not covered: banner records (`--banners`, entries with a `service` and no `status`), records
split across lines (masscan does not write them), and the `timestamp` field.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

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


def parse_masscan_json(data: bytes) -> list[MasscanFinding]:
    """Findings from masscan `-oJ` output, in output order. Never raises: lines that are not a
    well-formed record (brackets, commas, `{finished: 1}`, a line cut by a kill) are skipped."""
    findings: list[MasscanFinding] = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        candidate = line.strip().rstrip(",").rstrip()
        if not candidate.startswith("{"):
            continue
        try:
            record = json.loads(candidate)
        except (ValueError, RecursionError):
            # RecursionError: the C decoder gives up on deeply nested arrays instead of a JSON error.
            continue
        findings.extend(_findings_of(record))
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
