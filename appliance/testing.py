"""Containers for users' own tests: the appliance and the lab target, started with testcontainers.

The third way the appliance is used is as the scanner an agent under test talks to; this module
saves those users from writing their own container fixtures. It is an optional extra
(`pip install mcp-scanner-appliance[testing]`): testcontainers is imported here and nowhere
else, and nothing in the appliance imports this module.

The containers get the hardening compose.yaml gives its services (tests/test_testing.py keeps
the two in step). They join the user's own Docker network and are reached by their address on
it, the way the project's own container tests reach theirs: nothing is published on the host,
and no TLS unless asked for (`tls=TlsFiles(...)`): the test network is the user's.

Network safety: the appliance scans only what the policy given here allows; pin it to the lab
containers the test starts (`lab_policy(target.address)`).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import secrets
import shutil
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network

from appliance.compat import mcp_http_client

__all__ = [
    "DEFAULT_IMAGE",
    "DEFAULT_LAB_IMAGE",
    "ApplianceContainer",
    "ContainerNotReadyError",
    "LabTargetContainer",
    "Mode",
    "TlsFiles",
    "appliance_environment",
    "appliance_hardening",
    "copy_tls_files",
    "lab_policy",
    "lab_target_hardening",
    "write_policy",
    "write_token",
]

DEFAULT_IMAGE = "mcp-scanner-appliance:latest"
DEFAULT_LAB_IMAGE = "mcp-scanner-lab-target:latest"
MCP_PORT = 8080
HEALTH_PORT = 9090
LAB_PORT = 8080
APP_USER = "65532:65532"
# Where compose.yaml mounts the policy folder and the bearer token.
CONTAINER_POLICY_DIR = "/etc/appliance/policies"
POLICY_FILENAME = "scope.yaml"
CONTAINER_TOKEN_PATH = "/run/secrets/appliance_auth_token"  # noqa: S105 - a path, not a secret
CONTAINER_TLS_CERT_PATH = "/run/secrets/appliance_tls_cert"
CONTAINER_TLS_KEY_PATH = "/run/secrets/appliance_tls_key"
# The server's start (self-check, scanner probes, sidecar, uvicorn) takes a few seconds; a
# cold host or a slow CI runner more. A container that never gets ready fails within this.
READY_TIMEOUT_SECONDS = 60.0
READY_POLL_SECONDS = 0.25
# One readiness probe: the sidecar answers at once or is not up yet.
PROBE_TIMEOUT_SECONDS = 2.0
# How much of a failed container's log goes into the error (the end is where the cause is).
LOG_TAIL_CHARS = 6000

Mode = Literal["connect", "raw"]
Policy = Path | str | Mapping[str, Any]

# Raw mode, as compose.yaml's appliance-raw: Docker sets no ambient capabilities and
# no-new-privileges disables file capabilities, so the container starts as root with NET_RAW and
# what setpriv needs to drop to UID 65532 keeping NET_RAW alone (the self-check refuses anything else).
RAW_CAPABILITIES = ("NET_RAW", "SETUID", "SETGID", "SETPCAP")
RAW_ENTRYPOINT = (
    "/usr/bin/setpriv",
    "--reuid=65532",
    "--regid=65532",
    "--clear-groups",
    "--inh-caps=-all,+net_raw",
    "--ambient-caps=-all,+net_raw",
    "--bounding-set=-all,+net_raw",
    "/usr/bin/tini",
    "--",
    "/opt/venv/bin/appliance",
    "serve",
)
# `docker exec` starts the image's health probe as the container's user (root, with its
# capabilities, in raw mode): drop to 65532 with none first, as compose.yaml does.
RAW_HEALTHCHECK_TEST = (
    "CMD",
    "/usr/bin/setpriv",
    "--reuid=65532",
    "--regid=65532",
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
    "/opt/venv/bin/appliance",
    "health",
    "--probe",
)
_SECOND_NS = 10**9


class ContainerNotReadyError(TimeoutError):
    """A container exited or did not get ready in time; the message carries the end of its logs.

    Not an `appliance.errors.ApplianceError`: those are what the appliance reports to its MCP
    callers, this is the test harness's own failure to start it.
    """


@dataclass(frozen=True)
class TlsFiles:
    """A certificate chain and its key for both listeners, and the CA that signed them (what the
    harness trusts); `scripts/create-cert DIR` makes such a set."""

    cert: Path
    key: Path
    ca: Path

    def client_context(self) -> ssl.SSLContext:
        """Trust exactly `ca`, without a name check: the harness dials the container's address,
        which a certificate made before the container existed cannot name. The CA is the test's
        own, so the chain is the check that matters; a client on the network dialling the alias
        should check the name (the certificate must carry the alias then)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        context.check_hostname = False
        return context


