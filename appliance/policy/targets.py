"""Target checks: one IP, one CIDR block or one hostname, in canonical form, inside the scope.

Each check is a small function that raises `ValidationError` with a named rule. The order
matters: syntax first (so nothing unsafe reaches a resolver), then the hostname suffix (so a name
outside the lab never leaves the appliance as a DNS query), then resolution, then the scope of
every address. What these checks do not cover: the *port* of a URL (see `urls.py`) and whether
the target is up.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from appliance.errors import ValidationError
from appliance.policy.fields import within

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], Awaitable[list[str]]]

MAX_TARGET_LENGTH = 253  # the longest DNS name; no IP or CIDR form is longer
DOTTED_QUAD = re.compile(
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}"
)
NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)", re.IGNORECASE)
HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
PREFIX = re.compile(r"0|[1-9][0-9]{0,2}")
RANGE_CHARS = re.compile(r"[0-9.*\-]+")

# Ranges no policy may open, with the rule that names each. Loopback is handled separately
# because `insecure_allow_loopback` may open it for tests and demos.
_BUILTIN_DENY: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "target_denied_unspecified"),
    ("169.254.0.0/16", "target_denied_link_local"),  # cloud metadata lives at 169.254.169.254
    ("224.0.0.0/4", "target_denied_multicast"),
    ("255.255.255.255/32", "target_denied_broadcast"),
    ("240.0.0.0/4", "target_denied_reserved"),
    ("::/128", "target_denied_unspecified"),
    ("fe80::/10", "target_denied_link_local"),
    ("ff00::/8", "target_denied_multicast"),
    ("::ffff:0:0/96", "target_ipv4_mapped_ipv6"),
    ("::/96", "target_ipv4_mapped_ipv6"),  # IPv4-compatible (deprecated) addresses
    # IPv6 ranges that embed an IPv4 address and hand the packet to a relay or translator, which
    # then reaches that IPv4 address past the IPv4 rules. (NAT64 is below: a policy may open it.)
    ("::ffff:0:0:0/96", "target_ipv4_mapped_ipv6"),  # SIIT IPv4-translated (RFC 6145)
    ("2002::/16", "target_ipv4_mapped_ipv6"),  # 6to4: the relay sends to the embedded IPv4 address
    ("2001::/32", "target_ipv4_mapped_ipv6"),  # Teredo: server and client IPv4 addresses embedded
)
# NAT64 prefixes (RFC 6052 well-known, RFC 8215 local use): the translator sends to the IPv4
# address in the last 32 bits. Refused unless `allow_networks` lists the range, and then that
# IPv4 address must pass the IPv4 checks too.
NAT64_PREFIXES: tuple[ipaddress.IPv6Network, ...] = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
)
BUILTIN_DENY: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), rule) for net, rule in _BUILTIN_DENY
)
LOOPBACK: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True)
class Scope:
    """A policy's scope compiled against the facts of this host (own addresses, gateways)."""

    allowed: tuple[IPNetwork, ...]
    denied: tuple[tuple[IPNetwork, str], ...]
    suffixes: tuple[str, ...]
    allow_loopback: bool
    max_hosts: int


@dataclass(frozen=True)
class ParsedTarget:
    """A target whose spelling passed the syntax checks; not yet checked against scope."""

    text: str
    kind: Literal["ip", "cidr", "hostname"]
    network: IPNetwork | None  # set for ip (a /32 or /128) and cidr


@dataclass(frozen=True)
class CheckedTarget:
    """A target inside the scope. `scan_arg` is what the scanner receives: never a hostname."""

    requested: str
    kind: Literal["ip", "cidr", "hostname"]
    scan_arg: str
    hostname: str | None
    addresses: tuple[str, ...]
    host_count: int


def _refuse(rule: str, message: str, recovery: str) -> ValidationError:
    return ValidationError(message, rule=rule, recovery_suggestion=recovery)


ONE_TARGET = "Give exactly one IPv4 address (10.20.0.5), one CIDR block (10.20.0.0/28) or one lab hostname."


