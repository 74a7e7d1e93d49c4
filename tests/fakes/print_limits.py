#!/usr/bin/env python3
"""Prints its CPU, NOFILE and CORE limits as JSON.

argv: EXPECTED_CPU EXPECTED_NOFILE. The parent sets the limits with prlimit a moment after
exec, so first wait (2 s at most) until they match; a runner that never sets them still fails.
"""

import json
import resource
import sys
import time

expected = {
    "cpu": (int(sys.argv[1]),) * 2,
    "nofile": (int(sys.argv[2]),) * 2,
    "core": (0, 0),
}


def current() -> dict[str, tuple[int, int]]:
    return {
        "cpu": resource.getrlimit(resource.RLIMIT_CPU),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "core": resource.getrlimit(resource.RLIMIT_CORE),
    }


deadline = time.monotonic() + 2.0
while current() != expected and time.monotonic() < deadline:
    time.sleep(0.005)
print(json.dumps(current()))
