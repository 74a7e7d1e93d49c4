"""compose.yaml's run-time settings as `docker run` flags and docker-py arguments: the one
translator the benchmark (bench/lab.py) and the container tests (tests/integration) share.

The settings are read from `docker compose config`, not copied, so a change to compose.yaml is
what gets measured and tested. Each service becomes a ServiceSpec; `run_args()` gives the
`docker run` flags, `create_kwargs()` the docker-py `containers.create` arguments.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "compose.yaml"
# `docker compose config` takes a few hundred milliseconds; a hung engine must not hang the run.
COMPOSE_CONFIG_TIMEOUT_SECONDS = 60
DOCKER = shutil.which("docker") or "/usr/bin/docker"


class ComposeError(Exception):
    """compose.yaml could not be read or names something that does not exist; the message says what."""


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)")
_DURATION_NS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def duration_ns(text: str) -> int:
    """A compose duration ("10s", "1m30s", "500ms") in nanoseconds, as the Engine API wants it."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ComposeError(f"not a compose duration: {text!r}")
    return sum(int(float(number) * _DURATION_NS[unit]) for number, unit in parts)


def compose_env(**extra: str) -> dict[str, str]:
    """The environment for `docker compose`: ours, minus variables that would move its ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "RAW_APPLIANCE_", "COMPOSE_"))}
    env.update(extra)
    return env


def compose_services(env: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """compose.yaml's services (every profile) as `docker compose config` resolves them."""
    done = subprocess.run(
        [
            DOCKER,
            "compose",
            "-f",
            str(COMPOSE_FILE),
            "--profile",
            "raw",
            "--profile",
            "demo",
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else compose_env(),
        timeout=COMPOSE_CONFIG_TIMEOUT_SECONDS,
        check=False,
    )
    if done.returncode != 0:
        raise ComposeError(f"docker compose config failed: {done.stderr.strip()}")
    services: dict[str, dict[str, Any]] = json.loads(done.stdout)["services"]
    return services


# compose.yaml binds both listeners to the appliance's address on its `front` network; a
# container the tests or the benchmark start on their own lab network alone has no such address.
FRONT_BINDINGS = ("APPLIANCE_HOST", "APPLIANCE_HEALTH_HOST")


def _without_front_binding(environment: dict[str, str]) -> dict[str, str]:
    return {**environment, **{key: "0.0.0.0" for key in FRONT_BINDINGS if key in environment}}  # noqa: S104


@dataclass(frozen=True)
class ServiceSpec:
    """The run-time settings compose.yaml gives one service, ready for `docker run` or docker-py."""

    name: str
    user: str
    cap_drop: tuple[str, ...]
    cap_add: tuple[str, ...]
    security_opt: tuple[str, ...]
    read_only: bool
    tmpfs: Mapping[str, str]
    mem_limit: int
    nano_cpus: int
    cpu_shares: int
    pids_limit: int
    restart: str
    restart_retries: int
    init: bool
    environment: Mapping[str, str]
    entrypoint: tuple[str, ...] | None
    command: tuple[str, ...] | None
    healthcheck: Mapping[str, Any] | None = field(default=None)

    @classmethod
    def from_compose(cls, name: str, data: Mapping[str, Any]) -> ServiceSpec:
        """One service of `docker compose config --format json`."""
        restart_name, _, restart_retries = str(data.get("restart", "no")).partition(":")
        tmpfs: dict[str, str] = {}
        for entry in data.get("tmpfs", []):
            path, _, options = entry.partition(":")
            tmpfs[path] = options
        health = data.get("healthcheck")
        healthcheck = None
        if health and not health.get("disable"):
            healthcheck = {
                "test": health["test"],
                "interval": duration_ns(health["interval"]),
                "timeout": duration_ns(health["timeout"]),
                "start_period": duration_ns(health["start_period"]),
                "retries": health["retries"],
            }
        return cls(
            name=name,
            user=data["user"],
            cap_drop=tuple(data.get("cap_drop", ())),
            cap_add=tuple(data.get("cap_add", ())),
            security_opt=tuple(data.get("security_opt", ())),
            read_only=bool(data.get("read_only")),
            tmpfs=tmpfs,
            mem_limit=int(data["mem_limit"]),
            nano_cpus=int(float(data["cpus"]) * 10**9),
            cpu_shares=int(data["cpu_shares"]),
            pids_limit=int(data["pids_limit"]),
            restart=restart_name,
            restart_retries=int(restart_retries or 0),
            init=bool(data.get("init")),
            environment=_without_front_binding({k: str(v) for k, v in (data.get("environment") or {}).items()}),
            entrypoint=tuple(data["entrypoint"]) if data.get("entrypoint") else None,
            command=tuple(data["command"]) if data.get("command") else None,
            healthcheck=healthcheck,
        )

    def _security_options(self, *, inline: bool) -> list[str]:
        """security_opt with the seccomp profile path made absolute (CLI) or replaced by its JSON
        (the Engine API takes the profile itself; the docker CLI and compose read the file)."""
        options = []
        for option in self.security_opt:
            key, _, value = option.partition("=")
            if key == "seccomp" and value != "unconfined":
                path = (COMPOSE_FILE.parent / value).resolve()
                if not path.is_file():
                    raise ComposeError(f"{self.name}: compose.yaml names a seccomp profile that does not exist: {path}")
                option = f"seccomp={json.dumps(json.loads(path.read_text())) if inline else path}"
            options.append(option)
        return options

    def create_kwargs(self) -> dict[str, Any]:
        """docker-py `containers.create` arguments (command, environment and tmpfs are set apart)."""
        kwargs: dict[str, Any] = {
            "user": self.user,
            "cap_drop": list(self.cap_drop),
            "cap_add": list(self.cap_add) or None,
            "security_opt": self._security_options(inline=True),
            "read_only": self.read_only,
            "mem_limit": self.mem_limit,
            "nano_cpus": self.nano_cpus,
            "cpu_shares": self.cpu_shares,
            "pids_limit": self.pids_limit,
            "restart_policy": {"Name": self.restart, "MaximumRetryCount": self.restart_retries},
            "init": self.init,
        }
        if self.entrypoint:
            kwargs["entrypoint"] = list(self.entrypoint)
        if self.healthcheck:
            kwargs["healthcheck"] = dict(self.healthcheck)
        return kwargs

    def run_args(self) -> list[str]:
        """`docker run` flags (before the image). The image's own health check applies."""
        args = ["--user", self.user, "--memory", str(self.mem_limit), "--cpus", str(self.nano_cpus / 10**9)]
        args += ["--cpu-shares", str(self.cpu_shares), "--pids-limit", str(self.pids_limit)]
        args += [f"--cap-drop={cap}" for cap in self.cap_drop]
        args += [f"--cap-add={cap}" for cap in self.cap_add]
        args += [f"--security-opt={option}" for option in self._security_options(inline=False)]
        args += [f"--tmpfs={path}:{options}" for path, options in self.tmpfs.items()]
        if self.read_only:
            args.append("--read-only")
        if self.init:
            args.append("--init")
        if self.entrypoint:
            args.append(f"--entrypoint={self.entrypoint[0]}")
        return args

    def run_command(self) -> list[str]:
        """What follows the image in `docker run`: the rest of the entrypoint, then the command."""
        rest = list(self.entrypoint[1:]) if self.entrypoint else []
        return rest + list(self.command or ())
