"""Start-up stages: where the way from the kernel starting the process to a transport that can
read its first message went, written once as the "ready" log line (README: Start-up).

Stages, each from the end of the one before:
- `interpreter`: the kernel starting the process (/proc/self/stat starttime, 10 ms steps) to
  the first line of appliance code (appliance/__init__.py takes the time);
- `imports`: to the end of the imports `serve` needs before it can answer;
- `settings_policy`: settings, self-check, policy, scanner probes, job recovery: what is done
  before the transport opens;
- `transport_ready`: until the transport can read its first message.

"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from appliance import ENTERED_BOOTTIME, ENTERED_MONOTONIC

log = logging.getLogger(__name__)

STAGES = ("interpreter", "imports", "settings_policy", "transport_ready")


def process_age_at_entry(stat: Path = Path("/proc/self/stat")) -> float | None:
    """Seconds from the kernel starting this process to ENTERED, or None without /proc."""
    try:
        text = stat.read_text(encoding="ascii")
    except OSError:
        return None
    # Field 2 (comm) is in parentheses and may hold spaces; starttime is field 22.
    fields = text[text.rindex(")") + 2 :].split()
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return max(ENTERED_BOOTTIME - started, 0.0)


class StartupClock:
    """Stage durations in milliseconds, each stage measured from the end of the one before."""

    def __init__(self, *, since: float = ENTERED_MONOTONIC, interpreter: float | None = None) -> None:
        self._last = since
        self.stages: dict[str, float] = {}
        if interpreter is not None:
            self.stages["interpreter"] = round(interpreter * 1000, 1)
        self.deferred: list[str] = []
        self.reported = False

    @classmethod
    def of_process(cls) -> StartupClock:
        """The clock of `appliance serve`: from the kernel's start of this process."""
        return cls(interpreter=process_age_at_entry())

    def mark(self, stage: str) -> None:
        """End `stage` now (the next one starts here)."""
        if stage not in STAGES:
            raise ValueError(f"unknown start-up stage {stage!r}")
        now = time.monotonic()
        self.stages[stage] = round((now - self._last) * 1000, 1)
        self._last = now

    def report(self, transport: str) -> None:
        """End `transport_ready` and write the one "ready" line (later calls do nothing)."""
        if self.reported:
            return
        self.mark("transport_ready")
        self.reported = True
        ordered = {stage: self.stages[stage] for stage in STAGES if stage in self.stages}
        log.info("ready", extra={"startup_ms": ordered, "transport": transport, "deferred": list(self.deferred)})
