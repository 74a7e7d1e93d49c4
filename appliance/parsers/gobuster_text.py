"""Parse gobuster 3.5 result lines (run with `--no-progress --no-color -q`) into findings.

Even in quiet mode gobuster starts every result with `\\r` and the erase-line escape `ESC[2K`
(it clears its progress line first), and a terminal run adds colour codes; both are stripped
before matching. Lines seen from real runs:

    dir:   /admin                (Status: 301) [Size: 0] [--> /admin/]
    vhost: Found: admin.lab.internal Status: 200 [Size: 14]
    dns:   Found: mail.lab.internal [10.250.9.20,10.250.9.21]     (the list only with -i)

Not covered: the redirect target in dir mode, CNAMEs (`dns -c`: the bracket holds a name, which
is dropped because it is not an address), and modes other than dir, vhost and dns (fuzz, s3,
gcs, tftp). Banner, progress and error lines simply do not match and are skipped, and so is a
line longer than the runner's piece size (no result line is that long). `GobusterStream` is fed
the runner's lines as they arrive; `parse_gobuster` feeds it a whole output.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any, Literal

from appliance.parsers.lines import WholeLines, output_lines
from appliance.results import GobusterFinding

# CSI sequences (colours, erase-line) and the two-byte ESC forms; enough for what gobuster emits.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")

# `-e` prints the full URL instead of the path; `-n` drops the status, `--hide-length` the size.
# ASCII digits, and a bounded count of them, so int() below can never reject a match.
_DIR = re.compile(
    r"^(?P<value>(?:/|https?://)\S*)"
    r"(?:\s+\(Status:\s*(?P<status>\d{3})\))?"
    r"(?:\s+\[Size:\s*(?P<size>\d{1,15})\])?",
    re.ASCII,
)
# 3.5 prints `Status: 200` without the parentheses dir mode uses; accept both spellings.
_VHOST = re.compile(
    r"^Found:\s+(?P<value>\S+)\s+\(?Status:\s*(?P<status>\d{3})\)?(?:\s+\[Size:\s*(?P<size>\d{1,15})\])?",
    re.ASCII,
)
_DNS = re.compile(r"^Found:\s+(?P<value>\S+)(?:\s+\[(?P<addresses>[^\]]*)\])?\s*$", re.ASCII)


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text else None


def _dir_finding(line: str) -> GobusterFinding | None:
    match = _DIR.match(line)
    if match is None:
        return None
    status, size = _int_or_none(match["status"]), _int_or_none(match["size"])
    return GobusterFinding(kind="path", value=match["value"], status=status, size=size)


def _vhost_finding(line: str) -> GobusterFinding | None:
    match = _VHOST.match(line)
    if match is None:
        return None
    status, size = _int_or_none(match["status"]), _int_or_none(match["size"])
    return GobusterFinding(kind="vhost", value=match["value"], status=status, size=size)


def _dns_finding(line: str) -> GobusterFinding | None:
    match = _DNS.match(line)
    if match is None:
        return None
    addresses: list[str] = []
    for item in (match["addresses"] or "").split(","):
        try:
            addresses.append(str(ipaddress.ip_address(item.strip())))
        except ValueError:
            continue  # a CNAME target or an empty list, not an address
    return GobusterFinding(kind="subdomain", value=match["value"], addresses=addresses)


_LINE_PARSERS: dict[str, Callable[[str], GobusterFinding | None]] = {
    "dir": _dir_finding,
    "vhost": _vhost_finding,
    "dns": _dns_finding,
}


class GobusterStream:
    """gobuster's stdout for one mode, fed line by line (the runner's line callback): one per run."""

    def __init__(self, mode: Literal["dir", "vhost", "dns"]) -> None:
        self._parse_line = _LINE_PARSERS[mode]
        self._lines = WholeLines()
        self._findings: list[GobusterFinding] = []

    def feed(self, line: bytes) -> bool:
        """One line without its newline. True when it held at least one result."""
        whole = self._lines.whole(line)
        if whole is None:
            return False
        before = len(self._findings)
        # splitlines also splits on the bare `\r` that precedes each result and each progress redraw.
        for raw in _ANSI.sub("", whole.decode("utf-8", errors="replace")).splitlines():
            finding = self._parse_line(raw.strip())
            if finding is not None:
                self._findings.append(finding)
        return len(self._findings) > before

    def fields(self) -> dict[str, Any]:
        """`{"findings": [...]}` in output order, for `GobusterResult`."""
        return {"findings": list(self._findings)}


def parse_gobuster(data: bytes, mode: Literal["dir", "vhost", "dns"]) -> list[GobusterFinding]:
    """Findings from a whole gobuster stdout for `mode`, in output order, through `GobusterStream`.
    Never raises on bad output: lines that are not results are skipped."""
    stream = GobusterStream(mode)
    for line in output_lines(data):
        stream.feed(line)
    findings: list[GobusterFinding] = stream.fields()["findings"]
    return findings
