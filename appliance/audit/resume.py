"""Where a chain goes on: from the last lines of an existing audit file, read from its end.

Start-up reads a few kilobytes at the end of the current file, never the whole file: the last
line continues the chain when it verifies after the line before it (or opens a chain itself);
anything else starts a new chain whose `chain_start` line names the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from appliance.audit.chain import CHAIN_CONTINUES, CHAIN_START, GENESIS, Chainer, Head, NotChained, line_digest, unseal

# Audit lines are a few hundred bytes; a line longer than this at the end is not ours.
TAIL_BYTES = 64 * 1024
MAX_TAIL_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Resume:
    """Continue after `head`, or (head None) start a chain for `reason`.

    `previous_line` is the digest of the line the new chain follows (None in an empty file);
    `torn` says the file does not end with a newline, which the next write must add first;
    `link_from` names the file whose head this (new, empty) file continues.
    """

    head: Head | None
    reason: str | None = None
    previous_line: str | None = None
    torn: bool = False
    link_from: str | None = None


def last_lines(fd: int, size: int, count: int = 2) -> tuple[list[bytes], bool]:
    """The last `count` lines (or fewer) of the file open at `fd`, and whether its last byte is
    not a newline. Reads backwards from `size`, at most MAX_TAIL_BYTES."""
    want = TAIL_BYTES
    while True:
        start = max(size - want, 0)
        data = os.pread(fd, size - start, start)
        torn = bool(data) and not data.endswith(b"\n")
        lines = data.split(b"\n")
        if not torn:
            lines.pop()  # the empty piece after the last newline
        if start == 0 or len(lines) > count or want >= MAX_TAIL_BYTES:
            complete = lines if start == 0 else lines[1:]  # the first piece may be cut
            return complete[-count:], torn
        want *= 4


def previous_value(last: bytes, before: bytes | None) -> tuple[str, int]:
    """The chain value and seq the line `last` follows, from itself or the line before it."""
    sealed = unseal(last)
    if sealed.event == CHAIN_START and sealed.seq == 1:
        return GENESIS, 0
    if sealed.event == CHAIN_CONTINUES:
        chain, seq = sealed.record.get("previous_chain"), sealed.record.get("previous_seq")
        if not isinstance(chain, str) or type(seq) is not int:
            raise NotChained("a chain_continues line without previous_chain and previous_seq")
        return chain, seq
    if before is None:
        raise NotChained("no line before it")
    earlier = unseal(before)
    return earlier.chain, earlier.seq


def resume_from(fd: int, size: int, chainer: Chainer, name: str) -> Resume:
    """How a writer goes on after the file open at `fd` (`size` bytes; `name` for the reason)."""
    if size == 0:
        return Resume(None, f"{name} is empty")
    lines, torn = last_lines(fd, size)
    if not lines:
        return Resume(None, f"{name} ends with a line longer than {MAX_TAIL_BYTES} bytes", torn=torn)
    last = lines[-1]
    digest = line_digest(last)
    if torn:
        return Resume(None, f"the last line of {name} is incomplete (no newline)", digest, torn=True)
    try:
        sealed = unseal(last)
        previous, previous_seq = previous_value(last, lines[0] if len(lines) > 1 else None)
    except NotChained as exc:
        return Resume(None, f"the last line of {name} is not a chain line: {exc}", digest)
    if sealed.seq != previous_seq + 1 or chainer.link(previous, sealed.canonical) != sealed.chain:
        return Resume(
            None,
            f"the last line of {name} (seq {sealed.seq}) does not verify with this appliance's "
            f"{chainer.mode} chain (another key, or an edited line)",
            digest,
        )
    return Resume(Head(sealed.seq, sealed.chain))
