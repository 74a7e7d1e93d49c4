"""`appliance audit verify`: walk one chain through audit files (oldest first) and name the first
line that was edited, removed, reordered or cut off.

What it cannot see on its own: lines removed at the end (the rest is still a valid chain) -
`expect` (a head logged or scraped earlier) catches that; and, without a key, a file rewritten
from scratch (anyone can compute a SHA-256 chain).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.audit.chain import (
    CHAIN_CONTINUES,
    CHAIN_START,
    GENESIS,
    HMAC_MODE,
    SHA256_MODE,
    STDERR_CHAIN,
    Chainer,
    Head,
    NotChained,
    Sealed,
    line_digest,
    unseal,
)


class KeyNeeded(Exception):
    """The chain is keyed and no key was given: nothing can be said about it."""


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    seq: int | None
    what: str


@dataclass
class Report:
    files: list[str]
    lines: int = 0
    head: Head | None = None
    modes: list[str] = field(default_factory=list)
    continues_from: Head | None = None
    restarts: list[dict[str, Any]] = field(default_factory=list)
    problem: Problem | None = None

    @property
    def intact(self) -> bool:
        return self.problem is None

    def as_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "intact": self.intact,
            "files": self.files,
            "lines_verified": self.lines,
            "head": None if self.head is None else str(self.head),
            "chain_mode": sorted(set(self.modes)),
            "continues_from": None if self.continues_from is None else str(self.continues_from),
            "restarts": self.restarts,
        }
        if self.problem is not None:
            problem = self.problem
            shown.update(file=problem.file, line=problem.line, seq=problem.seq, problem=problem.what)
        return shown


class _Failed(Exception):
    def __init__(self, what: str, seq: int | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.seq = seq


class _Walk:
    """The state of the walk: the head so far and the chainer of the current chain."""

    def __init__(self, chainer: Chainer, expect: Head | None, report: Report) -> None:
        self.given = chainer
        self.chainer = chainer
        self.expect = expect
        self.expect_seen = False
        self.report = report
        self.previous_raw: bytes | None = None

    def _segment(self, sealed: Sealed, number: int) -> None:
        """Take the mode and key of a chain from its opening line; a key given must be its key."""
        mode, key_id = sealed.record.get("chain_mode"), sealed.record.get("key_id")
        if mode == HMAC_MODE:
            if self.given.key is None:
                raise KeyNeeded(f"line {number} opens a chain keyed with key id {key_id}: give --key-file")
            if key_id != self.given.key_id:
                raise _Failed(
                    f"key mismatch: this chain was written with key id {key_id}, "
                    f"the key given has key id {self.given.key_id}",
                    sealed.seq,
                )
            self.chainer = self.given
        elif mode == SHA256_MODE:
            if self.given.key is not None:
                raise _Failed(
                    "an unkeyed (sha256) chain opens here although a key was given: the file was rewritten "
                    "without the key, or the appliance ran without it",
                    sealed.seq,
                )
            self.chainer = Chainer(None)
        else:
            raise _Failed(f"unknown chain_mode {mode!r}", sealed.seq)
        self.report.modes.append(str(mode))

    def _previous(self, sealed: Sealed, number: int, where: str) -> Head:
        """The head this line must follow."""
        head = self.report.head
        if sealed.event == CHAIN_START:
            if sealed.seq != 1:
                raise _Failed("a chain_start line whose seq is not 1", sealed.seq)
            if self.previous_raw is not None:
                # A stderr sink's chain follows no line: each process's lines in a container log
                # are a chain of their own.
                linked = sealed.record.get("previous_line_sha256")
                unlinked = linked is None and sealed.record.get("reason") == STDERR_CHAIN
                if not unlinked and linked != line_digest(self.previous_raw):
                    raise _Failed(
                        "a new chain starts here but names another line before it than the one there: "
                        "lines before it were removed",
                        sealed.seq,
                    )
                self.report.restarts.append({"file": where, "line": number, "reason": sealed.record.get("reason")})
            self._segment(sealed, number)
            return Head(0, GENESIS)
        if sealed.event == CHAIN_CONTINUES:
            chain, seq = sealed.record.get("previous_chain"), sealed.record.get("previous_seq")
            if not isinstance(chain, str) or type(seq) is not int:
                raise _Failed("a chain_continues line without previous_seq and previous_chain", sealed.seq)
            link = Head(seq, chain)
            if head is None:
                self.report.continues_from = link
            elif link != head:
                raise _Failed(
                    f"this file continues seq {link.seq}, but the line before it ends the chain at seq {head.seq}: "
                    "a file is missing or the files are out of order (give them oldest first)",
                    sealed.seq,
                )
            self._segment(sealed, number)
            return link
        if head is None:
            raise _Failed(
                "the first line neither starts a chain nor continues one: give the earlier files too (oldest first)",
                sealed.seq,
            )
        return head

    def line(self, lines: Sequence[bytes], number: int, where: str) -> None:
        """Check line `number` (1-based) of `lines`, the lines of file `where`."""
        raw = lines[number - 1]
        try:
            sealed = unseal(raw)
        except NotChained as exc:
            raise _Failed(f"not a chain line ({exc}): an edited or foreign line") from exc
        previous = self._previous(sealed, number, where)
        expected = previous.seq + 1
        if sealed.seq < expected:
            raise _Failed(f"seq {sealed.seq} where {expected} was expected: lines reordered or repeated", sealed.seq)
        if sealed.seq > expected:
            rest = itertools.islice(lines, number, None)
            later = next((n for n, other in enumerate(rest, number + 1) if _seq_of(other) == expected), None)
            if later is not None:
                what = f"seq {sealed.seq} where {expected} was expected; it is at line {later}: lines reordered"
            else:
                what = f"seq {sealed.seq} where {expected} was expected: lines {expected}..{sealed.seq - 1} removed"
            raise _Failed(what, sealed.seq)
        if self.chainer.link(previous.chain, sealed.canonical) != sealed.chain:
            raise _Failed("the chain value does not match the line: the line was edited", sealed.seq)
        self.report.head = Head(sealed.seq, sealed.chain)
        self.report.lines += 1
        self.previous_raw = raw
        if self.expect is not None and self.report.head == self.expect:
            self.expect_seen = True


def _seq_of(raw: bytes) -> int | None:
    try:
        return unseal(raw).seq
    except NotChained:
        return None


def verify(paths: Sequence[Path], chainer: Chainer, expect: Head | None = None) -> Report:
    """Verify `paths` (oldest first) as one chain; raise KeyNeeded, OSError for a file not read."""
    report = Report([str(path) for path in paths])
    walk = _Walk(chainer, expect, report)
    number, where = 0, ""
    for path in paths:
        where = str(path)
        data = path.read_bytes()
        lines = data.split(b"\n")
        torn = lines[-1] != b""  # the piece after the last newline: empty unless the file was cut
        if not torn:
            lines.pop()
        number = 0
        try:
            for number in range(1, len(lines) + 1):
                walk.line(lines, number, where)
            if torn:
                raise _Failed("the file ends inside a line (no newline): it was cut")
        except _Failed as failed:
            report.problem = Problem(where, number, failed.seq, failed.what)
            return report
    if expect is not None and not walk.expect_seen:
        head = report.head
        if head is None or head.seq < expect.seq:
            ends = "no line" if head is None else f"seq {head.seq}"
            what = f"truncated: the chain ends at {ends}, the expected head is seq {expect.seq}: lines cut off the end"
        else:
            what = f"no line with seq {expect.seq} has the expected chain value: the chain was rewritten"
        report.problem = Problem(where, number, None if head is None else head.seq, what)
    return report


def parse_head(text: str) -> Head:
    """`SEQ:HASH` as logged and exported; raise ValueError otherwise."""
    seq, _, chain = text.partition(":")
    if not seq.isdigit() or int(seq) < 1 or len(chain) != 64 or chain.strip("0123456789abcdef"):
        raise ValueError(f"{text!r}: write SEQ:HASH, e.g. 42:{'ab' * 32}")
    return Head(int(seq), chain)
