"""Value types the policy models share: networks in canonical CIDR form, DNS suffixes, strict models."""

from __future__ import annotations

import ipaddress
import re

from pydantic import BaseModel, ConfigDict

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


def check_suffixes(value: list[str]) -> list[str]:
    for suffix in value:
        if not HOSTNAME_SUFFIX.fullmatch(suffix):
            raise ValueError(f"{suffix!r} must be a lower-case DNS suffix starting with a dot, e.g. '.lab.internal'")
    return value


class Strict(BaseModel):
    """Unknown keys are errors (a typo must not silently widen scope); values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)
