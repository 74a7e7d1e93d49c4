"""Scanner processes as the host sees them: the proof that a call did (or did not) start one."""

from __future__ import annotations

import psutil


def scanner_processes(marker: str) -> list[psutil.Process]:
    """Live (non-zombie) processes whose command line contains `marker`."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(marker in part for part in cmdline):
            found.append(proc)
    return found
