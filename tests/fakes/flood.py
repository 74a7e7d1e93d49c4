#!/usr/bin/env python3
"""Writes 50 MB to stdout, in 1 MiB blocks without newlines."""

import sys

block = b"x" * (1024 * 1024)
for _ in range(50):
    sys.stdout.buffer.write(block)
sys.stdout.buffer.flush()