def check_target_text(text: str) -> None:
    """Refuse characters and shapes no canonical target has. Does not look at the scope."""
    if not text:
        raise _refuse("target_empty", "the target is empty", ONE_TARGET)
    if len(text) > MAX_TARGET_LENGTH:
        raise _refuse("target_too_long", f"the target is longer than {MAX_TARGET_LENGTH} characters", ONE_TARGET)
    if not text.isascii():
        raise _refuse(
            "target_not_ascii",
            "the target contains non-ASCII characters (look-alike digits, dots or letters are refused)",
            "Spell the target in plain ASCII; internationalised names must be given in punycode (xn--).",
        )
    if any(not ch.isprintable() or ch.isspace() for ch in text):
        raise _refuse("target_control_character", "the target contains whitespace or control characters", ONE_TARGET)
    if text.startswith("-"):
        raise _refuse(
            "target_option_injection", "the target starts with '-', which a scanner would read as an option", ONE_TARGET
        )
    if "," in text or ";" in text:
        raise _refuse(
            "target_list_syntax", "the target is a list; one call scans one target", "Make one call per target."
        )
    if "*" in text or ("-" in text and RANGE_CHARS.fullmatch(text.split("/", 1)[0])):
        raise _refuse(
            "target_range_syntax",
            "nmap range syntax (10.0.0-255.1, 10.*) can expand past the scope check and is refused",
            "Use one CIDR block such as 10.20.0.0/24 instead of a range.",
        )


def parse_target(text: str) -> ParsedTarget:
    """Classify a target as ip, cidr or hostname, refusing every non-canonical spelling."""
    check_target_text(text)
    if ":" in text or "[" in text:
        return _parse_ipv6(text)
    address_part, slash, prefix = text.partition("/")
    labels = address_part.split(".")
    if all(NUMERIC_LABEL.fullmatch(label) for label in labels):
        if not DOTTED_QUAD.fullmatch(address_part):
            raise _refuse(
                "target_noncanonical_ipv4",
                f"{address_part!r} is not a canonical dotted-quad IPv4 address (decimal, hex, octal, "
                "leading zeros and short forms are refused: they mean different addresses to different tools)",
                "Write the address as four decimal numbers 0-255 without leading zeros, e.g. 10.20.0.5.",
            )
        if not slash:
            return ParsedTarget(text, "ip", ipaddress.ip_network(address_part))
        return ParsedTarget(text, "cidr", _cidr(address_part, prefix))
    if slash:
        raise _refuse("target_invalid_hostname", "a hostname cannot carry a /prefix", ONE_TARGET)
    return ParsedTarget(text.lower(), "hostname", None)


def _cidr(address: str, prefix: str) -> IPNetwork:
    if not PREFIX.fullmatch(prefix):
        raise _refuse("target_invalid_cidr", f"/{prefix} is not a canonical prefix length", ONE_TARGET)
    try:
        return ipaddress.ip_network(f"{address}/{prefix}", strict=True)
    except ValueError as exc:
        # Only a host-bits error has a block to suggest; a prefix too long for the family has none.
        hint = ONE_TARGET
        if "host bits" in str(exc):
            hint = f"Did you mean {ipaddress.ip_network(f'{address}/{prefix}', strict=False)}?"
        raise _refuse("target_invalid_cidr", f"{address}/{prefix} is not a CIDR block: {exc}", hint) from exc


def _parse_ipv6(text: str) -> ParsedTarget:
    if "%" in text:
        raise _refuse("target_ipv6_zone", "IPv6 zone ids (%eth0) are refused", "Give a global or lab IPv6 address.")
    address_part, slash, prefix = text.partition("/")
    try:
        address = ipaddress.IPv6Address(address_part)
    except ValueError as exc:
        raise _refuse("target_invalid_ipv6", f"{address_part!r} is not an IPv6 address", ONE_TARGET) from exc
    if address.ipv4_mapped is not None or (address.packed[:12] == bytes(12) and int(address) > 1):
        raise _refuse(
            "target_ipv4_mapped_ipv6",
            "IPv4-mapped and IPv4-compatible IPv6 addresses are refused (they bypass IPv4 scope rules)",
            "Give the IPv4 address itself.",
        )
    if address.compressed != address_part.lower() or address_part != address_part.lower():
        raise _refuse(
            "target_noncanonical_ipv6",
            f"{address_part!r} is not in canonical form",
            f"Write it as {address.compressed}.",
        )
    if not slash:
        return ParsedTarget(text, "ip", ipaddress.ip_network(address))
    return ParsedTarget(text, "cidr", _cidr(address_part, prefix))


