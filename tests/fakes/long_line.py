#!/usr/bin/env python3
"""Writes one 200,000 byte line, then a short one."""

import sys

sys.stdout.buffer.write(b"x" * 200_000 + b"tail\nnext\n")
