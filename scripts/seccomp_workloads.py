"""The appliance's workloads for scripts/trace-syscalls: every way it is run, in containers.

Each phase starts the appliance as it is deployed (connect mode: UID 65532, no capabilities;
raw mode: setpriv from root to 65532 keeping NET_RAW; both read-only, no-new-privileges) under
the profile being traced or checked, drives it and checks every answer, so a trace only counts
runs that worked. Traffic goes only to the lab target container `lab()` starts on an internal
network it creates, addressed by its exact IP or its alias web.lab.internal; the policy every
phase runs under allows that one address (/32) and nothing else. The refusals are aimed at a
second container `lab()` starts, outside that scope.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from appliance.compat import create_mcp_http_client

REPO = Path(__file__).resolve().parent.parent
# The shipped default policy; the workloads run it with the allow list pinned to the lab target.
DEFAULT_POLICY = REPO / "appliance" / "data" / "policies" / "scope.yaml"
# Where compose.yaml mounts its policy folder; the workloads mount theirs there too.
CONTAINER_POLICY_DIR = "/etc/appliance/policies"
POLICY_PATH = f"{CONTAINER_POLICY_DIR}/scope.yaml"
LAB_PORT = 8080
LAB_ALIAS = "web.lab.internal"
MCP_PORT = 8080
HEALTH_PORT = 9090
APPLIANCE_ALIAS = "appliance"
HTTP_HOST_HEADER = f"{APPLIANCE_ALIAS}:{MCP_PORT}"
TOKEN = "trace-" + secrets.token_hex(16)
APPLIANCE = "/opt/venv/bin/appliance"
PYTHON = "/opt/venv/bin/python"
# The job store driven by the image's Python (see the file) in the image's data folder, where
# compose.yaml mounts a named volume (without one the store falls back to /tmp/appliance-data).
STORE_WORKLOAD = REPO / "scripts" / "seccomp_store_workload.py"
DATA_DIR = "/var/lib/appliance"
READY_TIMEOUT_SECONDS = 30  # the HTTP server imports the SDK and starts uvicorn: ~2 s here
STOP_TIMEOUT_SECONDS = 10  # docker stop's grace period; the appliance drains in ~1 s
CALL_TIMEOUT_SECONDS = 150  # the slowest call, the demo's full -sV of the busybox target, ~90 s
DOCKER_TIMEOUT_SECONDS = 120  # any one docker CLI command

TMPFS = "/tmp:rw,noexec,nosuid,nodev,size=16m"  # noqa: S108 (a tmpfs inside the container)
COMMON = ["--read-only", "--tmpfs", TMPFS, "--security-opt", "no-new-privileges"]
LIMITS = ["--pids-limit", "256", "--memory", "512m", "--cpus", "1"]
CONNECT_MODE = ["--user", "65532:65532", "--cap-drop", "ALL", "-e", "APPLIANCE_PRIVILEGE_MODE=connect"]
RAW_MODE = [
    "--user", "0:0", "--cap-drop", "ALL",
    "--cap-add", "NET_RAW", "--cap-add", "SETUID", "--cap-add", "SETGID", "--cap-add", "SETPCAP",
    "-e", "APPLIANCE_PRIVILEGE_MODE=raw", "--entrypoint", "/usr/bin/setpriv",
]  # fmt: skip
SETPRIV_TO_APPLIANCE = [
    "--reuid=65532", "--regid=65532", "--clear-groups", "--inh-caps=-all,+net_raw",
    "--ambient-caps=-all,+net_raw", "--bounding-set=-all,+net_raw", "/usr/bin/tini", "--", APPLIANCE,
]  # fmt: skip
# compose.yaml's raw-mode HEALTHCHECK: `docker exec` starts as root with the container's
# capabilities, so the probe drops to 65532 with none first.
RAW_EXEC_PREFIX = [
    "/usr/bin/setpriv", "--reuid=65532", "--regid=65532", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
]  # fmt: skip


def executable(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"trace-syscalls: {name} not found on PATH")
    return path


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [executable("docker"), *args], capture_output=True, text=True, timeout=DOCKER_TIMEOUT_SECONDS, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:2])} ... exited {done.returncode}: {done.stderr.strip()}")
    return done


def docker_out(*args: str) -> str:
    return docker(*args).stdout.strip()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {READY_TIMEOUT_SECONDS}s waiting for {what}")
        time.sleep(0.05)


def container_ip(name: str, network: str) -> str:
    return docker_out("inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}', name)


def port_open(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((address, port)) == 0


@dataclass(frozen=True)
class Lab:
    network: str
    target_ip: str
    # A second lab container, outside the policy's scope: what the refusals are aimed at.
    bystander_ip: str
    # A folder holding scope.yaml: the default policy with the allow list pinned to target_ip/32.
    policy_dir: Path


def write_pinned_policy(folder: Path, target_ip: str) -> None:
    policy = yaml.safe_load(DEFAULT_POLICY.read_text())
    policy["scope"]["allow_networks"] = [f"{target_ip}/32"]
    folder.chmod(0o755)  # a bind mount: the container's UID 65532 reads it
    path = folder / "scope.yaml"
    path.write_text(yaml.safe_dump(policy))
    path.chmod(0o644)


@contextlib.contextmanager
def lab(lab_image: str) -> Iterator[Lab]:
    """An internal network (no route out) with the lab web server and a bystander on it, and a
    policy that allows the web server's address only; all removed on exit."""
    suffix = secrets.token_hex(4)
    network = f"seccomp-trace-{suffix}"
    target, bystander = f"seccomp-trace-target-{suffix}", f"seccomp-trace-bystander-{suffix}"
    hardened = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", lab_image]
    docker("network", "create", "--internal", network)
    try:
        docker("run", "-d", "--name", target, "--network", network, "--network-alias", LAB_ALIAS, *hardened)
        docker("run", "-d", "--name", bystander, "--network", network, *hardened)
        try:
            ip = container_ip(target, network)
            wait_until(lambda: port_open(ip, LAB_PORT), f"the lab target {ip}:{LAB_PORT}")
            with tempfile.TemporaryDirectory() as folder:
                write_pinned_policy(Path(folder), ip)
                yield Lab(network, ip, container_ip(bystander, network), Path(folder))
        finally:
            docker("rm", "-f", target, bystander, check=False)
    finally:
        docker("network", "rm", network, check=False)