def check_hostname(name: str, suffixes: Iterable[str], *, allow_bare_suffix: bool = False) -> str:
    """Check a hostname's syntax and lab suffix without resolving it. Returns it lower-cased."""
    # Callers may pass raw request text (gobuster dns mode): refuse non-ASCII before lower(),
    # which maps look-alikes such as the Kelvin sign (U+212A) to ASCII letters.
    check_target_text(name)
    name = name.lower()
    if name.endswith("."):
        raise _refuse(
            "target_trailing_dot",
            "trailing dots are refused (they change how the name is resolved)",
            f"Write {name.rstrip('.')!r} without the final dot.",
        )
    labels = name.split(".")
    if len(labels) < 2 or not all(HOST_LABEL.fullmatch(label) for label in labels):
        raise _refuse(
            "target_invalid_hostname",
            f"{name!r} is not a valid DNS name (letters, digits and inner hyphens, labels of 1-63)",
            ONE_TARGET,
        )
    for suffix in suffixes:
        if name.endswith(suffix) or (allow_bare_suffix and name == suffix[1:]):
            return name
    raise _refuse(
        "target_hostname_suffix",
        f"{name!r} is not under an allowed lab suffix ({', '.join(suffixes)}); it was not resolved",
        "Use a name under an allowed suffix, or the lab address itself.",
    )


def check_address(address: IPAddress, scope: Scope) -> None:
    """Refuse an address the deny list holds or the allow list lacks. Deny always wins."""
    loopback = any(address in net for net in LOOPBACK)
    if loopback and not scope.allow_loopback:
        raise _refuse(
            "target_denied_loopback",
            f"{address} is a loopback address: the appliance never scans itself",
            "Scan a lab address. (Only test policies set insecure_allow_loopback.)",
        )
    for network, rule in scope.denied:
        # An opened loopback still obeys the operator's own denials (the built-in ranges that
        # contain ::1, such as ::/96, are about other addresses).
        if address in network and (not loopback or rule == "target_denied_policy"):
            raise _refuse(rule, f"{address} is on the never-scan list ({network})", "Choose another lab target.")
    if loopback:
        return
    if isinstance(address, ipaddress.IPv6Address) and any(address in prefix for prefix in NAT64_PREFIXES):
        _check_nat64_address(address, scope)
    if not any(address in network for network in scope.allowed):
        if address.version == 6 and not any(n.version == 6 for n in scope.allowed):
            raise _refuse(
                "target_ipv6_not_allowed", f"{address}: IPv6 is not in this scope", "Use an IPv4 lab address."
            )
        raise _refuse(
            "target_out_of_scope",
            f"{address} is outside the allowed networks",
            f"Allowed networks: {', '.join(str(n) for n in scope.allowed)}.",
        )


NAT64_PREFIX_LENGTH = 96  # the only RFC 6052 layout whose IPv4 is the last 32 bits
NAT64_CLOSED = (
    "NAT64 prefixes are refused unless the policy's allow_networks lists the translator's /96 "
    "(or a narrower part of it)"
)


def _nat64_opened(scope: Scope) -> list[IPNetwork]:
    """Allowed networks inside a NAT64 prefix: only those open it (a broad ::/0 does not), and
    only when /96 or narrower: the IPv4 check reads the last 32 bits (RFC 6052's /96 layout); a
    translator on a /48-/64 layout reads other bits, which a wider entry would leave unchecked."""
    return [
        n
        for n in scope.allowed
        if n.prefixlen >= NAT64_PREFIX_LENGTH and any(within(n, prefix) for prefix in NAT64_PREFIXES)
    ]


def _check_nat64_address(address: ipaddress.IPv6Address, scope: Scope) -> None:
    """An opened NAT64 address is only as good as the IPv4 address the translator sends to."""
    if not any(address in network for network in _nat64_opened(scope)):
        raise _refuse(
            "target_ipv4_mapped_ipv6",
            f"{address} is a NAT64 address: the translator would send to its embedded IPv4 address. {NAT64_CLOSED}",
            "Give the IPv4 address itself, or ask the operator to list the NAT64 range in allow_networks.",
        )
    embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    with _translated(address, embedded):
        if any(embedded in net for net in LOOPBACK):
            # The translator's loopback, not ours: insecure_allow_loopback does not open it.
            raise _refuse("target_denied_loopback", f"{embedded} is a loopback address", "Choose another target.")
        check_address(embedded, scope)


@contextlib.contextmanager
def _translated(target: IPAddress | IPNetwork, embedded: IPAddress | IPNetwork) -> Iterator[None]:
    """An IPv4 check of a NAT64 target's embedded part: its refusal keeps its rule, names both."""
    try:
        yield
    except ValidationError as exc:
        raise _refuse(
            exc.rule,
            f"{target} is NAT64-translated to {embedded}, which is refused: {exc.message}",
            exc.recovery_suggestion,
        ) from exc


