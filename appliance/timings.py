"""Where one admitted call's time went on the server: the "call timings" log line.

Each stage is a sum of `time.perf_counter()` differences taken on the call path (a few marks per
call, no profiler). The stages do not overlap, so their sum is the server's share of the call and
the benchmark attributes the rest of what its client measured to the SDK and the transport:

- `checks`: argument validation, scope policy, limits and admission until the job exists, less
  the store write that creates it;
- `store`: job store writes on the call path (create, running, findings so far, finish);
- `queue`: waiting for a concurrency slot;
- `spawn`: from asking for the scanner process to having it running;
- `scanner`: the process running until it exited and its pipes were drained, less the parsing
  done meanwhile (the stream is fed as lines arrive);
- `parse`: parser work (stream feeding while the scanner runs, and the result it yields);
- `result`: the final result model, its diff against the previous scan and its JSON.

Not covered: the MCP layer's own work around the service call (request and response models,
the tool result's text), which the benchmark measures apart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

STAGES = ("checks", "store", "queue", "spawn", "scanner", "parse", "result")


@dataclass
class CallTimings:
    """Seconds per stage of one call, added to as the call goes."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds

    def milliseconds(self) -> dict[str, float]:
        return {stage: round(value * 1000.0, 3) for stage, value in self.seconds.items()}

    def write(self, *, request_id: str, scan_id: str, tool: str, outcome: str) -> None:
        """The one "call timings" line of an admitted call, once its job's final state is stored."""
        log.info(
            "call timings",
            extra={
                "request_id": request_id,
                "scan_id": scan_id,
                "tool": tool,
                "outcome": outcome,
                "timings_ms": self.milliseconds(),
            },
        )