class Tracer:
    """Optional strace of a phase's container: the arguments the audit records lack."""

    def __init__(self, directory: Path | None, phase: str) -> None:
        self.directory = directory
        self.phase = phase
        self.procs: list[subprocess.Popen[bytes]] = []

    def attach(self, container: str) -> None:
        """Attach to every process of the running container (and, with -f, their new children)."""
        if self.directory is None:
            return
        pids = docker_out("top", container, "-o", "pid").split()[1:]
        command = [executable("strace"), "-f", "-qq", "-o", str(self.directory / f"{self.phase}.strace")]
        for pid in pids:
            command += ["-p", pid]
        self.procs.append(subprocess.Popen(command))

    def detach(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)  # strace ends with the last traced process
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
        self.procs.clear()


@dataclass
class Setup:
    """What every phase shares: the image, the lab, the profile in use and the tracer."""

    image: str
    lab: Lab
    profile: Path
    tracer: Tracer


def run_args(mode: str, name: str, setup: Setup, extra: list[str], command: tuple[str, ...] = ("serve",)) -> list[str]:
    """`docker run` arguments of the appliance as deployed in `mode`, running `appliance COMMAND`."""
    mode_args = RAW_MODE if mode == "raw" else CONNECT_MODE
    tail = [*SETPRIV_TO_APPLIANCE, *command] if mode == "raw" else list(command)
    policy = ["-v", f"{setup.lab.policy_dir}:{CONTAINER_POLICY_DIR}:ro", "-e", f"APPLIANCE_POLICY_PATH={POLICY_PATH}"]
    return [
        *("--name", name, "--network", setup.lab.network, *COMMON, *LIMITS, *policy),
        *("--security-opt", f"seccomp={setup.profile}", *mode_args, *extra, setup.image, *tail),
    ]


# --- MCP calls -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    tool: str
    arguments: dict[str, Any]
    check: Callable[[dict[str, Any]], bool]
    expect_error: bool = False


