"""Rotation of the audit file by renaming: FILE -> FILE.1 -> ... -> FILE.N (the oldest goes)."""

from __future__ import annotations

import os
from pathlib import Path


def rotated(path: Path, index: int) -> Path:
    """The name of the `index`-th older file (1 is the newest after the current one)."""
    return path.with_name(f"{path.name}.{index}")


def rotate(path: Path, keep: int) -> None:
    """Shift the kept files up by one and rename `path` to FILE.1; FILE.`keep` is replaced.

    Raises OSError on the first rename that fails: the files already shifted stay where they
    went (no line is lost, one name may be missing) and `path` is still the current file.
    """
    for index in range(keep - 1, 0, -1):
        try:
            os.rename(rotated(path, index), rotated(path, index + 1))
        except FileNotFoundError:
            continue  # fewer files than `keep` so far
    os.rename(path, rotated(path, 1))
