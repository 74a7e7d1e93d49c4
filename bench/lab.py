"""The benchmark's lab: an internal network, one lab target on it, scope policies that allow that
target's exact address only, and compose.yaml's run-time settings for the appliance as
`docker run` flags.

The appliance's hardening and limits are read from compose.yaml (`docker compose config`), not
copied here, so a change there is what gets measured. Two departures, both named in the report:
no health check (its `docker exec` every few seconds would land inside the measurements) and no
restart policy (a benchmark container must stay down once stopped).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.docker import (
    BENCH_LABEL,
    DOCKER,
    BenchError,
    container_ip,
    docker,
    listening,
    log,
    remove_labelled,
    wait_until,
)

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "compose.yaml"
COMPOSE_POLICY = REPO / "policies" / "compose-scope.yaml"
IMAGE = os.environ.get("IMAGE", "mcp-scanner-appliance:latest")
LAB_IMAGE = os.environ.get("LAB_IMAGE", "mcp-scanner-lab-target:latest")
TARGET_PORT = 8080
SECRET_TARGET = "/run/secrets/appliance_auth_token"  # noqa: S105 - where compose mounts it, not a secret
# `docker compose config` reads one file; a second or two even on a loaded machine.
COMPOSE_CONFIG_TIMEOUT_SECONDS = 60
# busybox httpd listens within milliseconds of the container starting.
TARGET_READY_TIMEOUT_SECONDS = 30
# compose.yaml keys that shape the appliance's container and that the flags below apply or
# deliberately leave out; any other key is reported as "not applied" in the results.
HANDLED_KEYS = frozenset(
    {
        "user", "cap_drop", "cap_add", "security_opt", "read_only", "tmpfs", "mem_limit", "cpus",
        "cpu_shares", "pids_limit", "environment", "command", "entrypoint", "init", "image",
        "networks", "ports", "volumes", "secrets", "healthcheck", "restart", "profiles",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Deployment:
    """compose.yaml's `appliance` service as `docker run` flags and environment."""

    flags: tuple[str, ...]
    environment: Mapping[str, str]
    command: tuple[str, ...]
    policy_mount: str  # where compose mounts the policy folder inside the container
    not_applied: tuple[str, ...]

    @classmethod
    def from_compose(cls, token_file: Path) -> Deployment:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "COMPOSE_"))}
        env["APPLIANCE_TOKEN_FILE"] = str(token_file)
        done = subprocess.run(
            [DOCKER, "compose", "-f", str(COMPOSE_FILE), "config", "--format", "json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=COMPOSE_CONFIG_TIMEOUT_SECONDS,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"docker compose config failed: {done.stderr.strip()}")
        service: dict[str, Any] = json.loads(done.stdout)["services"]["appliance"]
        return cls(
            flags=tuple(_flags(service)),
            environment={k: str(v) for k, v in (service.get("environment") or {}).items()},
            command=tuple(service.get("command") or ("serve",)),
            policy_mount=_policy_mount(service),
            not_applied=tuple(sorted(set(service) - HANDLED_KEYS)),
        )


def _flags(service: Mapping[str, Any]) -> list[str]:
    flags = ["--user", str(service["user"])]
    flags += [f"--cap-drop={cap}" for cap in service.get("cap_drop", [])]
    flags += [f"--cap-add={cap}" for cap in service.get("cap_add", [])]
    for option in service.get("security_opt", []):
        key, _, value = option.partition("=")
        if key == "seccomp" and value != "unconfined":
            profile = (COMPOSE_FILE.parent / value).resolve()
            if not profile.is_file():
                raise BenchError(f"compose.yaml names a seccomp profile that does not exist: {profile}")
            option = f"seccomp={profile}"
        flags.append(f"--security-opt={option}")
    if service.get("read_only"):
        flags.append("--read-only")
    flags += [f"--tmpfs={entry}" for entry in service.get("tmpfs", [])]
    if "mem_limit" in service:
        flags.append(f"--memory={service['mem_limit']}")
    if "cpus" in service:
        flags.append(f"--cpus={service['cpus']}")
    if "cpu_shares" in service:
        flags.append(f"--cpu-shares={service['cpu_shares']}")
    if "pids_limit" in service:
        flags.append(f"--pids-limit={service['pids_limit']}")
    if service.get("init"):
        flags.append("--init")
    if service.get("entrypoint"):
        raise BenchError("compose.yaml's appliance service sets an entrypoint; the benchmark expects the image's")
    return flags


def _policy_mount(service: Mapping[str, Any]) -> str:
    policy_dir = str(Path(service["environment"]["APPLIANCE_POLICY_PATH"]).parent)
    for volume in service.get("volumes", []):
        if volume.get("target") == policy_dir:
            return policy_dir
    raise BenchError(f"compose.yaml mounts no policy folder at {policy_dir}")


@dataclass
class Lab:
    """A running lab; `appliance_run()` gives the `docker run` arguments for the appliance on it."""

    run_id: str
    network: str
    target_name: str
    target_ip: str
    workdir: Path
    token: str
    deployment: Deployment
    keep_workdir: bool = field(default=False)

    @property
    def policy_dir(self) -> Path:
        return self.workdir / "policies"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    def name(self, role: str) -> str:
        return f"bench-{self.run_id}-{role}"

    def appliance_run(
        self,
        name: str,
        env: Mapping[str, str],
        *,
        policy: str = "scope.yaml",
        interactive: bool = False,
        detach: bool = False,
        entrypoint: str | None = None,
        command: Sequence[str] | None = None,
    ) -> list[str]:
        """`docker run` arguments (without "docker") for the appliance image with compose's
        hardening and limits, on the lab network only, with a bench policy and the token."""
        args = ["run", "--name", name, "--label", f"{BENCH_LABEL}={self.run_id}", "--network", self.network]
        args += ["-i"] if interactive else []
        args += ["--detach"] if detach else []
        args += ["--no-healthcheck", *self.deployment.flags]
        args += ["--volume", f"{self.policy_dir}:{self.deployment.policy_mount}:ro"]
        args += ["--volume", f"{self.workdir / 'token'}:{SECRET_TARGET}:ro"]
        environment = {
            **self.deployment.environment,
            "APPLIANCE_POLICY_PATH": f"{self.deployment.policy_mount}/{policy}",
            **env,
        }
        for key, value in environment.items():
            args += ["--env", f"{key}={value}"]
        if entrypoint is not None:
            args.append(f"--entrypoint={entrypoint}")
        return [*args, IMAGE, *(command if command is not None else self.deployment.command)]


def _write_policies(folder: Path, target_ip: str) -> None:
    """compose-scope.yaml (compose's policy, default limits) pinned to the target's address, and
    a copy that lets four nmap scans run at once for the shutdown figure."""
    base = yaml.safe_load(COMPOSE_POLICY.read_text())
    base["scope"]["allow_networks"] = [f"{target_ip}/32"]
    base["scope"]["deny_networks"] = []
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)  # bind-mounted: the container's UID 65532 reads it
    shutdown = json.loads(json.dumps(base))
    shutdown["tools"]["nmap_scan"]["max_concurrent"] = 4
    shutdown.setdefault("resilience", {})["max_concurrent_scans"] = 4
    for name, policy in (("scope.yaml", base), ("shutdown.yaml", shutdown)):
        path = folder / name
        path.write_text(yaml.safe_dump(policy))
        path.chmod(0o644)


def check_images() -> None:
    for image in (IMAGE, LAB_IMAGE):
        if not docker("image", "inspect", "--format", "{{.Id}}", image, check=False).strip():
            raise BenchError(f"image {image} is missing: build it with scripts/build-image")


@contextmanager
def lab() -> Iterator[Lab]:
    """Build the lab, yield it, and remove every container, the network and the work folder."""
    check_images()
    run_id = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix=f"mcp-bench-{run_id}-"))
    workdir.chmod(0o755)
    network = f"bench-{run_id}-lab"
    built: Lab | None = None
    try:
        token = "bench-" + uuid.uuid4().hex
        token_file = workdir / "token"
        token_file.write_text(token)
        token_file.chmod(0o444)
        (workdir / "logs").mkdir()
        deployment = Deployment.from_compose(token_file)
        docker("network", "create", "--internal", "--label", f"{BENCH_LABEL}={run_id}", network)
        target = f"bench-{run_id}-target"
        docker(
            "run", "--detach", "--name", target, "--label", f"{BENCH_LABEL}={run_id}", "--network", network,
            "--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges:true", "--user", "65532:65532",
            "--no-healthcheck", LAB_IMAGE,
        )  # fmt: skip
        target_ip = container_ip(target, network)
        wait_until(
            lambda: listening(target_ip, TARGET_PORT), TARGET_READY_TIMEOUT_SECONDS, 0.1, "the lab target to listen"
        )
        _write_policies(workdir / "policies", target_ip)
        built = Lab(run_id, network, target, target_ip, workdir, token, deployment)
        yield built
    except Exception:
        # A failure keeps the servers' logs for a look; an interrupt (Ctrl-C, SIGTERM) does not.
        if built is not None:
            built.keep_workdir = True
        raise
    finally:
        remove_labelled(run_id)
        docker("network", "rm", network, check=False)
        if built is not None and built.keep_workdir:
            log(f"logs kept in {workdir / 'logs'}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