def open_port_found(result: dict[str, Any]) -> bool:
    return any(p["port"] == LAB_PORT and p["state"] == "open" for h in result["hosts"] for p in h["ports"])


def found_admin(result: dict[str, Any]) -> bool:
    return any(finding["value"].strip("/") == "admin" for finding in result["findings"])


def refused(result: dict[str, Any]) -> bool:
    return result["rule"] is not None


def calls_for(mode: str, target: str, bystander: str) -> list[Call]:
    """Every tool mode the appliance offers in `mode`, each against the lab target (the refusals
    against the bystander, outside the scope)."""
    url = f"http://{target}:{LAB_PORT}/"
    calls = [
        Call("nmap_scan", {"target": target, "ports": f"{LAB_PORT},81"}, open_port_found),
        Call(
            "nmap_scan",
            # Intensity 0: the lab's busybox httpd matches no probe, and the full set takes 90 s.
            {
                "target": target,
                "ports": str(LAB_PORT),
                "scan_type": "version",
                "scripts": ["http-title"],
                "extra_args": ["--version-intensity", "0"],
            },
            open_port_found,
        ),
        Call("nmap_scan", {"target": target, "scan_type": "ping"}, lambda r: r["hosts"][0]["status"] == "up"),
        Call("nmap_scan", {"target": LAB_ALIAS, "ports": str(LAB_PORT)}, open_port_found),  # a DNS lookup first
        # A budget the scan cannot meet: the runner ends nmap's process group (SIGTERM, SIGKILL).
        Call(
            "nmap_scan",
            {"target": target, "ports": "1-40", "extra_args": ["--scan-delay", "1s"], "timeout_seconds": 2},
            lambda r: r["partial_reason"] == "timeout",
        ),
        Call("gobuster_scan", {"mode": "dir", "target": url}, found_admin),
        Call("gobuster_scan", {"mode": "vhost", "target": url, "wordlist": "subdomains"}, lambda r: "findings" in r),
        # Refused before any process starts: the bystander is outside the pinned scope.
        Call("nmap_scan", {"target": bystander}, lambda r: r["rule"] == "target_out_of_scope", expect_error=True),
    ]
    if mode == "raw":
        return [
            *calls,
            Call("nmap_scan", {"target": target, "ports": f"{LAB_PORT},81", "scan_type": "syn"}, open_port_found),
            Call(
                "masscan_scan",
                {"target": target, "ports": f"{LAB_PORT},81", "rate": 100},
                lambda r: any(f["port"] == LAB_PORT for f in r["findings"]),
            ),
        ]
    return [*calls, Call("masscan_scan", {"target": target, "ports": "80"}, refused, expect_error=True)]


TOOLS = {"nmap_scan", "masscan_scan", "gobuster_scan", "get_scan", "cancel_scan", "list_scans", "diff_scans"}
JOB_WAIT_SECONDS = 60  # get_scan's wait for a one-port connect scan that takes about a second


async def run_calls(client: Client, calls: list[Call]) -> list[str]:
    """Make the calls; return what went wrong (nothing, when every answer is as expected)."""
    tools = {tool.name for tool in (await client.list_tools()).tools}
    problems = [] if tools == TOOLS else [f"tools/list gave {tools}"]
    for call in calls:
        result = await client.call_tool(call.tool, call.arguments)
        content = result.structured_content or {}
        text = getattr(result.content[0], "text", "") if result.content else ""
        try:
            ok = result.is_error == call.expect_error and call.check(content)
        except (KeyError, IndexError, TypeError):
            ok = False
        if not ok:
            problems.append(f"{call.tool} {call.arguments}: {text[:300]}")
    return problems


