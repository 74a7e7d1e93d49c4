"""Value types the policy models share: networks in canonical CIDR form, DNS suffixes, strict models."""

from __future__ import annotations

import ipaddress
import re

from pydantic import BaseModel, ConfigDict, field_validator

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HOSTNAME_SUFFIX = re.compile(r"^\.(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def network(text: str) -> IPNetwork:
    """A network written in canonical CIDR form with host bits zero; ValueError naming the fix."""
    try:
        parsed = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a network in CIDR form with host bits zero ({exc})") from exc
    if str(parsed) != text:
        raise ValueError(f"{text!r} is not in canonical form; write {str(parsed)!r}")
    return parsed


def within(inner: IPNetwork, outer: IPNetwork) -> bool:
    """Every address of `inner` is in `outer` (False across IP versions)."""
    return (
        inner.version == outer.version
        and int(outer.network_address) <= int(inner.network_address)
        and int(inner.broadcast_address) <= int(outer.broadcast_address)
    )


def check_suffixes(value: list[str]) -> list[str]:
    for suffix in value:
        if not HOSTNAME_SUFFIX.fullmatch(suffix):
            raise ValueError(f"{suffix!r} must be a lower-case DNS suffix starting with a dot, e.g. '.lab.internal'")
    return value


class Strict(BaseModel):
    """Unknown keys are errors (a typo must not silently widen scope); values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkLists(Strict):
    """What the global scope and an engagement's scope share: `allow_networks` and
    `deny_networks` in canonical CIDR form, `allow_hostname_suffixes` as DNS suffixes. The
    subclasses declare the fields (their defaults and meanings differ); the checks are one."""

    # In the global scope's order (what `appliance policy validate` prints).
    allow_networks: list[str]
    allow_hostname_suffixes: list[str]
    deny_networks: list[str]

    @field_validator("allow_networks", "deny_networks")
    @classmethod
    def _networks_parse(cls, value: list[str]) -> list[str]:
        for text in value:
            network(text)
        return value

    @field_validator("allow_hostname_suffixes")
    @classmethod
    def _suffixes_canonical(cls, value: list[str]) -> list[str]:
        return check_suffixes(value)

    def allowed(self) -> tuple[IPNetwork, ...]:
        return tuple(network(text) for text in self.allow_networks)

    def denied(self) -> tuple[IPNetwork, ...]:
        return tuple(network(text) for text in self.deny_networks)
