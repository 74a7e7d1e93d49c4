"""Figure 6: what the job store costs.

a. The store's part of a synchronous call, in-process, on the compose volume: a container of the
   image with compose.yaml's flags and a named Docker volume at /var/lib/appliance (compose's
   `appliance-data`) runs bench/jobs_harness.py with the appliance's own JobManager, AuditSink
   (a file on the container's /tmp tmpfs) and SqliteJobStore: `calls` times the bookkeeping of one
   completed synchronous call (admissible, create, running, result fields, changes_since,
   finish: the record and an nmap XML in one commit), each step and each store method timed
   with time.perf_counter inside the container (and the whole with time.thread_time).
b. Reads with many stored jobs: the same harness stores `stored_jobs` jobs through that same
   call path (two principals, several targets, realistic compact nmap results and raw XML, one
   minute apart), then the appliance (HTTP, compose's flags, on that volume) answers `get_scan`
   and `list_scans` (limit 20) over streamable HTTP with the SDK client, timed with
   time.perf_counter in this process. For contrast, `get_scan` against a store holding only the
   job it asks for (measured first, on the same volume). Bytes per job: the SQLite file and its
   WAL, as the appliance's connection left them, divided by the jobs.

The scanner never runs here: the results are parsed from an XML this module writes (a version
scan of a few hosts, two variants so that every rescan has a diff), so no packet goes anywhere.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import yaml

from bench.clients import error_type, http_session
from bench.docker import BENCH_LABEL, DOCKER, HEALTH_PORT, HTTP_PORT, OPENER, BenchError, docker, log, wait_ready
from bench.lab import Lab
from bench.stats import percentile, summary_ms

HARNESS = Path(__file__).with_name("jobs_harness.py")
DATA_DIR = "/var/lib/appliance"  # compose.yaml mounts the `appliance-data` volume here
# The benchmark's bearer token is the appliance's single token: principal "default".
PRINCIPALS = ("default", "other")
TARGETS = ("10.77.0.0/28", "10.77.0.16/28", "10.77.0.32/28", "10.77.0.48/28", "web.lab.internal")
SECONDS_BETWEEN_JOBS = 60.0
LIST_LIMIT = 20
ROLES = ("jobs-calls", "jobs-one", "jobs-http-one", "jobs-fill", "jobs-http")
# 10,000 calls' bookkeeping with 10 KB of raw output each: tens of seconds on a loaded machine.
HARNESS_TIMEOUT_SECONDS = 900

# A version scan's services (what Debian 12 lab hosts answer); hosts rotate through them.
SERVICES = (
    (22, "ssh", "OpenSSH", "9.2p1 Debian 2+deb12u3", "Debian; protocol 2.0"),
    (80, "http", "nginx", "1.22.1", None),
    (443, "http", "nginx", "1.22.1", "SSL"),
    (3306, "mysql", "MySQL", "8.0.36", None),
    (5432, "postgresql", "PostgreSQL DB", "15.6", None),
    (6379, "redis", "Redis key-value store", "7.0.15", None),
    (8080, "http", "Apache Tomcat", "10.1.16", None),
)
CLOSED = (21, 25, 110, 139, 445, 3389, 8443)
PORTS = ",".join(str(p) for p in sorted({s[0] for s in SERVICES} | set(CLOSED)))


@dataclass(frozen=True)
class JobsParams:
    store_calls: int
    store_warmup: int
    stored_jobs: int
    reads: int
    xml_hosts: int = 4  # about 10 KB of XML: a version scan of a /28 with four hosts up


def nmap_xml(hosts: int, variant: int) -> str:
    """An `nmap -sT -sV -oX -` report of `hosts` lab hosts. Variant 1 differs from variant 0 as a
    rescan would: one more open port on the first host, a newer nginx on the second."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        "<!DOCTYPE nmaprun>",
        f'<nmaprun scanner="nmap" args="nmap -sT -sV -p {PORTS} -oX - 10.77.0.0/28" start="1795627221" '
        'version="7.93" xmloutputversion="1.05">',
        f'<scaninfo type="connect" protocol="tcp" numservices="{len(PORTS.split(","))}" services="{PORTS}"/>',
    ]
    for index in range(hosts):
        offered = [s for n, s in enumerate(SERVICES) if (n + index) % 3 != 0]
        lines.append('<host starttime="1795627221" endtime="1795627230"><status state="up" reason="syn-ack"/>')
        lines.append(f'<address addr="10.77.0.{index + 2}" addrtype="ipv4"/><hostnames></hostnames><ports>')
        for port, name, product, version, extra in offered:
            if variant == 1 and index == 1 and product == "nginx":
                version = "1.24.0"
            extra_attr = f' extrainfo="{extra}"' if extra else ""
            lines.append(
                f'<port protocol="tcp" portid="{port}"><state state="open" reason="syn-ack" reason_ttl="0"/>'
                f'<service name="{name}" product="{product}" version="{version}"{extra_attr} method="probed" '
                f'conf="10"><cpe>cpe:/a:{product.split()[0].lower()}:{product.split()[0].lower()}:{version}</cpe>'
                "</service></port>"
            )
        for port in CLOSED:
            if variant == 1 and index == 0 and port == 8443:
                lines.append(
                    '<port protocol="tcp" portid="8443"><state state="open" reason="syn-ack" reason_ttl="0"/>'
                    '<service name="https-alt" method="table" conf="3"/></port>'
                )
                continue
            lines.append(
                f'<port protocol="tcp" portid="{port}"><state state="closed" reason="conn-refused" reason_ttl="0"/>'
                '<service name="unknown" method="table" conf="3"/></port>'
            )
        lines.append('</ports><times srtt="412" rttvar="210" to="100000"/></host>')
    lines.append(
        '<runstats><finished time="1795627230" elapsed="9.12" exit="success"/>'
        f'<hosts up="{hosts}" down="{16 - hosts}" total="16"/></runstats></nmaprun>'
    )
    return "\n".join(lines) + "\n"


