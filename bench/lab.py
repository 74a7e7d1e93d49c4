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
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.compose import REPO, ComposeError, ServiceSpec, compose_env, compose_services
from bench.docker import (
    BENCH_LABEL,
    BenchError,
    container_ip,
    docker,
    listening,
    log,
    remove_labelled,
    wait_until,
)

COMPOSE_POLICY = REPO / "policies" / "compose-scope.yaml"
IMAGE = os.environ.get("IMAGE", "mcp-scanner-appliance:latest")
LAB_IMAGE = os.environ.get("LAB_IMAGE", "mcp-scanner-lab-target:latest")
TARGET_PORT = 8080
SECRET_TARGET = "/run/secrets/appliance_auth_token"  # noqa: S105 - where compose mounts it, not a secret
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
        """The flags come from bench/compose.py, the translator the container tests use too."""
        try:
            service = compose_services(compose_env(APPLIANCE_TOKEN_FILE=str(token_file)))["appliance"]
            spec = ServiceSpec.from_compose("appliance", service)
            flags = spec.run_args()
        except ComposeError as exc:
            raise BenchError(str(exc)) from exc
        if spec.entrypoint:
            raise BenchError("compose.yaml's appliance service sets an entrypoint; the benchmark expects the image's")
        return cls(
            flags=tuple(flags),
            environment=dict(spec.environment),
            command=spec.command or ("serve",),
            policy_mount=_policy_mount(service),
            not_applied=tuple(sorted(set(service) - HANDLED_KEYS)),
        )


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
    table = shutdown["limits"]["concurrency"]
    table["per_tool"]["nmap_scan"]["running"] = 4
    table["global"]["running"] = 4
    table["per_principal"]["running"] = 4  # the bench's one client is one principal
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