def _check_nat64_network(network: ipaddress.IPv6Network, scope: Scope) -> None:
    """A NAT64 block must lie in an allowed network, and its embedded IPv4 block must be in scope."""
    if not any(within(network, allowed) for allowed in _nat64_opened(scope)) or network.prefixlen < 96:
        raise _refuse(
            "target_ipv4_mapped_ipv6",
            f"{network} overlaps a NAT64 prefix: the translator would send to the embedded IPv4 addresses. "
            f"{NAT64_CLOSED}, and a block must not be wider than /96",
            "Give the IPv4 block itself, or ask the operator to list the NAT64 range in allow_networks.",
        )
    embedded = ipaddress.IPv4Network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
    with _translated(network, embedded):
        if any(_overlaps(embedded, loop) for loop in LOOPBACK):
            raise _refuse("target_denied_loopback", f"{embedded} overlaps loopback", "Choose another block.")
        check_network(embedded, scope)


def _overlaps(a: IPNetwork, b: IPNetwork) -> bool:
    return (
        a.version == b.version
        and int(a.network_address) <= int(b.broadcast_address)
        and int(b.network_address) <= int(a.broadcast_address)
    )


def check_network(network: IPNetwork, scope: Scope) -> None:
    """A CIDR block is in scope when every address in it is: inside one allowed network, no deny overlap."""
    if network.num_addresses > scope.max_hosts:
        raise _refuse(
            "target_cidr_too_large",
            f"{network} covers {network.num_addresses} addresses; the limit is {scope.max_hosts}",
            "Split the range into smaller CIDR blocks, one per call.",
        )
    loopback = any(_overlaps(network, loop) for loop in LOOPBACK)
    if loopback and not (scope.allow_loopback and any(within(network, loop) for loop in LOOPBACK)):
        raise _refuse("target_denied_loopback", f"{network} overlaps loopback", "Scan a lab range.")
    for denied, rule in scope.denied:
        if _overlaps(network, denied) and (not loopback or rule == "target_denied_policy"):
            raise _refuse(
                rule, f"{network} contains never-scan addresses ({denied})", "Use a smaller block that leaves them out."
            )
    if isinstance(network, ipaddress.IPv6Network) and any(_overlaps(network, p) for p in NAT64_PREFIXES):
        _check_nat64_network(network, scope)
    if not loopback and not any(within(network, allowed) for allowed in scope.allowed):
        raise _refuse(
            "target_out_of_scope",
            f"{network} is not inside one allowed network",
            f"Allowed networks: {', '.join(str(n) for n in scope.allowed)}.",
        )


async def check_target(text: str, scope: Scope, resolve: Resolver | None, *, allow_cidr: bool = True) -> CheckedTarget:
    """The whole target check. Hostnames are resolved and every address must be in scope.

    `resolve` None (a fleet front): a name is checked up to its suffix and left unresolved; the
    segment that runs it resolves it and checks every address against its own scope."""
    parsed = parse_target(text)
    if parsed.kind == "cidr":
        assert parsed.network is not None
        if not allow_cidr:
            raise _refuse("target_cidr_not_allowed", "this tool takes one host, not a block", ONE_TARGET)
        check_network(parsed.network, scope)
        return CheckedTarget(text, "cidr", str(parsed.network), None, (), parsed.network.num_addresses)
    if parsed.kind == "ip":
        assert parsed.network is not None
        address = parsed.network.network_address
        check_address(address, scope)
        return CheckedTarget(text, "ip", str(address), None, (str(address),), 1)
    name = check_hostname(parsed.text, scope.suffixes)
    if resolve is None:
        return CheckedTarget(text, "hostname", name, name, (), 1)
    answers = await resolve(name)
    if not answers:
        raise _refuse(
            "target_hostname_unresolvable", f"{name!r} did not resolve", "Check the lab DNS or use the address."
        )
    addresses = [ipaddress.ip_address(a) for a in answers]
    for address in addresses:
        try:
            check_address(address, scope)
        except ValidationError as exc:
            raise _refuse(
                "target_hostname_resolves_out_of_scope",
                f"{name!r} resolves to {address}, which is refused ({exc.rule}): every address must be in scope",
                "Fix the lab DNS record or scan an in-scope address directly.",
            ) from exc
    # Prefer IPv4: scope rules and scanners treat it uniformly; the choice is deterministic.
    chosen = sorted(addresses, key=lambda a: (a.version, int(a)))[0]
    return CheckedTarget(text, "hostname", str(chosen), name, tuple(str(a) for a in addresses), 1)
