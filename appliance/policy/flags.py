"""Extra flags: a per-tool allowlist, each flag with its own value check.

The same letter means different things per tool (masscan `-c` is a config file, gobuster `-c`
cookies; gobuster `-r` follows redirects in dir mode and names a resolver in dns mode), so every
table is per tool and, for gobuster, per mode. Flags known to be dangerous are listed with the
rule that names the danger, so a refusal says *why*; anything else unknown is `flag_not_allowed`.
Not covered here: flags the server adds itself (output format, `-n`, rates from parameters).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from appliance.errors import ValidationError
from appliance.policy.model import Policy

ValueCheck = Callable[[str, Policy], str]

MAX_EXTRA_ARGS = 32
MAX_ARG_LENGTH = 256
DECIMAL = re.compile(r"0|[1-9][0-9]{0,6}")
DURATION = re.compile(r"(?P<n>0|[1-9][0-9]{0,5})(?P<unit>ms|s)")
STATUS_LIST = re.compile(r"[1-5][0-9]{2}(?:-[1-5][0-9]{2})?(?:,[1-5][0-9]{2}(?:-[1-5][0-9]{2})?)*")
INT_LIST = re.compile(r"(?:0|[1-9][0-9]{0,8})(?:,(?:0|[1-9][0-9]{0,8}))*")
USER_AGENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._/();:+-]{0,199}")
SHARD = re.compile(r"(?P<x>[1-9][0-9]{0,2})/(?P<y>[1-9][0-9]{0,2})")
# Shards one masscan sweep may be split into (--shard x/y): enough for any lab fleet.
MAX_MASSCAN_SHARDS = 256


def _invalid(flag: str, value: str, expected: str) -> ValidationError:
    return ValidationError(
        f"{flag} {value!r} is not allowed: expected {expected}",
        rule="flag_value_invalid",
        recovery_suggestion=f"Give {flag} {expected}.",
    )


def integer(low: int, high: Callable[[Policy], int] | int) -> Callable[[str], ValueCheck]:
    def for_flag(flag: str) -> ValueCheck:
        def check(value: str, policy: Policy) -> str:
            top = high(policy) if callable(high) else high
            if not DECIMAL.fullmatch(value) or not low <= int(value) <= top:
                raise _invalid(flag, value, f"a whole number from {low} to {top}")
            return value

        return check

    return for_flag


def duration(max_ms: int) -> Callable[[str], ValueCheck]:
    def for_flag(flag: str) -> ValueCheck:
        def check(value: str, policy: Policy) -> str:
            match = DURATION.fullmatch(value)
            millis = int(match["n"]) * (1 if match["unit"] == "ms" else 1000) if match else -1
            if not 0 <= millis <= max_ms:
                raise _invalid(flag, value, f"a duration such as 500ms or 2s, at most {max_ms} ms")
            return value

        return check

    return for_flag


def pattern(regex: re.Pattern[str], expected: str) -> Callable[[str], ValueCheck]:
    def for_flag(flag: str) -> ValueCheck:
        def check(value: str, policy: Policy) -> str:
            if not regex.fullmatch(value):
                raise _invalid(flag, value, expected)
            return value

        return check

    return for_flag


def shard_spec(flag: str) -> ValueCheck:
    """masscan --shard x/y: this instance sends every y-th packet, starting at the x-th (1 <= x <=
    y). masscan itself takes 3/2 without a word; that would send nothing, so it is refused here."""

    def check(value: str, policy: Policy) -> str:
        match = SHARD.fullmatch(value)
        if match is None or not 1 <= int(match["x"]) <= int(match["y"]) <= MAX_MASSCAN_SHARDS:
            raise _invalid(flag, value, f"x/y with 1 <= x <= y <= {MAX_MASSCAN_SHARDS}, e.g. 1/4")
        return value

    return check


@dataclass(frozen=True)
class Flag:
    names: tuple[str, ...]
    value: Callable[[str], ValueCheck] | None = None  # None: a switch without a value


@dataclass(frozen=True)
class Denial:
    rule: str
    reason: str
    instead: str


FILE_IO = Denial("flag_file_io", "reads or writes files on the appliance", "Results come back in the tool result.")
EXTRA_TARGETS = Denial("flag_extra_targets", "adds targets the scope check never saw", "Pass one target in `target`.")
SPOOFING = Denial(
    "flag_spoofing_or_evasion",
    "spoofs addresses, routes through proxies or evades detection",
    "Lab scans are attributable by design; leave it out.",
)
SCAN_TYPE = Denial("flag_use_parameter", "is set by a tool parameter", "Use scan_type, ports, timing or rate.")
SCRIPTS = Denial("flag_use_parameter", "selects NSE scripts", "Use the `scripts` parameter (an allowlist).")
SCRIPT_ARGS = Denial("flag_script_args", "passes arguments to NSE scripts", "Script arguments are never allowed.")
LEAVES_SCOPE = Denial("flag_leaves_scope", "sends probes to hosts other than the target", "Leave it out.")
DNS = Denial("flag_dns", "makes the scanner resolve names itself", "The appliance resolves and checks names.")
PRIVILEGE = Denial("flag_privilege", "changes the scanner's privilege model", "The deployment mode decides this.")
REDIRECTS = Denial("flag_follows_redirects", "follows redirects, which can leave the scope", "Leave it out.")
RESOLVER = Denial(
    "flag_resolver_from_caller", "names a DNS resolver", "The policy names the lab resolver (tools.gobuster_scan)."
)
WORDLIST = Denial("flag_use_parameter", "is set by a tool parameter", "Use `wordlist`, `extensions` or `threads`.")
HOSTGROUP = Denial(
    "flag_hostgroup_from_caller",
    "sets nmap's host group size, which decides when findings arrive",
    "Leave it out: the policy sets --max-hostgroup (tools.nmap_scan.max_hostgroup).",
)


def _deny(names: str, denial: Denial) -> dict[str, Denial]:
    return dict.fromkeys(names.split(), denial)


NMAP_ALLOWED = (
    Flag(("-Pn",)),
    Flag(("--open",)),
    Flag(("--reason",)),
    Flag(("-r",)),
    Flag(("-v",)),
    Flag(("--version-light",)),
    Flag(("--version-all",)),
    Flag(("--version-intensity",), integer(0, 9)),
    Flag(("--max-retries",), integer(0, 10)),
    Flag(("--min-rate",), integer(1, lambda p: p.tools.nmap_scan.max_rate)),
    Flag(("--max-rate",), integer(1, lambda p: p.tools.nmap_scan.max_rate)),
    Flag(("--scan-delay",), duration(10_000)),
    Flag(("--max-scan-delay",), duration(10_000)),
)
NMAP_DENIED = {
    **_deny(
        "-iL -oN -oX -oG -oA -oS -oM --datadir --resume --excludefile --servicedb --versiondb "
        "--stylesheet --append-output --script-updatedb --log-errors",
        FILE_IO,
    ),
    **_deny("-iR --exclude", EXTRA_TARGETS),
    **_deny(
        "-D -S -e -g --spoof-mac --proxies --proxy --source-port --data --data-string --data-length "
        "--ip-options --ttl --badsum -f --mtu",
        SPOOFING,
    ),
    **_deny(
        "-sS -sT -sV -sn -sU -sA -sW -sM -sN -sF -sX -sY -sZ -sO -sI -sL -b -O -A -6 -p -F --top-ports "
        "-T0 -T1 -T2 -T3 -T4 -T5 --host-timeout",
        SCAN_TYPE,
    ),
    **_deny("--script -sC", SCRIPTS),
    **_deny("--script-args --script-args-file", SCRIPT_ARGS),
    **_deny("--traceroute", LEAVES_SCOPE),
    **_deny("-R --dns-servers --system-dns --resolve-all", DNS),
    **_deny("--privileged --unprivileged --send-eth --send-ip", PRIVILEGE),
    # nmap's getopt_long_only also takes the underscore spellings; unlisted names fail the allowlist anyway.
    **_deny("--max-hostgroup --min-hostgroup --max_hostgroup --min_hostgroup", HOSTGROUP),
}

MASSCAN_ALLOWED = (
    Flag(("--wait",), integer(0, lambda p: p.tools.masscan_scan.max_wait_seconds)),
    Flag(("--retries",), integer(0, 3)),
    # masscan's own sharding: one sweep split by packet index across calls (or appliances); the
    # calls must share --seed to partition the same random order (masscan.plan insists).
    Flag(("--shard",), shard_spec),
    Flag(("--seed",), integer(0, 9_999_999)),
)
MASSCAN_DENIED = {
    **_deny(
        "-c --conf --readscan --pcap -oX -oJ -oL -oG -oB -oD -oU --output-filename --output-format "
        "-iL --includefile --excludefile --resume --echo",
        FILE_IO,
    ),
    **_deny("--range --exclude", EXTRA_TARGETS),
    **_deny(
        "--source-ip --source-port --adapter-ip --adapter-mac --router-mac --router-ip --adapter -e --spoof --banners",
        SPOOFING,
    ),
    **_deny("--rate --max-rate -p --ports", SCAN_TYPE),
}

_GOBUSTER_HTTP = (
    Flag(("-k", "--no-tls-validation")),
    Flag(("--random-agent",)),
    Flag(("--retry",)),
    Flag(("--retry-attempts",), integer(1, 3)),
    Flag(("--timeout",), duration(60_000)),
    Flag(("--delay",), duration(5_000)),
    Flag(("--exclude-length",), pattern(INT_LIST, "comma-separated byte counts")),
    Flag(("-a", "--useragent"), pattern(USER_AGENT, "printable text of at most 200 characters")),
)
GOBUSTER_ALLOWED: dict[str, tuple[Flag, ...]] = {
    "dir": (
        *_GOBUSTER_HTTP,
        Flag(("-f", "--add-slash")),
        Flag(("-d", "--discover-backup")),
        Flag(("-s", "--status-codes"), pattern(STATUS_LIST, "status codes or ranges such as 200,300-399")),
        Flag(("-b", "--status-codes-blacklist"), pattern(STATUS_LIST, "status codes or ranges such as 404")),
    ),
    "vhost": _GOBUSTER_HTTP,
    "dns": (Flag(("--timeout",), duration(10_000)), Flag(("--delay",), duration(5_000)), Flag(("--wildcard",))),
}
_GOBUSTER_DENIED = {
    **_deny(
        "-o --output -p --pattern -X --extensions-file --client-cert-p12 --client-cert-p12-password "
        "--client-cert-pem --client-cert-pem-key",
        FILE_IO,
    ),
    **_deny("--proxy", SPOOFING),
    **_deny("-w --wordlist -t --threads -x --extensions -u --url --domain --append-domain", WORDLIST),
}
GOBUSTER_DENIED: dict[str, dict[str, Denial]] = {
    "dir": {**_GOBUSTER_DENIED, **_deny("-r --follow-redirect", REDIRECTS)},
    "vhost": {**_GOBUSTER_DENIED, **_deny("-r --follow-redirect", REDIRECTS)},
    "dns": {**_GOBUSTER_DENIED, **_deny("-r --resolver", RESOLVER), **_deny("-d", EXTRA_TARGETS)},
}


def _denial_for(arg: str, denied: dict[str, Denial]) -> tuple[str, Denial] | None:
    name = arg.split("=", 1)[0]
    if name in denied:
        return name, denied[name]
    # Attached values (-iLfile, -oX-, -D10.0.0.1): match single-dash denied names by prefix.
    for denied_name, denial in denied.items():
        if not denied_name.startswith("--") and arg.startswith(denied_name):
            return denied_name, denial
    return None


def check_extra_args(
    args: Sequence[str], allowed: Sequence[Flag], denied: dict[str, Denial], policy: Policy, tool: str
) -> list[str]:
    """Validate `extra_args` against one allowlist; returns the canonical argv fragment."""
    if len(args) > MAX_EXTRA_ARGS:
        raise ValidationError(
            f"extra_args has {len(args)} items; at most {MAX_EXTRA_ARGS}",
            rule="flag_too_many",
            recovery_suggestion="Pass fewer extra flags.",
        )
    by_name = {name: flag for flag in allowed for name in flag.names}
    out: list[str] = []
    seen: set[tuple[str, ...]] = set()
    position = 0
    while position < len(args):
        arg = args[position]
        position += 1
        if len(arg) > MAX_ARG_LENGTH or not arg.isascii() or any(not c.isprintable() for c in arg):
            raise ValidationError(
                "an extra_args item is too long or holds non-ASCII or control characters",
                rule="flag_value_invalid",
                recovery_suggestion="Use plain ASCII flags from the tool description.",
            )
        if not arg.startswith("-"):
            raise ValidationError(
                f"{arg!r} in extra_args is not a flag (a positional argument would be an extra target)",
                rule="flag_extra_targets",
                recovery_suggestion="Pass the target in `target`; extra_args holds flags only.",
            )
        denial = _denial_for(arg, denied)
        if denial is not None:
            name, why = denial
            raise ValidationError(f"{tool}: {name} {why.reason}", rule=why.rule, recovery_suggestion=why.instead)
        name, equals, inline = arg.partition("=")
        flag = by_name.get(name)
        if flag is None:
            raise ValidationError(
                f"{tool}: {name} is not on the allowlist",
                rule="flag_not_allowed",
                recovery_suggestion=f"Allowed extra flags: {' '.join(sorted(by_name))}.",
            )
        if flag.names in seen:
            raise ValidationError(f"{name} is given twice", rule="flag_repeated", recovery_suggestion="Give it once.")
        seen.add(flag.names)
        if flag.value is None:
            if equals:
                raise _invalid(name, inline, "no value (it is a switch)")
            out.append(name)
            continue
        if not equals:
            if position >= len(args):
                raise _invalid(name, "", "a value after it")
            inline = args[position]
            position += 1
        out.extend([name, flag.value(name)(inline, policy)])
    return out
