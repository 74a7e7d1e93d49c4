"""The running appliance's container settings (CIS Docker Benchmark 1.6, section 5) and the
privileges its server process really holds.

Two ways in: the appliance started with testcontainers from compose.yaml's settings on the test
lab (connect and raw mode; the process checks read /proc/<pid>/status of the server on this
host), and the compose deployment itself (which alone publishes ports, for 5.8 and 5.14).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest
from dockerlab import (
    APP_UID,
    CAP_NET_RAW,
    ComposeStack,
    FleetStack,
    Lab,
    ServiceSpec,
    start_appliance,
    wait_healthy,
)
from support import wait_until
from testcontainers.core.container import DockerContainer

pytestmark = pytest.mark.integration

# tini forks the server at once; the server's Python start-up takes about a second.
SERVER_PROCESS_TIMEOUT_SECONDS = 30
SENSITIVE_HOST_DIRS = ("/", "/boot", "/dev", "/etc", "/lib", "/proc", "/sys", "/usr")
DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
# The capabilities raw mode adds so that setpriv can drop to UID 65532 keeping NET_RAW.
RAW_CAP_ADD = {"NET_RAW", "SETUID", "SETGID", "SETPCAP"}
SERVICE_FOR_MODE = {"connect": "appliance", "raw": "appliance-raw"}


@dataclass(frozen=True)
class RunningAppliance:
    mode: str
    container: DockerContainer

    @property
    def attrs(self) -> dict[str, Any]:
        wrapped = self.container.get_wrapped_container()
        wrapped.reload()
        return dict(wrapped.attrs)


@pytest.fixture(scope="module", params=["connect", "raw"])
def appliance(request: pytest.FixtureRequest, lab: Lab, services: dict[str, ServiceSpec]) -> Iterator[RunningAppliance]:
    container = start_appliance(services[SERVICE_FOR_MODE[request.param]], lab)
    try:
        yield RunningAppliance(request.param, container)
    finally:
        container.stop()


def server_process(attrs: dict[str, Any]) -> psutil.Process:
    """The appliance's server: the one child of the container's init (tini), not tini itself."""
    init = psutil.Process(attrs["State"]["Pid"])

    def found() -> psutil.Process | None:
        children = [c for c in init.children() if "serve" in c.cmdline()]
        return children[0] if len(children) == 1 else None

    process: psutil.Process = wait_until(found, timeout=SERVER_PROCESS_TIMEOUT_SECONDS, interval=0.2)
    return process


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


# --- CIS 5.x from `docker inspect` ------------------------------------------------------------

Check = Callable[[dict[str, Any], set[str]], None]


def _caps(names: list[str] | None) -> set[str]:
    return {name.upper().removeprefix("CAP_") for name in names or []}


def cis_5_4_capabilities_restricted(attrs: dict[str, Any], allowed_add: set[str]) -> None:
    host = attrs["HostConfig"]
    assert _caps(host["CapDrop"]) == {"ALL"}
    assert _caps(host["CapAdd"]) <= allowed_add


def cis_5_5_not_privileged(attrs: dict[str, Any], allowed_add: set[str]) -> None:
    assert attrs["HostConfig"]["Privileged"] is False


def cis_5_6_no_sensitive_host_mounts(attrs: dict[str, Any], allowed_add: set[str]) -> None:
    for mount in attrs["Mounts"]:
        source = mount["Source"]
        assert source not in SENSITIVE_HOST_DIRS, mount
        assert not any(source.startswith(d + "/") for d in SENSITIVE_HOST_DIRS if d != "/"), mount


def cis_5_8_no_privileged_ports(attrs: dict[str, Any], allowed_add: set[str]) -> None:
    for bindings in (attrs["NetworkSettings"]["Ports"] or {}).values():
        for binding in bindings or []:
            assert int(binding["HostPort"]) >= 1024, binding


def cis_5_10_no_host_network(attrs: dict[str, Any], allowed_add: set[str]) -> None:
    assert attrs["HostConfig"]["NetworkMode"] != "host"


def cis_5_11_memory_limited(attrs: dict[str, Any], allowed_add: set[str]) -> None:
    assert attrs["HostConfig"]["Memory"] > 0


def cis_5_12_cpu_limited(attrs: dict[str, Any], allowed_add: set[str]) -> None:
    host = attrs["HostConfig"]
    assert host["NanoCpus"] > 0
    assert host["CpuShares"] not in (0, 1024)  # 1024 is the default weight


def cis_5_13_read_only_root(attrs: dict[str, Any], allowed_add: set[str]) -> None:
    assert attrs["HostConfig"]["ReadonlyRootfs"] is True


def cis_5_14_ports_on_one_interface(attrs: dict[str, Any], allowed_add: set[str]) -> None:
    for bindings in (attrs["NetworkSettings"]["Ports"] or {}).values():
        for binding in bindings or []:
            assert binding["HostIp"] not in ("", "0.0.0.0", "::"), binding


def cis_5_15_restart_on_failure_5(attrs: dict[str, Any], allowed_add: set[str]) -> None:
    assert attrs["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 5}


def cis_5_16_17_21_no_host_namespaces(attrs: dict[str, Any], allowed_add: set[str]) -> None:
    host = attrs["HostConfig"]
    assert (host["PidMode"], host["IpcMode"], host["UTSMode"]) == ("", "private", "")


def cis_5_20_no_shared_propagation(attrs: dict[str, Any], allowed_add: set[str]) -> None:
    for mount in attrs["Mounts"]:
        assert mount.get("Propagation", "") not in ("shared", "rshared"), mount


def cis_5_22_seccomp_confined(attrs: dict[str, Any], allowed_add: set[str]) -> None:
    options = attrs["HostConfig"]["SecurityOpt"] or []
    assert not [o for o in options if o.replace(":", "=", 1) == "seccomp=unconfined"]


def cis_5_25_default_cgroup(attrs: dict[str, Any], allowed_add: set[str]) -> None:
    assert attrs["HostConfig"]["CgroupParent"] == ""


def cis_5_26_no_new_privileges(attrs: dict[str, Any], allowed_add: set[str]) -> None:
    options = [o.replace("=", ":", 1) for o in attrs["HostConfig"]["SecurityOpt"] or []]
    assert "no-new-privileges:true" in options or "no-new-privileges" in options


def cis_5_29_pids_limited(attrs: dict[str, Any], allowed_add: set[str]) -> None:
    assert (attrs["HostConfig"]["PidsLimit"] or 0) > 0


def cis_5_31_no_host_userns(attrs: dict[str, Any], allowed_add: set[str]) -> None:
    assert attrs["HostConfig"]["UsernsMode"] != "host"


def cis_5_32_no_docker_socket(attrs: dict[str, Any], allowed_add: set[str]) -> None:
    assert not [m for m in attrs["Mounts"] if m["Source"] in DOCKER_SOCKETS or m["Destination"] in DOCKER_SOCKETS]


CIS_CHECKS: list[Check] = [
    cis_5_4_capabilities_restricted,
    cis_5_5_not_privileged,
    cis_5_6_no_sensitive_host_mounts,
    cis_5_8_no_privileged_ports,
    cis_5_10_no_host_network,
    cis_5_11_memory_limited,
    cis_5_12_cpu_limited,
    cis_5_13_read_only_root,
    cis_5_14_ports_on_one_interface,
    cis_5_15_restart_on_failure_5,
    cis_5_16_17_21_no_host_namespaces,
    cis_5_20_no_shared_propagation,
    cis_5_22_seccomp_confined,
    cis_5_25_default_cgroup,
    cis_5_26_no_new_privileges,
    cis_5_29_pids_limited,
    cis_5_31_no_host_userns,
    cis_5_32_no_docker_socket,
]


def check_id(check: Check) -> str:
    return check.__name__.removeprefix("cis_")


@pytest.mark.parametrize("check", CIS_CHECKS, ids=check_id)
def test_cis_container_settings(appliance: RunningAppliance, check: Check) -> None:
    check(appliance.attrs, RAW_CAP_ADD if appliance.mode == "raw" else set())


@pytest.mark.parametrize("service", ["appliance", "web"])
@pytest.mark.parametrize("check", CIS_CHECKS, ids=check_id)
def test_cis_compose_deployment(
    compose_stack: ComposeStack, docker_client: docker.DockerClient, service: str, check: Check
) -> None:
    check(docker_client.containers.get(compose_stack.container_id(service)).attrs, set())


# The fleet's services of each kind (seg-b-1: the kill test in test_fleet.py may have stopped a seg-a one).
@pytest.mark.parametrize("service", ["nats-1", "seg-b-1", "front-1", "web-seg-a"])
@pytest.mark.parametrize("check", CIS_CHECKS, ids=check_id)
def test_cis_fleet_deployment(
    fleet_stack: FleetStack, docker_client: docker.DockerClient, service: str, check: Check
) -> None:
    check(docker_client.containers.get(fleet_stack.container_id(service)).attrs, set())


def test_compose_publishes_only_on_loopback(compose_stack: ComposeStack, docker_client: docker.DockerClient) -> None:
    """5.14 with real bindings: the MCP port and the sidecar, both on 127.0.0.1, nothing else."""
    attrs = docker_client.containers.get(compose_stack.container_id("appliance")).attrs
    published = {
        (port, b["HostIp"], int(b["HostPort"]))
        for port, bindings in attrs["NetworkSettings"]["Ports"].items()
        for b in bindings or []
    }
    assert published == {
        ("8080/tcp", "127.0.0.1", compose_stack.http_port),
        ("9090/tcp", "127.0.0.1", compose_stack.health_port),
    }
    web = docker_client.containers.get(compose_stack.container_id("web")).attrs
    assert not any(web["NetworkSettings"]["Ports"].values())


def test_cis_5_7_no_sshd(appliance: RunningAppliance) -> None:
    top = appliance.container.get_wrapped_container().top()
    commands = [row[top["Titles"].index("CMD")] for row in top["Processes"]]
    assert commands, "docker top shows no process"
    assert not [c for c in commands if "sshd" in c]


def test_cis_5_27_becomes_healthy(appliance: RunningAppliance, record: Any) -> None:
    record(f"{appliance.mode} appliance healthy after {wait_healthy(appliance.container):.1f} s")


# --- the server process's own view (/proc/<pid>/status) ----------------------------------------


def assert_server_privileges(status: dict[str, str], mode: str) -> None:
    expected_caps = CAP_NET_RAW if mode == "raw" else 0
    caps = {name: int(status[name], 16) for name in ("CapEff", "CapPrm", "CapBnd", "CapAmb")}
    assert caps == dict.fromkeys(caps, expected_caps)
    assert status["Uid"].split() == [str(APP_UID)] * 4
    assert status["Gid"].split() == [str(APP_UID)] * 4
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"


def test_server_process_privileges(appliance: RunningAppliance) -> None:
    process = server_process(appliance.attrs)
    assert_server_privileges(proc_status(process.pid), appliance.mode)


def test_compose_server_process_privileges(compose_stack: ComposeStack, docker_client: docker.DockerClient) -> None:
    process = server_process(docker_client.containers.get(compose_stack.container_id("appliance")).attrs)
    assert_server_privileges(proc_status(process.pid), "connect")


WRITE_PROBE = """
import sys
try:
    open("/written-by-test", "w")
except OSError as exc:
    print(exc.strerror)
    sys.exit(0)
sys.exit("the root file system accepted a write")
"""


def test_root_filesystem_refuses_writes(appliance: RunningAppliance) -> None:
    done = appliance.container.exec(["/opt/venv/bin/python", "-c", WRITE_PROBE])
    assert done.exit_code == 0, done.output
    assert b"Read-only file system" in done.output


def test_tmp_is_a_small_noexec_tmpfs(appliance: RunningAppliance) -> None:
    done = appliance.container.exec(["/opt/venv/bin/python", "-c", "print(open('/proc/self/mounts').read())"])
    tmp = [line.split() for line in done.output.decode().splitlines() if line.split()[1:2] == ["/tmp"]]
    assert len(tmp) == 1 and tmp[0][2] == "tmpfs"
    options = set(tmp[0][3].split(","))
    assert {"noexec", "nosuid", "nodev", "size=16384k"} <= options


def test_server_keeps_running(appliance: RunningAppliance) -> None:
    """No restart loop: the container has not restarted since the fixture started it."""
    attrs = appliance.attrs
    assert attrs["State"]["Running"] is True
    assert attrs["RestartCount"] == 0
