#!/usr/bin/env python3
"""Leave an orphan behind: a grandchild in its own session (out of reach of a group kill) that
exits shortly after this process, so it becomes a zombie of whoever inherits it."""

import os
import sys
import time

pid = os.fork()
if pid == 0:
    os.setsid()
    time.sleep(0.3)
    os._exit(0)
print(pid, flush=True)
sys.exit(0)
