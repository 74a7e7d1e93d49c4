"""Trace the syscalls the appliance makes, or check a seccomp profile against them.

The command behind scripts/trace-syscalls (see it for usage). Tracing runs every workload of
seccomp_workloads under a profile whose default action is SCMP_ACT_LOG and collects the kernel's
audit records (seccomp_audit); checking does the same with the given profile's default action
turned into SCMP_ACT_LOG, so only what the profile would refuse is reported; enforcing runs the
workloads under the profile as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from seccomp_audit import AuditCollector, syscall_names
from seccomp_workloads import PHASES, Lab, Phase, Setup, Tracer, lab

ENOSYS = 38
# Trace profile: log every syscall; clone3 answers ENOSYS as in the real profile (glibc then
# falls back to clone, which the trace must see).
LOG_EVERYTHING: dict[str, Any] = {
    "defaultAction": "SCMP_ACT_LOG",
    "syscalls": [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}],
}


def log_profile(profile: Path) -> dict[str, Any]:
    """The profile with every syscall it does not allow logged instead of refused."""
    data: dict[str, Any] = json.loads(profile.read_text())
    data["defaultAction"] = "SCMP_ACT_LOG"
    data.pop("defaultErrnoRet", None)
    return data


def run_phases(args: argparse.Namespace, the_lab: Lab, profile: Path, collector: AuditCollector | None) -> list[Phase]:
    phases = []
    for name in args.phase or list(PHASES):
        mode, run = PHASES[name]
        tracer = Tracer(args.strace, name)
        phase = Phase(name)
        started = time.monotonic()
        with collector.phase_of(name) if collector else contextlib.nullcontext():
            try:
                phase.problems = run(mode, Setup(args.image, the_lab, profile, tracer))
            finally:
                tracer.detach()
        phase.seconds = time.monotonic() - started
        phases.append(phase)
    return phases


def report(args: argparse.Namespace, collector: AuditCollector | None, phases: list[Phase]) -> int:
    for phase in phases:
        print(f"phase {phase.name}: {'FAILED' if phase.problems else 'ok'} in {phase.seconds:.1f}s", file=sys.stderr)
        for problem in phase.problems:
            print(f"  {problem}", file=sys.stderr)
    failed = any(phase.problems for phase in phases)
    if collector is None:
        return 1 if failed else 0
    names = syscall_names()
    seen: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for phase_name, observations in collector.phases.items():
        for (nr, caller), count in observations.calls.items():
            seen[names.get(nr, f"nr{nr}")][phase_name][caller] += count
    label = "not allowed by the profile" if args.check else "logged"
    print(f"{len(seen)} syscalls {label} ({collector.records} audit records):")
    for syscall in sorted(seen):
        callers = Counter[str]()
        for per_phase in seen[syscall].values():
            callers.update(per_phase)
        who = ", ".join(re.sub(r"^/(usr|opt/venv)/bin/", "", caller) for caller, _ in callers.most_common())
        print(f"  {syscall:20} {','.join(sorted(seen[syscall])):55} {who}")
    if args.json:
        args.json.write_text(json.dumps(seen, indent=1, sort_keys=True) + "\n")
    return 1 if failed or (args.check and seen) else 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="trace-syscalls", description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="mcp-scanner-appliance:latest")
    parser.add_argument("--lab-image", default="mcp-scanner-lab-target:latest")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--check", type=Path, metavar="PROFILE", help="log (not refuse) what PROFILE misses; report it")
    how.add_argument("--enforce", type=Path, metavar="PROFILE", help="run every workload under PROFILE as it is")
    parser.add_argument("--phase", action="append", choices=list(PHASES), help="default: every phase, in order")
    parser.add_argument("--strace", type=Path, metavar="DIR", help="also strace each phase's container into DIR")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write syscall -> phase -> caller counts")
    args = parser.parse_args()
    if args.strace:
        args.strace.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        if args.enforce:
            profile, collector = args.enforce.resolve(), None
        else:
            profile, collector = Path(scratch) / "log.json", AuditCollector()
            profile.write_text(json.dumps(log_profile(args.check) if args.check else LOG_EVERYTHING))
            collector.start()
        try:
            with lab(args.lab_image) as the_lab:
                phases = run_phases(args, the_lab, profile, collector)
        finally:
            if collector is not None:
                collector.stop()
    return report(args, collector, phases)


if __name__ == "__main__":
    sys.exit(main())
