"""Properties of the scope checks, searched with hypothesis (HYPOTHESIS_PROFILE=long searches deeper).

The in-scope test here is written independently of `targets.py` (with `ipaddress`' own subnet and
overlap operations), so the properties are differential, not the code checked against itself.
Resolvers are closures over generated answers: nothing here sends a DNS query.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from collections.abc import Sequence

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from appliance.config import Settings
from appliance.errors import ValidationError
from appliance.policy.model import Policy
from appliance.policy.ports import check_ports
from appliance.policy.targets import LOOPBACK, CheckedTarget, IPNetwork, Resolver, Scope, check_target
from appliance.tools import nmap
from appliance.tools.base import PlanContext

LAB_V4 = ipaddress.IPv4Network("10.20.0.0/16")
LAB_V4_SMALL = ipaddress.IPv4Network("192.168.56.0/24")
SUFFIX = ".lab.internal"
# Characters that spell addresses and ranges, with look-alike digits, dots and separators.
IP_LIKE = (
    "0123456789.x/-*,: "
    + "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19"  # fullwidth digits
    + "\u0660\u0661\u0662\u0663"  # Arabic-Indic digits
    + "\u0966\u0967\u0968"  # Devanagari digits
    + "\u3002\uff0e\uff61"  # ideographic, fullwidth and halfwidth full stops
    + "\t\n\x00"
)


def resolver_for(answers: Sequence[str]) -> Resolver:
    async def resolve(name: str) -> list[str]:
        return list(answers)

    return resolve


def in_scope(network: IPNetwork, scope: Scope) -> bool:
    """Inside one allowed network, overlapping no denied one and no loopback (the lab keeps it closed)."""
    same = [a for a in scope.allowed if a.version == network.version]
    return (
        any(network.subnet_of(a) for a in same)  # type: ignore[arg-type]
        and not any(network.overlaps(d) for d, _ in scope.denied if d.version == network.version)
        and not any(network.overlaps(lo) for lo in LOOPBACK if lo.version == network.version)
    )


def assert_checked_in_scope(checked: CheckedTarget, scope: Scope) -> None:
    if checked.kind == "cidr":
        network = ipaddress.ip_network(checked.scan_arg)
        assert str(network) == checked.scan_arg  # canonical
        assert checked.host_count == network.num_addresses <= scope.max_hosts
        assert in_scope(network, scope)
        return
    assert str(ipaddress.ip_address(checked.scan_arg)) == checked.scan_arg  # canonical, never a name
    assert checked.scan_arg in checked.addresses
    for address in checked.addresses:
        assert in_scope(ipaddress.ip_network(address), scope)


def check(text: str, scope: Scope, answers: Sequence[str] = ()) -> CheckedTarget | None:
    """The check's verdict: the checked target, or None for a refusal. Any other exception fails."""
    try:
        return asyncio.run(check_target(text, scope, resolver_for(answers)))
    except ValidationError:
        return None


# --- strategies ---------------------------------------------------------------------------------

ipv4_text = st.ip_addresses(v=4).map(str)
ipv6_text = st.ip_addresses(v=6).map(str)
lab_address = st.one_of(
    st.integers(int(LAB_V4.network_address), int(LAB_V4.broadcast_address)),
    st.integers(int(LAB_V4_SMALL.network_address), int(LAB_V4_SMALL.broadcast_address)),
).map(lambda n: ipaddress.IPv4Address(n))
cidr_text = st.one_of(
    st.builds(lambda a, p: f"{a}/{p}", st.ip_addresses(v=4), st.integers(0, 40)),
    st.builds(
        lambda a, p: str(ipaddress.ip_network(f"{a}/{p}", strict=False)), st.ip_addresses(v=4), st.integers(0, 32)
    ),
    st.builds(lambda a, p: str(ipaddress.ip_network(f"{a}/{p}", strict=False)), lab_address, st.integers(22, 32)),
    st.builds(lambda a, p: f"{a}/{p}", st.ip_addresses(v=6), st.integers(0, 140)),
)
ip_like_text = st.text(alphabet=IP_LIKE, max_size=40)
label = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
lab_hostname = st.lists(label, min_size=1, max_size=3).map(lambda labels: ".".join(labels) + SUFFIX)
any_answer = st.one_of(ipv4_text, ipv6_text, lab_address.map(str))


# --- (a) whatever the text, an accepted target is inside the scope ------------------------------