def lab_policy(*addresses: str, hostname_suffixes: tuple[str, ...] = (".lab.internal",)) -> dict[str, Any]:
    """The bundled scope policy with the allow list narrowed to `addresses` (an IP is taken as its
    /32 or /128, a CIDR as it is): the lab containers a test starts and nothing else.

    Does not cover names: a hostname must also resolve (in the appliance, on the lab network) to
    an allowed address, so an alias of the lab target works and any other name is refused.
    """
    if not addresses:
        raise ValueError("lab_policy needs at least one address or network to allow")
    text = resources.files("appliance").joinpath("data/policies/scope.yaml").read_text()
    policy: dict[str, Any] = yaml.safe_load(text)
    # The policy wants canonical CIDRs: an address becomes its host network, a CIDR with host
    # bits set is refused here (ValueError) rather than by the appliance at start.
    policy["scope"]["allow_networks"] = [str(ipaddress.ip_network(text)) for text in addresses]
    policy["scope"]["allow_hostname_suffixes"] = list(hostname_suffixes)
    return policy


def write_policy(policy: Policy, folder: Path) -> Path:
    """Write `policy` (a file to copy, or a dict) as `folder/scope.yaml`, readable by UID 65532.

    A copy rather than a bind mount of the user's own file: the container then sees one folder
    the harness owns, and the user's folder keeps its own permissions.
    """
    path = folder / POLICY_FILENAME
    if isinstance(policy, Mapping):
        path.write_text(yaml.safe_dump(dict(policy), sort_keys=False))
    else:
        shutil.copyfile(Path(policy), path)
    folder.chmod(0o755)
    path.chmod(0o644)
    return path


def write_token(token: str, folder: Path) -> Path:
    """The bearer token as a file the container's UID 65532 can read (scripts/create-token's 0444)."""
    path = folder / "appliance_auth_token"
    path.write_text(token)
    path.chmod(0o444)
    return path


def copy_tls_files(tls: TlsFiles, folder: Path) -> tuple[Path, Path]:
    """Copies of the certificate chain and key that UID 65532 can read (0444 in the harness's
    0700 folder, the rule scripts/create-cert follows); the user's own files keep their modes."""
    cert, key = folder / "appliance_tls_cert.pem", folder / "appliance_tls_key.pem"
    for source, copy in ((tls.cert, cert), (tls.key, key)):
        shutil.copyfile(source, copy)
        copy.chmod(0o444)
    return cert, key


