"""The runner's line contract, for parsers fed while a scanner runs.

The runner hands a line callback each line of a pipe with its newline removed, and a line longer
than `MAX_LINE_BYTES` in `MAX_LINE_BYTES` pieces. A piece shorter than that therefore always ends
a line; a piece of exactly that size may be followed by more of the same line. (A line whose
length is an exact multiple of the size looks the same as a cut one: the one ambiguity, and
scanners do not write such lines.) `output_lines` splits captured output the same way, so a
parser fed after the run takes the very path it takes during the run.
"""

from __future__ import annotations

from collections.abc import Iterator

from appliance.runner import MAX_LINE_BYTES


def output_lines(data: bytes) -> Iterator[bytes]:
    """`data` as the runner's line callback would have seen it: lines without newlines, long ones in pieces."""
    lines = data.split(b"\n")
    last = lines.pop()  # the text after the last newline; the runner flushes it when non-empty
    for line in lines:
        for start in range(0, len(line) or 1, MAX_LINE_BYTES):
            yield line[start : start + MAX_LINE_BYTES]
    for start in range(0, len(last), MAX_LINE_BYTES):
        yield last[start : start + MAX_LINE_BYTES]


def ends_line(piece: bytes) -> bool:
    """True when `piece` is known to end its line (it is shorter than the runner's piece size)."""
    return len(piece) < MAX_LINE_BYTES


class WholeLines:
    """Drops the pieces of over-long lines, for parsers whose records are one short line each.

    masscan records and gobuster results are far below the piece size; a line that is not must be
    something else (a flood, a garbled write), and a piece of it parsed alone could read as a
    record that was never written.
    """

    def __init__(self) -> None:
        self._inside_long_line = False

    def whole(self, piece: bytes) -> bytes | None:
        """The line when `piece` is a whole line, else None (a piece of a longer line)."""
        inside, self._inside_long_line = self._inside_long_line, not ends_line(piece)
        return None if inside or self._inside_long_line else piece
