"""What this process may do: UID, capability sets, no-new-privileges, seccomp, read-only root.

Read from /proc/self/status and /proc/self/mounts: the kernel's own view, not a guess.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError

from appliance import yamlload
from appliance.errors import PolicyError

CAP_NET_RAW = 13
CAPABILITY_NAMES = {
    0: "CHOWN",
    1: "DAC_OVERRIDE",
    2: "DAC_READ_SEARCH",
    3: "FOWNER",
    4: "FSETID",
    5: "KILL",
    6: "SETGID",
    7: "SETUID",
    8: "SETPCAP",
    9: "LINUX_IMMUTABLE",
    10: "NET_BIND_SERVICE",
    11: "NET_BROADCAST",
    12: "NET_ADMIN",
    13: "NET_RAW",
    14: "IPC_LOCK",
    15: "IPC_OWNER",
    16: "SYS_MODULE",
    17: "SYS_RAWIO",
    18: "SYS_CHROOT",
    19: "SYS_PTRACE",
    20: "SYS_PACCT",
    21: "SYS_ADMIN",
    22: "SYS_BOOT",
    23: "SYS_NICE",
    24: "SYS_RESOURCE",
    25: "SYS_TIME",
    26: "SYS_TTY_CONFIG",
    27: "MKNOD",
    28: "LEASE",
    29: "AUDIT_WRITE",
    30: "AUDIT_CONTROL",
    31: "SETFCAP",
    32: "MAC_OVERRIDE",
    33: "MAC_ADMIN",
    34: "SYSLOG",
    35: "WAKE_ALARM",
    36: "BLOCK_SUSPEND",
    37: "AUDIT_READ",
    38: "PERFMON",
    39: "BPF",
    40: "CHECKPOINT_RESTORE",
}


def capability_names(mask: int) -> list[str]:
    return [CAPABILITY_NAMES.get(bit, f"CAP_{bit}") for bit in range(64) if mask >> bit & 1]


@dataclass(frozen=True)
class Privileges:
    uid: int
    gid: int
    cap_effective: int
    cap_permitted: int
    cap_bounding: int
    cap_ambient: int
    no_new_privs: bool
    seccomp_mode: int  # 0 off, 1 strict, 2 filter
    root_read_only: bool

    def describe(self) -> dict[str, Any]:
        shown = asdict(self)
        for field in ("cap_effective", "cap_permitted", "cap_bounding", "cap_ambient"):
            shown[field] = capability_names(getattr(self, field))
        return shown


def parse_status(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def root_is_read_only(mounts: str) -> bool:
    """True when the last mount on / (the one in effect) is read-only."""
    read_only = False
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "/":
            read_only = "ro" in parts[3].split(",")
    return read_only


def read_privileges(proc: Path = Path("/proc/self")) -> Privileges:
    status = parse_status((proc / "status").read_text())
    mounts = (proc / "mounts").read_text() if (proc / "mounts").exists() else ""
    return Privileges(
        uid=os.getuid(),
        gid=os.getgid(),
        cap_effective=int(status.get("CapEff", "0"), 16),
        cap_permitted=int(status.get("CapPrm", "0"), 16),
        cap_bounding=int(status.get("CapBnd", "0"), 16),
        cap_ambient=int(status.get("CapAmb", "0"), 16),
        no_new_privs=status.get("NoNewPrivs") == "1",
        seccomp_mode=int(status.get("Seccomp", "0")),
        root_read_only=root_is_read_only(mounts),
    )


class ModeRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    uid: int = Field(ge=0)
    capabilities: list[str] = Field(default_factory=list)
    no_new_privs: bool = True
    seccomp_filter: bool = True
    read_only_root: bool = True

    @field_validator("capabilities")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = set(value) - set(CAPABILITY_NAMES.values())
        if unknown:
            raise ValueError(f"unknown capabilities: {sorted(unknown)}")
        return value

    def mask(self) -> int:
        bits = {name: bit for bit, name in CAPABILITY_NAMES.items()}
        return sum(1 << bits[name] for name in self.capabilities)


class CapabilityPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    modes: dict[Literal["connect", "raw"], ModeRules]


def load_capability_policy(path: Path) -> CapabilityPolicy:
    try:
        return CapabilityPolicy.model_validate(yamlload.safe_load(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError, PydanticValidationError) as exc:
        raise PolicyError(f"capability policy {path} is unusable: {exc}", rule="capability_policy_invalid") from exc


def excess_privileges(held: Privileges, rules: ModeRules) -> list[str]:
    """What this process holds beyond its mode's rules (an empty list means it may start)."""
    allowed = rules.mask()
    problems = []
    if held.uid != rules.uid:
        problems.append(f"runs as uid {held.uid}, the policy requires {rules.uid}")
    for name in ("cap_effective", "cap_permitted", "cap_bounding", "cap_ambient"):
        extra = getattr(held, name) & ~allowed
        if extra:
            problems.append(f"{name} holds {capability_names(extra)} beyond {rules.capabilities or 'none'}")
    if rules.no_new_privs and not held.no_new_privs:
        problems.append("no-new-privileges is off")
    if rules.seccomp_filter and held.seccomp_mode != 2:
        problems.append(f"seccomp mode is {held.seccomp_mode}, a filter (2) is required")
    if rules.read_only_root and not held.root_read_only:
        problems.append("the root filesystem is writable")
    return problems


def missing_privileges(held: Privileges, rules: ModeRules) -> list[str]:
    """Capabilities the mode needs but the process lacks (tools that need them will fail)."""
    lacking = rules.mask() & ~held.cap_effective
    return [f"effective set lacks {capability_names(lacking)}"] if lacking else []
