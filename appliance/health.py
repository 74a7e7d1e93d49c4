"""Liveness, readiness and health: what the sidecar reports, computed from the running appliance.

Readiness answers "should traffic come here?"; health answers "what is wrong?". Neither ever
shows a secret. Resource figures use the container's cgroup limits when there are any, since
/proc/meminfo inside a container shows the host's memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

from appliance.audit import AuditSink
from appliance.config import Settings
from appliance.policy.store import PolicyStore
from appliance.runner import RunLimits, run

Status = Literal["healthy", "degraded", "unhealthy"]
# A scanner's --version answers in milliseconds; a hung binary must not hold start-up.
VERSION_PROBE = RunLimits(timeout_seconds=5, output_cap_bytes=64 * 1024)
CGROUP_V2_MEMORY = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current"))
CGROUP_V1_MEMORY = (
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
    Path("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)
# cgroup v1 reports "no limit" as a huge page-aligned number rather than "max".
UNLIMITED_BYTES = 1 << 60


@dataclass(frozen=True)
class ScannerStatus:
    path: str
    present: bool
    version: str | None
    reason: str | None = None


async def probe_scanner(path: Path, version_args: tuple[str, ...]) -> ScannerStatus:
    """Run the scanner's version command once through the one runner."""
    if not os.access(path, os.X_OK):
        return ScannerStatus(str(path), False, None, "binary missing or not executable")
    result = await run([str(path), *version_args], VERSION_PROBE)
    text = (result.stdout or result.stderr).decode(errors="replace")
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not line:
        return ScannerStatus(str(path), False, None, f"no version output (exit {result.exit_code})")
    return ScannerStatus(str(path), True, line)


def cgroup_memory_percent() -> float | None:
    for limit_path, usage_path in (CGROUP_V2_MEMORY, CGROUP_V1_MEMORY):
        try:
            limit_text = limit_path.read_text().strip()
            usage = int(usage_path.read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text == "max" or int(limit_text) >= UNLIMITED_BYTES:
            return None
        return 100.0 * usage / int(limit_text)
    return None


def _existing_ancestor(path: Path) -> Path:
    """`path` or its nearest existing parent: a missing audit folder is reported, not a crash (500)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


class Health:
    def __init__(
        self,
        settings: Settings,
        store: PolicyStore,
        audit: AuditSink,
        scanners: Mapping[str, ScannerStatus],
        *,
        breakers: Callable[[], Mapping[str, Mapping[str, Any]]],
        draining: Callable[[], bool],
        privilege_check: Callable[[], Mapping[str, Any]],
        tokens: Callable[[], Mapping[str, Any]] | None = None,
        jobs: Callable[[], Mapping[str, Any]] | None = None,
        tls: Callable[[], Mapping[str, Any]] | None = None,
        fleet: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.audit = audit
        self.scanners = scanners
        self._breakers = breakers
        self._draining = draining
        self._privilege_check = privilege_check
        self._tokens = tokens
        self._jobs = jobs
        self._tls = tls
        self._fleet = fleet
        psutil.cpu_percent(interval=None)  # primes the counter: later calls measure since the last one

    def unavailable_tools(self) -> dict[str, str]:
        policy = self.store.current.policy
        reasons: dict[str, str] = {}
        for tool, status in self.scanners.items():
            if not getattr(policy.tools, tool).enabled:
                reasons[tool] = "disabled by the policy"
            elif not status.present:
                reasons[tool] = f"scanner unavailable: {status.reason}"
            elif tool == "masscan_scan" and self.settings.privilege_mode != "raw":
                reasons[tool] = "needs raw mode (CAP_NET_RAW); this deployment runs in connect mode"
        return reasons

    def unexpectedly_unavailable(self) -> dict[str, str]:
        """Enabled tools whose scanner is missing although this mode could run it: these degrade health.

        A tool the policy disables, or masscan in connect mode, is unavailable by design.
        """
        policy = self.store.current.policy
        by_design_absent = set() if self.settings.privilege_mode == "raw" else {"masscan_scan"}
        return {
            tool: f"scanner unavailable: {status.reason}"
            for tool, status in self.scanners.items()
            if getattr(policy.tools, tool).enabled and not status.present and tool not in by_design_absent
        }

    def readiness(self) -> tuple[bool, list[str]]:
        reasons: list[str] = []
        if self._draining():
            reasons.append("shutting down")
        if len(self.unavailable_tools()) == len(self.scanners):
            reasons.append("no tool is usable")
        if not self.audit.writable():
            reasons.append("audit sink is not writable")  # which one: /healthz (guarded), not /readyz
        if self._jobs is not None and self._jobs().get("problem"):
            reasons.append("job store refuses writes")  # new scans are refused; /healthz says why
        return not reasons, reasons

    def report(self) -> dict[str, Any]:
        ready, not_ready = self.readiness()
        snapshot = self.store.current
        memory = cgroup_memory_percent()
        memory_source = "cgroup"
        if memory is None:
            memory, memory_source = psutil.virtual_memory().percent, "host"
        disk_path = _existing_ancestor(self.settings.audit_path.parent if self.settings.audit_path else Path("/"))
        disk = psutil.disk_usage(str(disk_path)).percent
        cpu = psutil.cpu_percent(interval=None)
        breakers = {tool: dict(state) for tool, state in self._breakers().items()}
        privileges = dict(self._privilege_check())
        checks: dict[str, Any] = {
            "ready": {"ok": ready, "reasons": not_ready},
            "cpu": {"percent": cpu, "threshold": self.settings.health_cpu_percent},
            "memory": {
                "percent": round(memory, 1),
                "source": memory_source,
                "threshold": self.settings.health_memory_percent,
            },
            "disk": {"percent": disk, "path": str(disk_path), "threshold": self.settings.health_disk_percent},
            "scanners": {tool: vars(status) for tool, status in self.scanners.items()},
            "tools_unavailable": self.unavailable_tools(),
            "breakers": breakers,
            "audit": self.audit.describe(),
            "policy": {
                "source": str(snapshot.source),
                "insecure_allow_loopback": snapshot.policy.scope.insecure_allow_loopback,
            },
            "privileges": privileges,
            "tools_unexpectedly_unavailable": self.unexpectedly_unavailable(),
        }
        if self._tokens is not None:
            checks["auth"] = dict(self._tokens())
        if self._jobs is not None:
            checks["store"] = dict(self._jobs())
        checks["tls"] = {"enabled": False} if self._tls is None else dict(self._tls())
        if self._fleet is not None:
            checks["fleet"] = dict(self._fleet())
        status: Status = "healthy"
        overloaded = (
            cpu > self.settings.health_cpu_percent
            or memory > self.settings.health_memory_percent
            or disk > self.settings.health_disk_percent
        )
        auth = checks.get("auth", {})
        token_file_broken = bool(auth.get("bad_lines") or auth.get("file_problem"))
        breaker_open = any(b.get("state") != "closed" for b in breakers.values())
        audit_broken = checks["audit"]["rotation"]["problem"] is not None
        if overloaded or breaker_open or checks["tools_unexpectedly_unavailable"] or token_file_broken or audit_broken:
            status = "degraded"
        if not ready or privileges.get("ok") is False:
            status = "unhealthy"
        return {"status": status, "mode": self.settings.privilege_mode, "checks": checks}