def _summary(seconds: list[float]) -> dict[str, float | int]:
    """summary_ms plus the 95th percentile (the figure's goal is stated at the median and p95)."""
    return {**summary_ms(seconds), "p95": round(percentile(seconds, 95) * 1000, 3)}


def _with_volume(args: list[str], volume: str) -> list[str]:
    """`docker run` arguments with the named volume mounted where compose mounts it."""
    assert args[0] == "run"
    return [args[0], "--volume", f"{volume}:{DATA_DIR}", *args[1:]]


def _harness(lab: Lab, role: str, volume: str, request: dict[str, Any]) -> dict[str, Any]:
    """Run bench/jobs_harness.py in a container of the image (compose's flags, the volume)."""
    name = lab.name(role)
    args = lab.appliance_run(
        name, {}, interactive=True, entrypoint="/opt/venv/bin/python", command=["-c", HARNESS.read_text()]
    )
    with (lab.log_dir / f"{name}.log").open("w") as errors:
        try:
            done = subprocess.run(
                [DOCKER, *_with_volume(args, volume)],
                input=json.dumps({**request, "data_dir": DATA_DIR}),
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                timeout=HARNESS_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"the job store harness ({role}) ran over {HARNESS_TIMEOUT_SECONDS} s") from exc
    docker("rm", "--force", name, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        raise BenchError(f"the job store harness ({role}) failed ({done.returncode}); see {name}.log")
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def _volume(lab: Lab, role: str) -> str:
    name = lab.name(role)
    docker("volume", "create", "--label", f"{BENCH_LABEL}={lab.run_id}", name)
    return name


def _write_policy(lab: Lab, stored_jobs: int) -> str:
    """The lab policy with retention that keeps every stored job (the defaults keep 1,000 per
    principal: the appliance's sweep at start would otherwise delete most of them)."""
    policy = yaml.safe_load((lab.policy_dir / "scope.yaml").read_text())
    policy["limits"]["concurrency"]["per_principal"]["stored_jobs"] = stored_jobs
    policy.setdefault("retention", {})["max_count"] = max(stored_jobs, 10_000)
    path = lab.policy_dir / "jobs.yaml"
    path.write_text(yaml.safe_dump(policy))
    path.chmod(0o644)
    return path.name


def stored_jobs_seen(address: str) -> int:
    """The jobs the appliance's store holds, from its /healthz (after its retention sweep ran)."""
    request = urllib.request.Request(
        f"http://{address}:{HEALTH_PORT}/healthz", headers={"Host": f"appliance:{HEALTH_PORT}"}
    )
    try:
        with OPENER.open(request, timeout=10) as response:
            body = json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise BenchError(f"/healthz of the appliance did not answer: {exc}") from exc
    return int(body["checks"]["store"]["jobs"])


def _start_appliance(lab: Lab, role: str, volume: str, policy: str) -> str:
    name = lab.name(role)
    docker(*_with_volume(lab.appliance_run(name, {}, policy=policy, detach=True), volume))
    return wait_ready(name, lab.network)


async def _timed_calls(
    lab: Lab, address: str, calls: list[tuple[str, dict[str, Any]]], check: Callable[[str, dict[str, Any]], bool]
) -> tuple[dict[str, list[float]], int]:
    """Each (tool, arguments) once in one MCP session over HTTP; seconds per tool, failed calls."""
    seconds: dict[str, list[float]] = {}
    failures = 0
    async with http_session(f"http://{address}:{HTTP_PORT}/mcp", lab.token, 4) as client:
        await client.call_tool(*calls[0])  # the first call also opens the session's connection
        for tool, arguments in calls:
            started = time.perf_counter()
            result = await client.call_tool(tool, arguments)
            seconds.setdefault(tool, []).append(time.perf_counter() - started)
            if error_type(result) is not None or not check(tool, result.structured_content or {}):
                failures += 1
    return seconds, failures


def _answer_ok(tool: str, body: dict[str, Any]) -> bool:
    if tool == "get_scan":
        return body.get("status") == "completed" and bool(body.get("hosts"))
    return len(body.get("scans", [])) == LIST_LIMIT or body.get("next_cursor") is None


def _store_calls(per_call: list[dict[str, float]]) -> dict[str, Any]:
    """Steps are the keys without a dot; `store.*` times fall inside them and `cpu.total` spans them."""
    steps = [key for key in per_call[0] if "." not in key]
    totals = [sum(call[key] for key in steps) for call in per_call]

    def column(key: str) -> dict[str, float | int]:
        return _summary([call[key] for call in per_call])

    return {
        "calls": len(per_call),
        "total_ms": _summary(totals),
        "total_cpu_ms": column("cpu.total"),
        "steps_ms": {key: column(key) for key in steps},
        "store_methods_ms": {
            key.removeprefix("store."): column(key) for key in per_call[0] if key.startswith("store.")
        },
    }


async def measure(lab: Lab, params: JobsParams) -> dict[str, Any]:
    xml = [nmap_xml(params.xml_hosts, variant) for variant in (0, 1)]
    base = {"xml": xml, "ports": PORTS}
    calls_volume = _volume(lab, "jobs-calls")
    stored_volume = _volume(lab, "jobs-stored")
    try:
        sync = await anyio.to_thread.run_sync(
            lambda: _harness(
                lab,
                "jobs-calls",
                calls_volume,
                {
                    **base,
                    "mode": "calls",
                    "calls": params.store_calls,
                    "warmup": params.store_warmup,
                    "target": TARGETS[0],
                    "owner": PRINCIPALS[0],
                },
            )
        )
        log(f"jobs: {len(sync['per_call'])} calls' store bookkeeping timed")
        policy = _write_policy(lab, params.stored_jobs)
        populate = {**base, "mode": "populate", "seconds_between_jobs": SECONDS_BETWEEN_JOBS}
        one = await anyio.to_thread.run_sync(
            lambda: _harness(
                lab,
                "jobs-one",
                stored_volume,
                {**populate, "jobs": 1, "targets": list(TARGETS[:1]), "principals": list(PRINCIPALS[:1])},
            )
        )
        lone_id = one["ids"][PRINCIPALS[0]][0]
        address = await anyio.to_thread.run_sync(_start_appliance, lab, "jobs-http-one", stored_volume, policy)
        one_reads, one_failures = await _timed_calls(
            lab, address, [("get_scan", {"scan_id": lone_id})] * params.reads, _answer_ok
        )
        docker("rm", "--force", lab.name("jobs-http-one"))
        filled = await anyio.to_thread.run_sync(
            lambda: _harness(
                lab,
                "jobs-fill",
                stored_volume,
                {**populate, "jobs": params.stored_jobs - 1, "targets": list(TARGETS), "principals": list(PRINCIPALS)},
            )
        )
        log(f"jobs: {filled['jobs']} jobs stored in {filled['seconds']:.1f} s")
        address = await anyio.to_thread.run_sync(_start_appliance, lab, "jobs-http", stored_volume, policy)
        mine = sorted(filled["ids"][PRINCIPALS[0]])  # the lone job is among them
        picks = random.Random(7).choices(mine, k=params.reads)  # noqa: S311 - a sample, not a secret
        cursors = random.Random(8).choices(mine[LIST_LIMIT:], k=params.reads)  # noqa: S311
        calls: list[tuple[str, dict[str, Any]]] = []
        for scan_id, cursor in zip(picks, cursors, strict=True):
            calls += [
                ("get_scan", {"scan_id": scan_id}),
                ("list_scans", {"limit": LIST_LIMIT}),
                ("list_scans", {"limit": LIST_LIMIT, "cursor": cursor}),
            ]
        reads, failures = await _timed_calls(lab, address, calls, _answer_ok)
        seen = await anyio.to_thread.run_sync(stored_jobs_seen, address)
        docker("rm", "--force", lab.name("jobs-http"))
    finally:
        # A volume in use by a container (even a stopped one) cannot be removed: containers first.
        docker("rm", "--force", *(lab.name(role) for role in ROLES), check=False)
        docker("volume", "rm", "--force", calls_volume, stored_volume, check=False)
    stored = filled["jobs"]
    list_seconds = reads["list_scans"]
    on_disk = filled["db_bytes"] + filled["wal_bytes"]
    return {
        "store_calls": {**_store_calls(sync["per_call"]), "warmup": params.store_warmup},
        "raw_xml_bytes": [len(x.encode()) for x in xml],
        "stored_jobs": stored,
        "jobs_seen_by_appliance": seen,
        "principals": len(PRINCIPALS),
        "fill_seconds": round(filled["seconds"], 1),
        "get_scan_ms": _summary(reads["get_scan"]),
        # Every other list call starts at a random cursor: a page deep in the list.
        "list_scans_first_page_ms": _summary(list_seconds[0::2]),
        "list_scans_cursor_page_ms": _summary(list_seconds[1::2]),
        "get_scan_one_job_store_ms": _summary(one_reads["get_scan"]),
        "bytes_per_job": round(on_disk / stored),
        "record_bytes_per_job": round(filled["record_bytes"] / stored),
        "raw_bytes_per_job": round(filled["raw_bytes"] / stored),
        "db_bytes": filled["db_bytes"],
        "wal_bytes": filled["wal_bytes"],
        # A store that lost jobs (a retention sweep at start, say) would flatter the read figures.
        "unexpected_errors": failures + one_failures + (seen != stored),
    }