def appliance_hardening(mode: Mode, seccomp_profile: Path | None = None) -> dict[str, Any]:
    """docker-py `containers.create` arguments for compose.yaml's hardening of the appliance.

    `seccomp_profile`: the appliance's own profile (seccomp/appliance.json of the repository; not
    in the wheel), inlined because the Engine API takes the profile itself; without it Docker's
    default profile applies. Not covered: compose's `restart: on-failure:5` (a test should see a
    crash, not a restart).
    """
    security_opt = ["no-new-privileges:true"]
    if seccomp_profile is not None:
        security_opt.append(f"seccomp={json.dumps(json.loads(seccomp_profile.read_text()))}")
    kwargs: dict[str, Any] = {
        "user": APP_USER,
        "cap_drop": ["ALL"],
        "security_opt": security_opt,
        "read_only": True,
        "mem_limit": 512 * 1024 * 1024,
        "nano_cpus": 1 * _SECOND_NS,
        "cpu_shares": 512,
        "pids_limit": 256,
        # The image runs tini as PID 1 itself.
        "init": False,
    }
    if mode == "raw":
        kwargs["user"] = "0:0"
        kwargs["cap_add"] = list(RAW_CAPABILITIES)
        kwargs["entrypoint"] = list(RAW_ENTRYPOINT)
        kwargs["healthcheck"] = {
            "test": list(RAW_HEALTHCHECK_TEST),
            "interval": 10 * _SECOND_NS,
            "timeout": 5 * _SECOND_NS,
            "start_period": 20 * _SECOND_NS,
            "retries": 3,
        }
    return kwargs


def appliance_environment(mode: Mode, alias: str, *, tls: bool = False) -> dict[str, str]:
    """The appliance's settings: HTTP on both listeners of every address of the container, `mode`,
    the mounted policy, Host headers for `alias` and loopback (DNS-rebinding protection), and
    with `tls` the mounted certificate and key for both listeners.

    Unlike compose.yaml (which binds a front network apart from the lab), the user's network is
    both here: the lab's hosts can reach the MCP port, which still needs the token.
    """
    hosts = json.dumps([f"{alias}:*", "127.0.0.1:*", "localhost:*"])
    environment = {
        "APPLIANCE_TRANSPORT": "http",
        "APPLIANCE_HOST": "0.0.0.0",  # noqa: S104 - the container's own addresses; see above
        "APPLIANCE_PORT": str(MCP_PORT),
        "APPLIANCE_HEALTH_HOST": "0.0.0.0",  # noqa: S104
        "APPLIANCE_HEALTH_PORT": str(HEALTH_PORT),
        "APPLIANCE_PRIVILEGE_MODE": mode,
        "APPLIANCE_POLICY_PATH": f"{CONTAINER_POLICY_DIR}/{POLICY_FILENAME}",
        "APPLIANCE_ALLOWED_HOSTS": hosts,
        "APPLIANCE_HEALTH_ALLOWED_HOSTS": hosts,
    }
    if tls:
        environment["APPLIANCE_TLS_CERT_FILE"] = CONTAINER_TLS_CERT_PATH
        environment["APPLIANCE_TLS_KEY_FILE"] = CONTAINER_TLS_KEY_PATH
    return environment


def lab_target_hardening() -> dict[str, Any]:
    """docker-py arguments for compose.yaml's hardening of the lab target (service `web`)."""
    return {
        "user": APP_USER,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "read_only": True,
        "mem_limit": 64 * 1024 * 1024,
        "nano_cpus": _SECOND_NS // 4,
        "cpu_shares": 256,
        "pids_limit": 32,
        "init": False,
    }


def _address(container: DockerContainer, network: Network | None) -> str:
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    settings = wrapped.attrs["NetworkSettings"]
    address = settings["Networks"][network.name]["IPAddress"] if network is not None else settings["IPAddress"]
    if not address:
        raise ContainerNotReadyError(f"container {wrapped.name} has no address on its network")
    return str(address)


