#!/usr/bin/env python3
"""Spawns a grandchild, writes both pids, prints "ready", then stays or exits.

argv: PIDFILE GRANDCHILD_PIDFILE MODE, MODE one of
  stay              sleep forever; the grandchild shares our pipes
  stay-ignore-term  the same, but both ignore SIGTERM
  exit              exit 0 at once; the grandchild (stdio on /dev/null) is left behind
"""

import os
import signal
import subprocess
import sys
import time


def write_pid(path: str, pid: int) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(str(pid))
    os.replace(path + ".tmp", path)


pidfile, grandchild_pidfile, mode = sys.argv[1:4]
if mode == "stay-ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
stdio = subprocess.DEVNULL if mode == "exit" else None
grandchild = subprocess.Popen(["/bin/sleep", "600"], stdin=stdio, stdout=stdio, stderr=stdio)
write_pid(grandchild_pidfile, grandchild.pid)
write_pid(pidfile, os.getpid())
print("ready", flush=True)
if mode == "exit":
    os._exit(0)  # no wait(): the grandchild must outlive us
while True:
    time.sleep(600)