@given(st.one_of(ipv4_text, ipv6_text, cidr_text, lab_address.map(str)))
def test_accepted_addresses_and_blocks_are_in_scope(lab_scope: Scope, text: str) -> None:
    checked = check(text, lab_scope)

    event("accepted" if checked else "refused")
    if checked is not None:
        assert_checked_in_scope(checked, lab_scope)


@given(st.one_of(st.text(max_size=60), ip_like_text))
def test_arbitrary_text_is_refused_or_in_scope(lab_scope: Scope, text: str) -> None:
    checked = check(text, lab_scope, answers=["10.20.0.5"])

    if checked is not None:
        assert_checked_in_scope(checked, lab_scope)
        assert text.isascii() and text.strip() == text


@given(lab_hostname, st.lists(any_answer, max_size=4))
def test_hostname_is_accepted_only_when_every_answer_is_in_scope(
    lab_scope: Scope, name: str, answers: list[str]
) -> None:
    checked = check(name, lab_scope, answers)

    every_answer_in_scope = bool(answers) and all(in_scope(ipaddress.ip_network(a), lab_scope) for a in answers)
    event("accepted" if checked else "refused")
    assert (checked is not None) == every_answer_in_scope
    if checked is not None:
        assert_checked_in_scope(checked, lab_scope)
        assert checked.hostname == name


# --- (b) differential: the nmap argv scans exactly the checked target ---------------------------


@pytest.fixture(scope="module")
def nmap_context(lab_policy: Policy, lab_scope: Scope) -> PlanContext:
    return PlanContext(lab_policy, lab_scope, resolver_for(()), Settings(privilege_mode="connect"))


in_lab_target = st.one_of(
    st.tuples(lab_address.map(str), st.just(())),
    st.tuples(
        st.builds(lambda a, p: str(ipaddress.ip_network(f"{a}/{p}", strict=False)), lab_address, st.integers(24, 32)),
        st.just(()),
    ),
    st.tuples(lab_hostname, st.lists(lab_address.map(str), min_size=1, max_size=3)),
)


@given(in_lab_target)
def test_nmap_argv_ends_with_the_checked_target(
    nmap_context: PlanContext, target_and_answers: tuple[str, Sequence[str]]
) -> None:
    target, answers = target_and_answers
    ctx = dataclasses.replace(nmap_context, resolve=resolver_for(answers))
    request = nmap.NmapRequest(target=target)
    covered = [ipaddress.ip_network(a) for a in answers] or [ipaddress.ip_network(target)]
    expect_refusal = not all(in_scope(network, ctx.scope) for network in covered)

    if expect_refusal:
        event("refused")
        with pytest.raises(ValidationError):
            asyncio.run(nmap.plan(request, ctx))
        return

    plan = asyncio.run(nmap.plan(request, ctx))

    event(f"accepted {plan.target.kind}")
    assert plan.argv[-1] == plan.target.scan_arg
    assert in_scope(ipaddress.ip_network(plan.argv[-1]), ctx.scope)
    if answers:
        assert plan.argv[-1] == str(min(ipaddress.IPv4Address(a) for a in answers))
        assert target not in plan.argv  # the scanner never receives a name
    else:
        assert ipaddress.ip_network(plan.argv[-1]) == ipaddress.ip_network(target)


# --- (c) ports: an accepted spec stays within 1..65535 and the limit ------------------------------

port_item = st.one_of(
    st.integers(0, 70000).map(str),
    st.tuples(st.integers(0, 70000), st.integers(0, 70000)).map(lambda r: f"{r[0]}-{r[1]}"),
    st.tuples(st.integers(1, 65535), st.integers(0, 3000)).map(lambda r: f"{r[0]}-{r[0] + r[1]}"),
)
port_spec = st.one_of(
    st.lists(port_item, min_size=1, max_size=12).map(",".join),
    st.text(alphabet="0123456789,- TU:[]*", max_size=40),
)


def named_ports(text: str) -> set[int]:
    """The ports a spec names, read independently of `check_ports`."""
    ports: set[int] = set()
    for item in text.split(","):
        low, _, high = item.partition("-")
        ports.update(range(int(low), int(high or low) + 1))
    return ports


@given(port_spec, st.integers(1, 2000))
def test_accepted_port_spec_is_counted_and_bounded(text: str, limit: int) -> None:
    try:
        spec = check_ports(text, limit)
    except ValidationError:
        event("refused")
        return

    event("accepted")
    ports = named_ports(spec.text)
    assert spec.count == len(ports) <= limit
    assert all(1 <= port <= 65535 for port in ports)