def _wait_for(container: DockerContainer, ready: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll `ready` until it holds; fail at once when the container stops, or after `timeout` s,
    with the end of its logs (its stderr: the appliance logs there; stdout is the stdio wire)."""
    deadline = time.monotonic() + timeout
    while True:
        wrapped = container.get_wrapped_container()
        wrapped.reload()
        state = wrapped.attrs["State"]
        if state["Status"] in ("exited", "dead"):
            problem = f"{what}: the container {state['Status']} with code {state.get('ExitCode')}"
            break
        try:
            if ready():
                return
        except ContainerNotReadyError:
            # No address on its network: not yet (starting), or none any more (it stopped since
            # the state above was read). The next look at its state tells which.
            pass
        if time.monotonic() > deadline:
            problem = f"{what}: not ready within {timeout:.0f} s"
            break
        time.sleep(READY_POLL_SECONDS)
    stdout, stderr = container.get_logs()
    logs = (stderr or stdout).decode(errors="replace")[-LOG_TAIL_CHARS:]
    raise ContainerNotReadyError(f"{problem}\n--- container logs (end) ---\n{logs}")


def _http_ok(url: str, headers: Mapping[str, str], context: ssl.SSLContext | None) -> bool:
    request = urllib.request.Request(url, headers=dict(headers))  # noqa: S310 - http(s) to the test container
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_SECONDS, context=context) as response:  # noqa: S310
            return int(response.status) == 200
    except urllib.error.HTTPError as answer:
        # 503: up, not ready yet. The error holds the response open; an unclosed one warns.
        answer.close()
        return False
    except (OSError, http.client.HTTPException):
        # Refused, reset, a timeout or a half-made TLS handshake (OSErrors, some wrapped in
        # URLError), or a garbled answer: not listening yet.
        return False


def _accepts(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(PROBE_TIMEOUT_SECONDS)
        return probe.connect_ex((address, port)) == 0


class ApplianceContainer(DockerContainer):
    """The appliance over streamable HTTP, hardened as compose.yaml runs it, on the user's network.

    `policy`: a policy file or a dict (see `lab_policy`); `token`: the bearer token (a random one
    when not given: `container.token`); `mode`: connect (no capabilities) or raw (SYN scans,
    masscan: the setpriv entrypoint and NET_RAW); `network`: the lab network to join, where the
    container answers as `alias`; `create_kwargs`: docker-py `containers.create` arguments that go
    over the hardening (loosening one is the caller's decision); `tls`: serve both listeners over
    TLS with these files (`url` is https then, `client()` trusts `tls.ca`). `start()` returns
    once `/readyz` says ready, or raises ContainerNotReadyError with the container's logs.

        with ApplianceContainer(policy=lab_policy(target.address), network=net) as appliance:
            async with appliance.client() as client:
                await client.call_tool("nmap_scan", {"target": target.address, "ports": "8080"})
    """

    def __init__(
        self,
        image: str = DEFAULT_IMAGE,
        *,
        policy: Policy,
        token: str | None = None,
        mode: Mode = "connect",
        network: Network | None = None,
        alias: str = "appliance",
        seccomp_profile: Path | None = None,
        tls: TlsFiles | None = None,
        ready_timeout: float = READY_TIMEOUT_SECONDS,
        docker_client_kw: dict[str, Any] | None = None,
        **create_kwargs: Any,
    ) -> None:
        super().__init__(image, docker_client_kw=docker_client_kw)
        self.tls = tls
        self.token = token if token is not None else secrets.token_urlsafe(32)
        self.mode: Mode = mode
        self.alias = alias
        self._policy = policy
        self._lab_network = network
        self._ready_timeout = ready_timeout
        self._workdir: Path | None = None
        for key, value in appliance_environment(mode, alias, tls=tls is not None).items():
            self.with_env(key, value)
        # with_tmpfs_mount() takes a size only; compose's mount options go in verbatim.
        self.tmpfs["/tmp"] = "size=16m,noexec,nosuid,nodev"  # noqa: S108 - the container's own tmpfs
        if mode == "connect":
            self.with_command(["serve"])
        # with_kwargs() replaces what it had: the caller's arguments go over the hardening.
        self.with_kwargs(**{**appliance_hardening(mode, seccomp_profile), **create_kwargs})
        if network is not None:
            self.with_network(network).with_network_aliases(alias)

    def start(self) -> Self:
        """Write the policy and token, start the container, wait until it is ready (or remove it)."""
        self._workdir = Path(tempfile.mkdtemp(prefix="appliance-testing-"))
        policy_dir = self._workdir / "policies"
        policy_dir.mkdir()
        write_policy(self._policy, policy_dir)
        self.with_volume_mapping(policy_dir, CONTAINER_POLICY_DIR, "ro")
        self.with_volume_mapping(write_token(self.token, self._workdir), CONTAINER_TOKEN_PATH, "ro")
        if self.tls is not None:
            cert, key = copy_tls_files(self.tls, self._workdir)
            self.with_volume_mapping(cert, CONTAINER_TLS_CERT_PATH, "ro")
            self.with_volume_mapping(key, CONTAINER_TLS_KEY_PATH, "ro")
        try:
            super().start()
            _wait_for(self, self._ready, f"appliance ({self.image})", self._ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, force: bool = True, delete_volume: bool = True) -> None:
        """Remove the container and the policy and token files; a second call does nothing."""
        try:
            if self._container is not None:
                super().stop(force=force, delete_volume=delete_volume)
                self._container = None
        finally:
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None

    def _ready(self) -> bool:
        url = f"{self._scheme}://{self.address}:{HEALTH_PORT}/readyz"
        return _http_ok(url, {"Host": f"{self.alias}:{HEALTH_PORT}"}, self._verify)

    @property
    def _scheme(self) -> str:
        return "http" if self.tls is None else "https"

    @property
    def _verify(self) -> ssl.SSLContext | None:
        return None if self.tls is None else self.tls.client_context()

    @property
    def address(self) -> str:
        """The container's address on its network (the host reaches it there; nothing is published)."""
        return _address(self, self._lab_network)

    @property
    def url(self) -> str:
        """The MCP endpoint; send `headers` with each request."""
        return f"{self._scheme}://{self.address}:{MCP_PORT}/mcp"

    @property
    def headers(self) -> dict[str, str]:
        """The bearer token, and a Host header the appliance accepts (it refuses a bare address)."""
        return {"Authorization": f"Bearer {self.token}", "Host": f"{self.alias}:{MCP_PORT}"}

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[Client]:
        """A connected SDK `mcp.Client` over streamable HTTP with the token."""
        # The transport leaves an HTTP client it was handed open: closing it is ours.
        async with (
            mcp_http_client(headers=self.headers, verify=self._verify) as http,
            Client(streamable_http_client(self.url, http_client=http)) as client,
        ):
            yield client


class LabTargetContainer(DockerContainer):
    """The lab target image (busybox httpd on port 8080), hardened as compose.yaml's `web`, on the
    user's network as `alias` (`create_kwargs` as for ApplianceContainer). `start()` returns once
    its web server accepts connections."""

    def __init__(
        self,
        image: str = DEFAULT_LAB_IMAGE,
        *,
        network: Network,
        alias: str = "web.lab.internal",
        ready_timeout: float = READY_TIMEOUT_SECONDS,
        docker_client_kw: dict[str, Any] | None = None,
        **create_kwargs: Any,
    ) -> None:
        super().__init__(image, docker_client_kw=docker_client_kw)
        self.alias = alias
        self.port = LAB_PORT
        self._lab_network = network
        self._ready_timeout = ready_timeout
        self.with_network(network).with_network_aliases(alias)
        self.with_kwargs(**{**lab_target_hardening(), **create_kwargs})

    def start(self) -> Self:
        """Start the container and wait for its web server (or remove it)."""
        try:
            super().start()
            _wait_for(
                self, lambda: _accepts(self.address, self.port), f"lab target ({self.image})", self._ready_timeout
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, force: bool = True, delete_volume: bool = True) -> None:
        """Remove the container; a second call does nothing."""
        if self._container is not None:
            super().stop(force=force, delete_volume=delete_volume)
            self._container = None

    @property
    def address(self) -> str:
        """The target's address on the lab network: what a policy allows and a scan names."""
        return _address(self, self._lab_network)
