"""Write seccomp/appliance.json plus what trixie's glibc 2.41 and Python 3.13 call beyond it.

`.venv/bin/python -m bench.python313.seccomp OUT`. Found with
`scripts/trace-syscalls --image mcp-scanner-appliance:py313 --check seccomp/appliance.json`
(every workload, both privilege modes): glibc 2.39+ calls fstat itself where 2.36 used
newfstatat (every program), python3.13 calls open, and 3.12+'s asyncio watches children through
pidfd_open (a refusal would quietly fall back to a thread per child, which is not what 3.13 would
ship with). Only for measuring the throwaway image; the real profile is unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.compose import REPO

EXTRA = ["fstat", "open", "pidfd_open"]


def main() -> None:
    profile = json.loads((REPO / "seccomp" / "appliance.json").read_text())
    allowed = {name for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW" for name in rule["names"]}
    if allowed & set(EXTRA):
        raise SystemExit(f"seccomp/appliance.json already allows {sorted(allowed & set(EXTRA))}: update {__file__}")
    profile["syscalls"].append(
        {"comment": "glibc 2.41, Python 3.13 (bench/python313 only)", "names": EXTRA, "action": "SCMP_ACT_ALLOW"}
    )
    Path(sys.argv[1]).write_text(json.dumps(profile, indent=2) + "\n")


if __name__ == "__main__":
    main()
