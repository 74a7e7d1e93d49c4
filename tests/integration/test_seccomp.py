"""seccomp/appliance.json on the real engine: what it refuses, and that the appliance still works.

Every refusal is compared with a control run of the same call without the profile, so each test
fails if the profile stops making the difference. The calls come from the appliance image's own
Python through ctypes (the image has no shell), as UID 65532 with no capabilities and
no-new-privileges, with no network. The tool tests scan only the lab target container this
module starts, on an internal network it creates, by its exact IP.

x86_64 only: the syscall numbers below and the profile's architecture are x86_64's.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dockerlab import CONTAINER_POLICY_DIR, write_pinned_policy
from mcp import Client, StdioServerParameters
from support import wait_until
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network

from bench.compose import ServiceSpec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64 syscall numbers and profile architecture"),
]

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "seccomp" / "appliance.json"
# The job store (SqliteJobStore) driven by the image's Python: the trace harness's connect-store phase.
STORE_WORKLOAD = REPO / "scripts" / "seccomp_store_workload.py"
DATA_DIR = "/var/lib/appliance"  # the image's APPLIANCE_DATA_DIR; compose.yaml mounts a volume there
EPHEMERAL_DB = "/tmp/appliance-data/jobs.sqlite3"  # the store's fallback when no volume is mounted
# What the workload leaves: 40 jobs completed, the oldest 20 swept, one left running by the crash.
STORE_JOBS, STORE_COMPLETED = 21, 20
IMAGE = "mcp-scanner-appliance:latest"
LAB_IMAGE = "mcp-scanner-lab-target:latest"
LAB_PORT = 8080
# The policy file the appliance containers of this module read (scope: the lab target's /32).
POLICY_NAME = "scope.yaml"
MAX_SYSCALL_NAMES = 130
# A first build (base image, wheels, both images) takes a few minutes here; a rebuild about one.
BUILD_TIMEOUT_SECONDS = 1800
# One `docker run` of a Python snippet takes about a second here.
RUN_TIMEOUT_SECONDS = 60
# busybox httpd listens within a second of its start.
LAB_READY_TIMEOUT_SECONDS = 30
# The slowest call here, masscan's fixed start-up and --wait, takes about 15 s.
CALL_TIMEOUT_SECONDS = 120

# x86_64 syscall numbers and the constants the calls need.
NR_SOCKET, NR_PTRACE, NR_PERSONALITY, NR_ADD_KEY, NR_KEYCTL = 41, 101, 135, 248, 250
NR_UNSHARE, NR_USERFAULTFD, NR_CLONE3 = 272, 323, 435
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, AF_VSOCK = 1, 2, 10, 16, 17, 40
SOCK_STREAM, SOCK_RAW = 1, 3
PTRACE_TRACEME = 0
CLONE_NEWUSER = 0x10000000
KEYCTL_GET_KEYRING_ID = 0
KEY_SPEC_PROCESS_KEYRING, KEY_SPEC_SESSION_KEYRING = -2, -3
O_CLOEXEC = 0o2000000
UFFD_USER_MODE_ONLY = 1  # allowed to unprivileged callers whatever vm.unprivileged_userfaultfd says
PERSONALITY_QUERY = 0xFFFFFFFF

HARDENED = ["--user", "65532:65532", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
# compose.yaml's file system for the appliance: a read-only root and a /tmp tmpfs.
READ_ONLY_ROOT = ["--read-only", "--tmpfs", "/tmp:rw,noexec,nosuid,nodev,size=16m"]
# argv[1]: a JSON list of calls, each [number, arg...] (strings are passed as char *).
# Prints a JSON list with each call's errno (0 when it succeeded).
SYSCALL_SNIPPET = """
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def arg(value):
    return ctypes.c_char_p(value.encode()) if isinstance(value, str) else ctypes.c_long(value)
errnos = []
for call in json.loads(sys.argv[1]):
    ctypes.set_errno(0)
    result = libc.syscall(*[arg(value) for value in call])
    errnos.append(ctypes.get_errno() if result == -1 else 0)
