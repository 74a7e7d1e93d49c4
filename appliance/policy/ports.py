"""Port specification check: `22`, `22,80,443`, `8000-8100`, or a mix, TCP only.

Refuses nmap's other spellings (service names, `[..]` ranges, `*`, protocol prefixes, open-ended
ranges) because they expand to port sets this check could not count. Does not cover UDP: no
tool here offers UDP scans.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from appliance.errors import ValidationError

PORT_ITEM = re.compile(r"(?P<low>[1-9][0-9]{0,4})(?:-(?P<high>[1-9][0-9]{0,4}))?")
MAX_PORT_SPEC_LENGTH = 1024
PORT_RECOVERY = "Write ports as numbers 1-65535, single or as low-high ranges, separated by commas: 22,80,8000-8100."


@dataclass(frozen=True)
class PortSpec:
    text: str
    count: int


def check_ports(text: str, max_ports: int) -> PortSpec:
    """Validate a port list and count the ports it names (overlaps counted once)."""
    if not text:
        raise ValidationError("the port list is empty", rule="ports_empty", recovery_suggestion=PORT_RECOVERY)
    if len(text) > MAX_PORT_SPEC_LENGTH or not text.isascii():
        raise ValidationError(
            "the port list is too long or not ASCII", rule="ports_invalid", recovery_suggestion=PORT_RECOVERY
        )
    if text.startswith("-"):
        raise ValidationError(
            "the port list starts with '-' (an option or an open-ended range)",
            rule="ports_option_injection",
            recovery_suggestion=PORT_RECOVERY,
        )
    ports: set[int] = set()
    for item in text.split(","):
        match = PORT_ITEM.fullmatch(item)
        if match is None:
            raise ValidationError(
                f"{item!r} is not a port or a low-high range", rule="ports_invalid", recovery_suggestion=PORT_RECOVERY
            )
        low = int(match["low"])
        high = int(match["high"]) if match["high"] else low
        if high > 65535 or low > high:
            raise ValidationError(
                f"{item!r} is outside 1-65535 or its range is reversed",
                rule="ports_out_of_range",
                recovery_suggestion=PORT_RECOVERY,
            )
        if high - low + 1 > max_ports:
            break
        ports.update(range(low, high + 1))
        if len(ports) > max_ports:
            break
    else:
        return PortSpec(text, len(ports))
    raise ValidationError(
        f"the port list names more than {max_ports} ports",
        rule="ports_too_many",
        recovery_suggestion=f"Name at most {max_ports} ports per call, or split the scan.",
    )