async def follow_jobs(client: Client, target: str) -> list[str]:
    """The job tools over the store: a scan that returns before it ends (wait_seconds 0) followed
    with get_scan, a rescan and its diff, list_scans, and cancel_scan of a slow scan."""
    problems: list[str] = []

    async def call(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result = await client.call_tool(tool, arguments)
        if result.is_error or result.structured_content is None:
            text = getattr(result.content[0], "text", "") if result.content else ""
            problems.append(f"{tool} {arguments}: {text[:300]}")
            return {}
        return result.structured_content

    quick = {"target": target, "ports": str(LAB_PORT), "wait_seconds": 0}
    started = await call("nmap_scan", quick)
    if started and started["status"] not in ("queued", "running", "completed"):
        problems.append(f"nmap_scan with wait_seconds 0: status {started['status']}")
    if started.get("scan_id"):
        done = await call("get_scan", {"scan_id": started["scan_id"], "wait_seconds": JOB_WAIT_SECONDS})
        if done and not (done["status"] == "completed" and open_port_found(done)):
            problems.append(f"get_scan: {done.get('status')}, hosts {done.get('hosts')}")
    rescan = await call("nmap_scan", {**quick, "wait_seconds": JOB_WAIT_SECONDS})
    if rescan.get("scan_id"):
        diff = await call("diff_scans", {"scan_id": rescan["scan_id"]})
        if diff and diff["summary"] != "no changes":
            problems.append(f"diff_scans of an unchanged target: {diff['summary']}")
    listed = await call("list_scans", {"tool": "nmap_scan"})
    if listed and len(listed["scans"]) < 2:
        problems.append(f"list_scans: {listed['scans']}")
    slow = {"target": target, "ports": "1-40", "extra_args": ["--scan-delay", "1s"], "wait_seconds": 0}
    running = await call("nmap_scan", slow)
    if running.get("scan_id"):
        cancelled = await call("cancel_scan", {"scan_id": running["scan_id"]})
        if cancelled and cancelled["status"] != "cancelled":
            problems.append(f"cancel_scan: status {cancelled['status']}")
    return problems


# --- phases ----------------------------------------------------------------------------------------


def cli_phase(mode: str, setup: Setup) -> list[str]:
    """The operator commands an image user runs with `docker run`: version, policy validate, check."""
    problems = []
    check_args = json.dumps({"target": setup.lab.target_ip, "ports": str(LAB_PORT)})
    for command in (
        ("version",),
        ("policy", "validate", "/etc/appliance/scope.yaml"),
        ("check", "nmap_scan", f"--args-json={check_args}"),
        ("config", "show"),
    ):
        done = docker("run", "--rm", *run_args(mode, f"seccomp-trace-cli-{secrets.token_hex(3)}", setup, [], command))
        if done.returncode != 0:
            problems.append(f"appliance {command[0]} exited {done.returncode}: {done.stderr[-300:]}")
    return problems


async def _stdio_calls(mode: str, name: str, setup: Setup) -> list[str]:
    args = ["run", "-i", "--rm", *run_args(mode, name, setup, ["-e", "APPLIANCE_LOG_LEVEL=WARNING"])]
    params = StdioServerParameters(command=executable("docker"), args=args)
    async with Client(params, mode="legacy", read_timeout_seconds=CALL_TIMEOUT_SECONDS) as client:
        await asyncio.to_thread(setup.tracer.attach, name)
        problems = await run_calls(client, calls_for(mode, setup.lab.target_ip, setup.lab.bystander_ip))
        return problems + await follow_jobs(client, setup.lab.target_ip)


def stdio_phase(mode: str, setup: Setup) -> list[str]:
    """`docker run -i` with the MCP client on stdin/stdout; ends when the client closes stdin."""
    name = f"seccomp-trace-{mode}-stdio-{secrets.token_hex(3)}"
    try:
        return asyncio.run(_stdio_calls(mode, name, setup))
    finally:
        docker("rm", "-f", name, check=False)


@contextlib.asynccontextmanager
async def http_client(url: str) -> AsyncIterator[Client]:
    # The server's DNS-rebinding protection accepts listed Host headers only; the address is not
    # known before start, so the client names the appliance as compose's clients do.
    headers = {"Authorization": f"Bearer {TOKEN}", "Host": HTTP_HOST_HEADER}
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
    ):
        yield client


async def _http_calls(url: str, calls: list[Call], target: str) -> list[str]:
    async with http_client(url) as client:
        return await run_calls(client, calls) + await follow_jobs(client, target)