print(json.dumps(errnos))
"""
THREAD_SNIPPET = """
import threading
ran = []
worker = threading.Thread(target=ran.append, args=("thread ran",))
worker.start()
worker.join()
print(ran[0])
"""

# How the control runs: "default" is Docker's own profile; "unconfined" where Docker's default
# already refuses the call, so only a run without any filter shows that this profile is what
# refuses it (a control that also said EPERM would prove nothing).
SECCOMP_OPTIONS = {"profile": [f"seccomp={PROFILE}"], "default": [], "unconfined": ["seccomp=unconfined"]}


def seccomp_args(which: str) -> list[str]:
    return [arg for option in SECCOMP_OPTIONS[which] for arg in ("--security-opt", option)]


def run_python(code: str, *args: str, seccomp: str, docker_args: tuple[str, ...] = ()) -> str:
    """Run `code` with the image's Python as the appliance's user, no network; return stdout."""
    done = subprocess.run(
        [
            *("docker", "run", "--rm", "--network", "none", *HARDENED, *seccomp_args(seccomp), *docker_args),
            *("--entrypoint", "/opt/venv/bin/python", IMAGE, "-c", code, *args),
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode == 0, f"docker run failed ({done.returncode}): {done.stderr[-2000:]}"
    return done.stdout


def syscall_errnos(calls: list[list[int | str]], seccomp: str) -> list[int]:
    errnos: list[int] = json.loads(run_python(SYSCALL_SNIPPET, json.dumps(calls), seccomp=seccomp))
    return errnos


def profile_json() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(PROFILE.read_text())
    return data


def profile_names(profile: dict[str, Any]) -> set[str]:
    return {name for entry in profile["syscalls"] for name in entry["names"]}


@pytest.fixture(scope="module")
def appliance_images(record: Callable[[str], None]) -> None:
    """The appliance and lab target images, built with scripts/build-image when one is missing."""
    missing = [
        image
        for image in (IMAGE, LAB_IMAGE)
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False).returncode != 0
    ]
    if missing:
        started = time.monotonic()
        subprocess.run([str(REPO / "scripts" / "build-image")], check=True, timeout=BUILD_TIMEOUT_SECONDS)
        record(f"scripts/build-image (missing: {', '.join(missing)}): {time.monotonic() - started:.0f} s")


@dataclass(frozen=True)
class SeccompLab:
    network: str
    target_ip: str
    policy_dir: Path  # the policy folder mounted into the appliance: scope pinned to target_ip/32


def port_open(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((address, port)) == 0


@pytest.fixture(scope="module")
def seccomp_lab(appliance_images: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeccompLab]:
    """An internal network (no route out) with the lab web server on it; both removed after."""
    network = Network(docker_network_kw={"internal": True})
    network.create()
    try:
        target = DockerContainer(LAB_IMAGE).with_network(network)
        target.with_kwargs(read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"])
        target.start()
        try:
            wrapped = target.get_wrapped_container()
            wrapped.reload()
            target_ip = wrapped.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
            wait_until(lambda: port_open(target_ip, LAB_PORT), timeout=LAB_READY_TIMEOUT_SECONDS)
            policy_dir = tmp_path_factory.mktemp("seccomp-policies")
            write_pinned_policy(policy_dir, POLICY_NAME, target_ip)
            yield SeccompLab(network.name, target_ip, policy_dir)
        finally:
            target.stop()
    finally:
        network.remove()


# --- the file ------------------------------------------------------------------------------------


def test_profile_has_at_most_130_syscall_names(record: Callable[[str], None]) -> None:
    names = profile_names(profile_json())
    print(f"seccomp/appliance.json allows {len(names)} syscall names")
    record(f"seccomp/appliance.json: {len(names)} syscall names (limit {MAX_SYSCALL_NAMES})")
    assert len(names) <= MAX_SYSCALL_NAMES


def test_profile_refuses_by_default_and_filters_socket_families() -> None:
    profile = profile_json()
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile.get("defaultErrnoRet", errno.EPERM) == errno.EPERM
    socket_rules = [entry for entry in profile["syscalls"] if "socket" in entry["names"]]
    assert all(entry["names"] == ["socket"] and entry["action"] == "SCMP_ACT_ALLOW" for entry in socket_rules)
    families = set()
    for entry in socket_rules:
        (rule,) = entry["args"]  # one condition per rule: rules for one syscall are OR-ed
        assert (rule["index"], rule["op"]) == (0, "SCMP_CMP_EQ")
        families.add(rule["value"])
    assert families == {AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET}
    (clone3,) = [entry for entry in profile["syscalls"] if "clone3" in entry["names"]]
    assert (clone3["names"], clone3["action"], clone3["errnoRet"]) == (["clone3"], "SCMP_ACT_ERRNO", errno.ENOSYS)


# --- refusals, each against a control ----------------------------------------------------------

REFUSED = [
    pytest.param([NR_PTRACE, PTRACE_TRACEME, 0, 0, 0], "default", id="ptrace_traceme"),
    # Docker's default allows unshare only with CAP_SYS_ADMIN: the control must be unconfined.
    pytest.param([NR_UNSHARE, CLONE_NEWUSER], "unconfined", id="unshare_clone_newuser"),
    # Docker's default refuses the kernel keyring calls and userfaultfd too.
    pytest.param([NR_KEYCTL, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0], "unconfined", id="keyctl"),
    pytest.param(
        [NR_ADD_KEY, "user", "seccomp-test", "payload", 7, KEY_SPEC_PROCESS_KEYRING], "unconfined", id="add_key"
    ),
    pytest.param([NR_USERFAULTFD, O_CLOEXEC | UFFD_USER_MODE_ONLY], "unconfined", id="userfaultfd"),
    pytest.param([NR_PERSONALITY, PERSONALITY_QUERY], "default", id="personality_query"),
    # Engine 20.10's default profile lets AF_VSOCK through: this profile's family filter does not.
    pytest.param([NR_SOCKET, AF_VSOCK, SOCK_STREAM, 0], "default", id="socket_af_vsock"),
]


@pytest.mark.parametrize(("call", "control"), REFUSED)
def test_profile_refuses_what_the_control_allows(call: list[int | str], control: str) -> None:
    assert syscall_errnos([call], "profile") == [errno.EPERM]
    (control_errno,) = syscall_errnos([call], control)
    assert control_errno != errno.EPERM, f"the control ({control}) refuses it too: the test would prove nothing"


def test_listed_socket_families_still_open() -> None:
    calls: list[list[int | str]] = [
        [NR_SOCKET, AF_UNIX, SOCK_STREAM, 0],
        [NR_SOCKET, AF_INET, SOCK_STREAM, 0],
        [NR_SOCKET, AF_INET6, SOCK_STREAM, 0],
        [NR_SOCKET, AF_NETLINK, SOCK_RAW, 0],  # NETLINK_ROUTE
    ]
    assert syscall_errnos(calls, "profile") == [0, 0, 0, 0]


def test_clone3_answers_enosys_so_threads_start() -> None:
    # Docker's default profile answers ENOSYS as well, so the control is unconfined: there the
    # kernel itself answers clone3(NULL, 0) with EINVAL.
    assert syscall_errnos([[NR_CLONE3, 0, 0]], "profile") == [errno.ENOSYS]
    assert syscall_errnos([[NR_CLONE3, 0, 0]], "unconfined") != [errno.ENOSYS]
    assert run_python(THREAD_SNIPPET, seccomp="profile").strip() == "thread ran"


# --- the job store under the profile -----------------------------------------------------------


def run_store_workload(data_dir: str, step: str, mounts: tuple[str, ...] = ()) -> dict[str, Any]:
    """The store workload's STEP in the image under the profile, on compose.yaml's file system."""
    output = run_python(
        STORE_WORKLOAD.read_text(), data_dir, step, seccomp="profile", docker_args=(*READ_ONLY_ROOT, *mounts)
    )
    summary: dict[str, Any] = json.loads(output)
    return summary


@pytest.fixture
def data_volume(appliance_images: None) -> Iterator[str]:
    """A new, empty named volume (as compose's appliance-data is at first start); removed after."""
    name = f"mcp-it-store-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "volume", "create", name], capture_output=True, timeout=RUN_TIMEOUT_SECONDS, check=True)
    try:
        yield name
    finally:
        subprocess.run(
            ["docker", "volume", "rm", "--force", name], capture_output=True, timeout=RUN_TIMEOUT_SECONDS, check=False
        )


def test_job_store_on_data_volume_survives_a_crash_and_a_new_container_under_profile(
    data_volume: str, record: Callable[[str], None]
) -> None:
    """The job store (SQLite, WAL, synchronous=NORMAL) in the image's data folder on a named
    volume: the first container writes jobs, pages, sweeps, checkpoints, vacuums, reopens and dies
    with a running job only in the WAL; a second container on the same volume recovers it."""
    mount = ("--volume", f"{data_volume}:{DATA_DIR}")
    started = time.monotonic()
    first = run_store_workload(DATA_DIR, "first", mount)
    # The empty volume took the image folder's owner and mode, so the store used it (durable).
    assert (first["data_dir_uid"], first["data_dir_mode"]) == (65532, "0o700")
    assert (first["store"]["kind"], first["store"]["path"]) == ("durable", f"{DATA_DIR}/jobs.sqlite3")
    assert first["store"]["jobs"] == STORE_JOBS
    assert first["wal_bytes_left"] > 0, "the crash left nothing in the WAL: the recovery below proves nothing"
    second = run_store_workload(DATA_DIR, "second", mount)
    took = time.monotonic() - started
    assert second["wal_bytes_found"] == first["wal_bytes_left"]
    assert second["interrupted"] == first["running"]
    assert second["counts"] == {"completed": STORE_COMPLETED, "interrupted": 1}
    record(f"job store workload under the profile, SQLite {first['sqlite_version']}, two containers: {took:.1f} s")


def test_job_store_without_data_volume_falls_back_to_tmp_under_profile(appliance_images: None) -> None:
    """No volume: /var/lib/appliance is on the read-only root, so the store makes its ephemeral
    folder on the /tmp tmpfs (mkdir) and works there."""
    summary = run_store_workload(DATA_DIR, "first")
    assert (summary["store"]["kind"], summary["store"]["path"]) == ("ephemeral", EPHEMERAL_DB)
    assert (summary["data_dir_uid"], summary["data_dir_mode"]) == (65532, "0o700")
    assert summary["store"]["jobs"] == STORE_JOBS


# --- the appliance under the profile -----------------------------------------------------------


def appliance_client(spec: ServiceSpec, lab: SeccompLab, name: str) -> Client:
    """The appliance over stdio (`docker run -i`) with compose.yaml's flags for `spec` (its seccomp
    profile included; assert_runs_under_profile checks that it is this one), on the lab network."""
    env = {
        **spec.environment,
        "APPLIANCE_TRANSPORT": "stdio",
        "APPLIANCE_LOG_LEVEL": "WARNING",
        "APPLIANCE_POLICY_PATH": f"{CONTAINER_POLICY_DIR}/{POLICY_NAME}",
    }
    args = ["run", "-i", "--rm", "--name", name, "--network", lab.network, *spec.run_args()]
    args += ["--volume", f"{lab.policy_dir}:{CONTAINER_POLICY_DIR}:ro"]
    args += [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]
    args += [IMAGE, *spec.run_command()]
    # The whole environment: the docker CLI needs DOCKER_HOST and friends when they are set.
    params = StdioServerParameters(command="docker", args=args, env=dict(os.environ))
    return Client(params, mode="legacy", read_timeout_seconds=CALL_TIMEOUT_SECONDS)


def remove_container(name: str) -> None:
    subprocess.run(["docker", "rm", "--force", name], capture_output=True, timeout=RUN_TIMEOUT_SECONDS, check=False)


def assert_runs_under_profile(name: str) -> None:
    """The running container's seccomp option is this profile (not Docker's default)."""
    done = subprocess.run(
        ["docker", "inspect", "--format", "{{json .HostConfig.SecurityOpt}}", name],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=True,
    )
    (applied,) = [option for option in json.loads(done.stdout) if option.startswith("seccomp=")]
    assert profile_names(json.loads(applied.removeprefix("seccomp="))) == profile_names(profile_json())


def open_ports(structured: dict[str, Any] | None) -> set[int]:
    assert structured is not None
    return {p["port"] for host in structured["hosts"] for p in host["ports"] if p["state"] == "open"}


async def timed_call(client: Client, tool: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    result = await client.call_tool(tool, arguments)
    took = time.monotonic() - started
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content, took


@pytest.mark.anyio
async def test_connect_mode_scans_under_profile(
    seccomp_lab: SeccompLab, services: dict[str, ServiceSpec], record: Callable[[str], None]
) -> None:
    name = f"mcp-it-seccomp-connect-{uuid.uuid4().hex[:8]}"
    url = f"http://{seccomp_lab.target_ip}:{LAB_PORT}/"
    try:
        async with appliance_client(services["appliance"], seccomp_lab, name) as client:
            assert_runs_under_profile(name)
            nmap, nmap_seconds = await timed_call(
                client, "nmap_scan", {"target": seccomp_lab.target_ip, "ports": f"{LAB_PORT},81"}
            )
            gobuster, gobuster_seconds = await timed_call(client, "gobuster_scan", {"mode": "dir", "target": url})
    finally:
        remove_container(name)
    assert open_ports(nmap) == {LAB_PORT}
    assert any(finding["value"].strip("/") == "admin" for finding in gobuster["findings"]), gobuster["findings"]
    record(f"under the profile: nmap connect scan {nmap_seconds:.1f} s, gobuster dir {gobuster_seconds:.1f} s")


@pytest.mark.anyio
async def test_raw_mode_scans_under_profile(
    seccomp_lab: SeccompLab, services: dict[str, ServiceSpec], record: Callable[[str], None]
) -> None:
    name = f"mcp-it-seccomp-raw-{uuid.uuid4().hex[:8]}"
    ports = f"{LAB_PORT},81"
    try:
        async with appliance_client(services["appliance-raw"], seccomp_lab, name) as client:
            assert_runs_under_profile(name)
            syn, syn_seconds = await timed_call(
                client, "nmap_scan", {"target": seccomp_lab.target_ip, "ports": ports, "scan_type": "syn"}
            )
            masscan, masscan_seconds = await timed_call(
                client, "masscan_scan", {"target": seccomp_lab.target_ip, "ports": ports, "rate": 100}
            )
    finally:
        remove_container(name)
    assert open_ports(syn) == {LAB_PORT}
    assert "-sS" in syn["argv"]
    assert {(f["port"], f["status"]) for f in masscan["findings"]} == {(LAB_PORT, "open")}
    record(f"under the profile: nmap SYN scan {syn_seconds:.1f} s, masscan {masscan_seconds:.1f} s")
