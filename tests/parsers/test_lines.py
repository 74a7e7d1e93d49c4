"""output_lines and WholeLines: the runner's line contract, checked against the runner's own splitter."""

from __future__ import annotations

import anyio
import pytest

from appliance.parsers.lines import WholeLines, ends_line, output_lines
from appliance.runner import MAX_LINE_BYTES, _Capture

M = MAX_LINE_BYTES


async def runner_lines(data: bytes, chunk: int) -> list[bytes]:
    """What the runner's line callback sees for `data` read in `chunk`-byte reads."""
    seen: list[bytes] = []

    async def on_line(line: bytes) -> None:
        seen.append(line)

    capture = _Capture(len(data) + 1, on_line)
    for start in range(0, len(data), chunk):
        await capture.feed(data[start : start + chunk])
    await capture.flush()
    return seen


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"one\ntwo\n", id="two-lines"),
        pytest.param(b"one\ntwo", id="no-final-newline"),
        pytest.param(b"\n\n\nx\n", id="empty-lines"),
        pytest.param(b"a" * (M - 1) + b"\nb\n", id="just-below-the-piece-size"),
        pytest.param(b"a" * M + b"\nb\n", id="exactly-the-piece-size"),
        pytest.param(b"a" * (M + 1) + b"\nb\n", id="one-over"),
        pytest.param(b"a" * (2 * M + 5) + b"\n" + b"c" * (2 * M), id="long-lines-without-final-newline"),
    ],
)
@pytest.mark.parametrize("chunk", [1000, M, 3 * M])
def test_output_lines_splits_like_the_runner(data: bytes, chunk: int) -> None:
    assert list(output_lines(data)) == anyio.run(runner_lines, data, chunk)


def test_a_piece_shorter_than_the_piece_size_ends_its_line() -> None:
    assert ends_line(b"")
    assert ends_line(b"a" * (M - 1))
    assert not ends_line(b"a" * M)


def test_whole_lines_drops_every_piece_of_a_long_line_and_keeps_the_next() -> None:
    lines = WholeLines()
    pieces = list(output_lines(b"short\n" + b"x" * (2 * M + 3) + b"\nnext\n"))

    assert [lines.whole(piece) for piece in pieces] == [b"short", None, None, None, b"next"]