def http_get(url: str) -> int:
    # The sidecar answers listed Host headers only (DNS-rebinding protection), as the MCP port does.
    request = urllib.request.Request(url, headers={"Host": f"{APPLIANCE_ALIAS}:{HEALTH_PORT}"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (http:// to a container we started)
        response.read()
        return int(response.status)


def exec_in(name: str, mode: str, command: list[str]) -> subprocess.CompletedProcess[str]:
    """`docker exec` as a health check runs it (raw mode: drop to 65532 with no capabilities)."""
    return docker("exec", name, *(RAW_EXEC_PREFIX if mode == "raw" else []), *command, check=False)


def operator_cli(name: str, mode: str) -> list[str]:
    """`appliance jobs` through `docker exec` on the running appliance's store, as the README shows:
    list, show (with the raw output), export as JSON and nmap XML, a purge that only counts."""
    done = exec_in(name, mode, [APPLIANCE, "jobs", "list", "--json"])
    if done.returncode != 0:
        return [f"jobs list exited {done.returncode}: {done.stderr[-300:]}"]
    scans = json.loads(done.stdout)["scans"]
    nmap = [scan["scan_id"] for scan in scans if scan["tool"] == "nmap_scan" and scan["status"] == "completed"]
    if not nmap:
        return [f"jobs list shows no completed nmap scan: {scans}"]
    problems = []
    for command in (
        ["show", nmap[0]],
        ["show", nmap[0], "--raw"],
        ["export", nmap[0], "--format", "json"],
        ["export", nmap[0], "--format", "nmap-xml"],
        ["purge", "--older-than", "1"],  # without --yes: counts, deletes nothing
    ):
        if (done := exec_in(name, mode, [APPLIANCE, "jobs", *command])).returncode != 0:
            problems.append(f"jobs {' '.join(command)} exited {done.returncode}: {done.stderr[-300:]}")
    return problems


def http_phase(mode: str, setup: Setup) -> list[str]:
    """HTTP transport, the sidecar, health checks, the operator CLI, the demo client, a reload (SIGHUP),
    `docker stop`.

    Deployed as compose.yaml does it: the policy folder bind-mounted (as in every phase), the job
    store on a new named volume at the image's data folder, the sidecar on 0.0.0.0, the audit trail
    in a file on the tmpfs. (The stdio phases run as a plain `docker run -i --rm`: no volume, so the
    store takes its fallback folder on /tmp.)
    """
    name = f"seccomp-trace-{mode}-http-{secrets.token_hex(3)}"
    volume = f"{name}-data"
    extra = [
        *("-v", f"{volume}:{DATA_DIR}"),
        *("-e", "APPLIANCE_TRANSPORT=http", "-e", "APPLIANCE_HOST=0.0.0.0", "-e", f"APPLIANCE_PORT={MCP_PORT}"),
        *("-e", "APPLIANCE_HEALTH_HOST=0.0.0.0", "-e", f"APPLIANCE_AUTH_TOKEN={TOKEN}"),
        *("-e", f'APPLIANCE_ALLOWED_HOSTS=["{HTTP_HOST_HEADER}"]', "-e", "APPLIANCE_AUDIT_PATH=/tmp/audit.jsonl"),
        *("-e", f'APPLIANCE_HEALTH_ALLOWED_HOSTS=["127.0.0.1:*","{APPLIANCE_ALIAS}:*"]'),
        *("--network-alias", APPLIANCE_ALIAS),
    ]
    problems: list[str] = []
    docker("volume", "create", volume)
    try:
        docker("run", "-d", *run_args(mode, name, setup, extra))
        ip = container_ip(name, setup.lab.network)
        wait_until(lambda: port_open(ip, MCP_PORT), f"the appliance's HTTP port on {ip}")
        setup.tracer.attach(name)
        calls = calls_for(mode, setup.lab.target_ip, setup.lab.bystander_ip)[:2]
        problems += asyncio.run(_http_calls(f"http://{ip}:{MCP_PORT}/mcp", calls, setup.lab.target_ip))
        for path in ("livez", "readyz", "healthz", "metrics"):
            if (status := http_get(f"http://{ip}:{HEALTH_PORT}/{path}")) != 200:
                problems.append(f"sidecar /{path} answered {status}")
        for command in ([APPLIANCE, "health", "--probe"], [APPLIANCE, "health"]):
            if (done := exec_in(name, mode, command)).returncode != 0:
                problems.append(f"{' '.join(command[1:])} exited {done.returncode}: {done.stderr[-300:]}")
        problems += operator_cli(name, mode)
        if mode == "connect":
            problems += demo_client(setup)
        docker("kill", "-s", "HUP", name)
        started = time.monotonic()
        docker("stop", "-t", str(STOP_TIMEOUT_SECONDS), name)
        took = time.monotonic() - started
        code = docker_out("inspect", "-f", "{{.State.ExitCode}}", name)
        print(f"{name}: docker stop took {took:.1f}s, exit code {code}", file=sys.stderr)
        if code not in ("0", "143") or took > STOP_TIMEOUT_SECONDS - 1:
            problems.append(f"docker stop: exit code {code} after {took:.1f}s")
        logs = docker("logs", name).stderr
        if "Traceback" in logs:
            problems.append("server log has a traceback: " + logs[logs.index("Traceback") :][:600])
    finally:
        docker("rm", "-f", name, check=False)
        docker("volume", "rm", "--force", volume, check=False)
    return problems


def demo_client(setup: Setup) -> list[str]:
    """compose.yaml's one-shot `appliance demo` client, which runs under the same profile."""
    if "demo" not in docker_out("run", "--rm", "--network", "none", "--entrypoint", APPLIANCE, setup.image, "--help"):
        return []  # an image from before the demo command
    with tempfile.TemporaryDirectory() as folder:
        token = Path(folder) / "token"
        token.write_text(TOKEN)
        token.chmod(0o444)
        Path(folder).chmod(0o755)  # the container's UID 65532 reads the bind-mounted token
        args = [
            "run", "--rm", "--network", setup.lab.network, *COMMON, *LIMITS,
            "--security-opt", f"seccomp={setup.profile}", *CONNECT_MODE, "-v", f"{token}:/run/secrets/token:ro",
            setup.image, "demo", f"--url=http://{APPLIANCE_ALIAS}:{MCP_PORT}/mcp",
            "--token-file=/run/secrets/token", f"--target={LAB_ALIAS}", f"--ports={LAB_PORT}",
        ]  # fmt: skip
        done = subprocess.run(
            [executable("docker"), *args], capture_output=True, text=True, timeout=CALL_TIMEOUT_SECONDS, check=False
        )
    return [] if done.returncode == 0 else [f"demo client exited {done.returncode}: {done.stderr[-400:]}"]


def store_phase(mode: str, setup: Setup) -> list[str]:
    """The job store (seccomp_store_workload.py) in the image's Python, as the server's user.

    Twice on one named volume at the image's data folder (the second run recovers the WAL the
    first one's simulated crash left), once without a volume: the store then creates its
    fallback folder on /tmp.
    """
    volume = f"seccomp-trace-store-{secrets.token_hex(3)}"
    source = STORE_WORKLOAD.read_text()
    on_volume = ["-v", f"{volume}:{DATA_DIR}"]
    runs = [(on_volume, "first"), (on_volume, "second"), ([], "first")]
    problems = []
    docker("volume", "create", volume)
    try:
        for mount, step in runs:
            name = f"seccomp-trace-store-{secrets.token_hex(3)}"
            extra = ["--entrypoint", PYTHON, *mount]
            command = ("-c", source, DATA_DIR, step)
            done = docker("run", "--rm", *run_args(mode, name, setup, extra, command), check=False)
            if done.returncode != 0:
                problems.append(f"store workload {step} {mount} exited {done.returncode}: {done.stderr[-600:]}")
    finally:
        docker("volume", "rm", "--force", volume, check=False)
    return problems


PHASES: dict[str, tuple[str, Callable[[str, Setup], list[str]]]] = {
    "connect-cli": ("connect", cli_phase),
    "connect-store": ("connect", store_phase),
    "connect-stdio": ("connect", stdio_phase),
    "connect-http": ("connect", http_phase),
    "raw-stdio": ("raw", stdio_phase),
    "raw-http": ("raw", http_phase),
}


@dataclass
class Phase:
    name: str
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
