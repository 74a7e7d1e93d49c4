"""Target checks: spelling, hostname suffix, resolution and scope. A fake resolver only: no DNS."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from typing import Any

import pytest

from appliance.errors import ValidationError
from appliance.policy.targets import (
    Scope,
    check_address,
    check_hostname,
    check_network,
    check_target,
    parse_target,
)

SUFFIXES = (".lab.internal",)


# --- parse_target: classification of canonical spellings ---------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "network"),
    [
        # safe
        ("10.20.0.5", "ip", "10.20.0.5/32"),
        ("0.0.0.0", "ip", "0.0.0.0/32"),  # canonical spelling; the scope refuses it later
        ("255.255.255.255", "ip", "255.255.255.255/32"),
        ("10.20.1.0/24", "cidr", "10.20.1.0/24"),
        ("10.20.1.7/32", "cidr", "10.20.1.7/32"),
        ("0.0.0.0/0", "cidr", "0.0.0.0/0"),
        ("2001:db8::1", "ip", "2001:db8::1/128"),
        ("2001:db8::/64", "cidr", "2001:db8::/64"),
        ("::1", "ip", "::1/128"),
        ("web.lab.internal", "hostname", None),
        ("10.20.0.5.lab.internal", "hostname", None),
    ],
)
def test_parse_target_classifies_canonical_spellings(text: str, kind: str, network: str | None) -> None:
    parsed = parse_target(text)

    assert parsed.kind == kind
    assert parsed.network == (ipaddress.ip_network(network) if network else None)


def test_parse_target_lower_cases_hostnames() -> None:
    assert parse_target("WEB.Lab.INTERNAL").text == "web.lab.internal"


# --- check_target: every refusal, and none of them reaches the resolver ---------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("text", "kind", "scan_arg", "host_count"),
    [
        # safe
        ("10.20.0.5", "ip", "10.20.0.5", 1),
        ("10.20.0.3", "ip", "10.20.0.3", 1),  # next to the appliance's own address
        ("10.20.255.254", "ip", "10.20.255.254", 1),
        ("192.168.56.200", "ip", "192.168.56.200", 1),
        ("10.20.1.0/24", "cidr", "10.20.1.0/24", 256),
        ("10.20.1.4/30", "cidr", "10.20.1.4/30", 4),
        ("10.20.1.7/32", "cidr", "10.20.1.7/32", 1),
        ("192.168.56.128/25", "cidr", "192.168.56.128/25", 128),
    ],
)
async def test_check_target_accepts_lab_addresses(
    text: str, kind: str, scan_arg: str, host_count: int, lab_scope: Scope, make_resolver: Callable[..., Any]
) -> None:
    resolver = make_resolver()

    checked = await check_target(text, lab_scope, resolver)

    assert (checked.kind, checked.scan_arg, checked.host_count) == (kind, scan_arg, host_count)
    assert checked.requested == text
    assert resolver.calls == []


REFUSED_WITHOUT_LOOKUP = [
    # unsafe: alternative IPv4 spellings (each tool reads them differently)
    pytest.param("167772161", "target_noncanonical_ipv4", id="decimal_ipv4"),
    pytest.param("2130706433", "target_noncanonical_ipv4", id="decimal_loopback"),
    pytest.param("0x0a000001", "target_noncanonical_ipv4", id="hex_ipv4"),
    pytest.param("0X7F000001", "target_noncanonical_ipv4", id="hex_ipv4_upper_case"),
    pytest.param("0x7f.0.0.1", "target_noncanonical_ipv4", id="hex_octet"),
    pytest.param("10.0.0.0x1", "target_noncanonical_ipv4", id="hex_last_octet"),
    pytest.param("012.0.0.1", "target_noncanonical_ipv4", id="octal_octet"),
    pytest.param("0177.0.0.1", "target_noncanonical_ipv4", id="octal_loopback"),
    pytest.param("10.1", "target_noncanonical_ipv4", id="short_two_part"),
    pytest.param("127.1", "target_noncanonical_ipv4", id="short_loopback"),
    pytest.param("10.20.1", "target_noncanonical_ipv4", id="short_three_part"),
    pytest.param("10.0.0.010", "target_noncanonical_ipv4", id="leading_zero_octet"),
    pytest.param("10.20.0.256", "target_noncanonical_ipv4", id="octet_overflow"),
    pytest.param("0", "target_noncanonical_ipv4", id="single_zero"),
    pytest.param("0x", "target_noncanonical_ipv4", id="bare_hex_prefix"),
    pytest.param("0177.0.0.1/32", "target_noncanonical_ipv4", id="octal_cidr"),
    # unsafe: IPv4 inside IPv6 (bypasses IPv4 rules)
    pytest.param("::ffff:127.0.0.1", "target_ipv4_mapped_ipv6", id="ipv4_mapped_loopback_dotted"),
    pytest.param("::ffff:7f00:1", "target_ipv4_mapped_ipv6", id="ipv4_mapped_loopback_hex"),
    pytest.param("::FFFF:7F00:1", "target_ipv4_mapped_ipv6", id="ipv4_mapped_upper_case"),
    pytest.param("0:0:0:0:0:ffff:7f00:1", "target_ipv4_mapped_ipv6", id="ipv4_mapped_uncompressed"),
    pytest.param("::ffff:10.20.0.5", "target_ipv4_mapped_ipv6", id="ipv4_mapped_in_scope_address"),
    pytest.param("::ffff:169.254.169.254", "target_ipv4_mapped_ipv6", id="ipv4_mapped_metadata"),
    pytest.param("::127.0.0.1", "target_ipv4_mapped_ipv6", id="ipv4_compatible_loopback"),
    pytest.param("::7f00:1", "target_ipv4_mapped_ipv6", id="ipv4_compatible_hex"),
    pytest.param("::ffff:0:0/96", "target_ipv4_mapped_ipv6", id="ipv4_mapped_block"),
    # unsafe: other IPv6 spellings
    pytest.param("2001:DB8::1", "target_noncanonical_ipv6", id="ipv6_upper_case"),
    pytest.param("2001:db8:0:0:0:0:0:1", "target_noncanonical_ipv6", id="ipv6_uncompressed"),
    pytest.param("0:0:0:0:0:0:0:1", "target_noncanonical_ipv6", id="ipv6_loopback_uncompressed"),
    pytest.param("fe80::1%eth0", "target_ipv6_zone", id="ipv6_zone_id"),
    pytest.param("[::1]", "target_invalid_ipv6", id="ipv6_brackets"),
    pytest.param("10.20.0.5:80", "target_invalid_ipv6", id="address_with_port"),
    pytest.param("web.lab.internal:80", "target_invalid_ipv6", id="hostname_with_port"),
    # unsafe: nmap range and list syntax
    pytest.param("10.0.0-255.1", "target_range_syntax", id="octet_range"),
    pytest.param("10.*", "target_range_syntax", id="wildcard"),
    pytest.param("10.20.0.*", "target_range_syntax", id="wildcard_last_octet"),
    pytest.param("10.20.0.1-5", "target_range_syntax", id="last_octet_range"),
    pytest.param("10-20-0-1", "target_range_syntax", id="dashes_for_dots"),
    pytest.param("10.20.0-1.0/24", "target_range_syntax", id="range_with_prefix"),
    pytest.param("*.lab.internal", "target_range_syntax", id="wildcard_hostname"),
    pytest.param("10.0.0.1,10.0.0.2", "target_list_syntax", id="comma_list"),
    pytest.param("10.0.0.1;10.0.0.2", "target_list_syntax", id="semicolon_list"),
    pytest.param("web.lab.internal,scanme.nmap.org", "target_list_syntax", id="hostname_list"),
    pytest.param("10.0.0.1 10.0.0.2", "target_control_character", id="space_separated_list"),
    # unsafe: look-alike digits and dots
    pytest.param("\uff11\uff10.\uff10.\uff10.\uff11", "target_not_ascii", id="fullwidth_digits"),
    pytest.param("\u0661\u0660.\u0660.\u0660.\u0661", "target_not_ascii", id="arabic_indic_digits"),
    pytest.param("\u06f1\u06f0.\u06f0.\u06f0.\u06f1", "target_not_ascii", id="extended_arabic_indic_digits"),
    pytest.param("\u0967\u0966.\u0966.\u0966.\u0967", "target_not_ascii", id="devanagari_digits"),
    pytest.param("10.20.0.\u2075", "target_not_ascii", id="superscript_digit"),
    pytest.param("10\u30020\u30020\u30021", "target_not_ascii", id="ideographic_full_stop"),
    pytest.param("10\uff0e0\uff0e0\uff0e1", "target_not_ascii", id="fullwidth_full_stop"),
    pytest.param("10.20.0.5\u200b", "target_not_ascii", id="zero_width_space"),
    pytest.param("\u202e5.0.02.01", "target_not_ascii", id="right_to_left_override"),
    pytest.param("w\u0435b.lab.internal", "target_not_ascii", id="cyrillic_letter_in_hostname"),
    pytest.param("\u212aa.lab.internal", "target_not_ascii", id="kelvin_sign_lowers_to_k"),
    # unsafe: whitespace and control characters
    pytest.param("10.20.0.5\x00", "target_control_character", id="nul_byte"),
    pytest.param("10.20.0.5\t", "target_control_character", id="trailing_tab"),
    pytest.param("\t10.20.0.5", "target_control_character", id="leading_tab"),
    pytest.param("10.20.0.5\n127.0.0.1", "target_control_character", id="newline_injection"),
    pytest.param("10.20.0.5\r\n", "target_control_character", id="crlf"),
    pytest.param(" 10.20.0.5", "target_control_character", id="leading_space"),
    pytest.param("10.20.0.5 ", "target_control_character", id="trailing_space"),
    pytest.param("10.20.0.5\x0b", "target_control_character", id="vertical_tab"),
    pytest.param("\x1b[31m10.20.0.5", "target_control_character", id="terminal_escape"),
    pytest.param("10.20.0.5\x7f", "target_control_character", id="delete_character"),
    pytest.param("10.20.1.0/ 24", "target_control_character", id="space_before_prefix"),
    # unsafe: option injection
    pytest.param("-iL", "target_option_injection", id="input_list_option"),
    pytest.param("-iL/etc/passwd", "target_option_injection", id="input_list_option_attached"),
    pytest.param("--script=http-brute", "target_option_injection", id="long_option"),
    pytest.param("-oX", "target_option_injection", id="output_option"),
    pytest.param("-", "target_option_injection", id="lone_dash"),
    # unsafe: empty and oversized
    pytest.param("", "target_empty", id="empty"),
    pytest.param("a" * 254, "target_too_long", id="longer_than_any_dns_name"),
    # unsafe: hostnames (refused before any lookup)
    pytest.param("10.20.0.5.", "target_trailing_dot", id="address_trailing_dot"),
    pytest.param("web.lab.internal.", "target_trailing_dot", id="hostname_trailing_dot"),
    pytest.param("scanme.nmap.org", "target_hostname_suffix", id="hostname_outside_suffix"),
    pytest.param("lab.internal.evil.com", "target_hostname_suffix", id="suffix_as_inner_labels"),
    pytest.param("evillab.internal", "target_hostname_suffix", id="suffix_without_dot_boundary"),
    pytest.param("lab.internal", "target_hostname_suffix", id="bare_suffix"),
    pytest.param("evil.com/.lab.internal", "target_invalid_hostname", id="slash_before_suffix"),
    pytest.param("evil.com#.lab.internal", "target_invalid_hostname", id="hash_before_suffix"),
    pytest.param("evil.com?.lab.internal", "target_invalid_hostname", id="question_mark_before_suffix"),
    pytest.param("user@web.lab.internal", "target_invalid_hostname", id="userinfo_in_hostname"),
    pytest.param("web.lab.internal/24", "target_invalid_hostname", id="hostname_with_prefix"),
    pytest.param("localhost", "target_invalid_hostname", id="single_label_localhost"),
    pytest.param("web..lab.internal", "target_invalid_hostname", id="empty_label"),
    pytest.param("web-.lab.internal", "target_invalid_hostname", id="label_ends_with_hyphen"),
    pytest.param("we_b.lab.internal", "target_invalid_hostname", id="underscore_label"),
    pytest.param("a" * 64 + ".lab.internal", "target_invalid_hostname", id="label_longer_than_63"),
    # unsafe: addresses the scope never opens
    pytest.param("0.0.0.0", "target_denied_unspecified", id="unspecified_ipv4"),
    pytest.param("169.254.169.254", "target_denied_link_local", id="cloud_metadata"),
    pytest.param("224.0.0.1", "target_denied_multicast", id="multicast_all_hosts"),
    pytest.param("255.255.255.255", "target_denied_broadcast", id="limited_broadcast"),
    pytest.param("240.0.0.1", "target_denied_reserved", id="reserved_class_e"),
    pytest.param("127.0.0.1", "target_denied_loopback", id="loopback"),
    pytest.param("127.0.0.53", "target_denied_loopback", id="loopback_stub_resolver"),
    pytest.param("::1", "target_denied_loopback", id="ipv6_loopback"),
    pytest.param("::", "target_denied_unspecified", id="unspecified_ipv6"),
    pytest.param("fe80::1", "target_denied_link_local", id="ipv6_link_local"),
    pytest.param("ff02::1", "target_denied_multicast", id="ipv6_multicast"),
    pytest.param("2001:db8::1", "target_ipv6_not_allowed", id="ipv6_without_ipv6_scope"),
    pytest.param("64:ff9b::7f00:1", "target_ipv4_mapped_ipv6", id="nat64_loopback"),
    pytest.param("2002:7f00:1::1", "target_ipv4_mapped_ipv6", id="sixtofour_loopback"),
    pytest.param("10.20.0.1", "target_denied_gateway", id="default_gateway"),
    pytest.param("10.20.0.2", "target_denied_own_address", id="own_address"),
    pytest.param("10.20.255.255", "target_denied_broadcast", id="subnet_broadcast"),
    pytest.param("10.20.99.7", "target_denied_policy", id="policy_deny_network"),
    pytest.param("8.8.8.8", "target_out_of_scope", id="internet_address"),
    pytest.param("10.21.0.1", "target_out_of_scope", id="next_to_the_lab"),
    # unsafe: CIDR blocks
    pytest.param("10.20.1.5/24", "target_invalid_cidr", id="cidr_with_host_bits"),
    pytest.param("10.0.0.0/08", "target_invalid_cidr", id="prefix_with_leading_zero"),
    pytest.param("10.20.1.0/33", "target_invalid_cidr", id="prefix_too_long_for_ipv4"),
    pytest.param("10.20.1.0/128", "target_invalid_cidr", id="ipv6_prefix_on_ipv4"),
    pytest.param("10.20.1.0/999", "target_invalid_cidr", id="prefix_three_digits"),
    pytest.param("10.20.1.0/", "target_invalid_cidr", id="empty_prefix"),
    pytest.param("10.20.1.0/24/24", "target_invalid_cidr", id="double_prefix"),
    pytest.param("10.20.1.0/+24", "target_invalid_cidr", id="signed_prefix"),
    pytest.param("10.20.1.0/255.255.255.0", "target_invalid_cidr", id="netmask_prefix"),
    pytest.param("2001:db8::/129", "target_invalid_cidr", id="prefix_too_long_for_ipv6"),
    pytest.param("10.0.0.0/8", "target_cidr_too_large", id="whole_private_range"),
    pytest.param("0.0.0.0/0", "target_cidr_too_large", id="whole_internet"),
    pytest.param("10.20.0.0/23", "target_cidr_too_large", id="just_over_host_limit"),
    pytest.param("::/0", "target_cidr_too_large", id="whole_ipv6_internet"),
    pytest.param("127.0.0.0/24", "target_denied_loopback", id="cidr_covering_loopback"),
    pytest.param("::/120", "target_denied_loopback", id="ipv6_cidr_covering_loopback"),
    pytest.param("169.254.169.0/24", "target_denied_link_local", id="cidr_covering_metadata"),
    pytest.param("10.20.0.0/31", "target_denied_gateway", id="cidr_covering_gateway"),
    pytest.param("10.20.0.0/24", "target_denied_own_address", id="cidr_covering_own_address"),
    pytest.param("10.20.255.0/24", "target_denied_broadcast", id="cidr_covering_broadcast"),
    pytest.param("10.20.99.128/25", "target_denied_policy", id="cidr_inside_policy_deny"),
    pytest.param("224.0.0.0/24", "target_denied_multicast", id="cidr_multicast"),
    pytest.param("0.0.0.0/24", "target_denied_unspecified", id="cidr_this_network"),
    pytest.param("192.168.55.0/24", "target_out_of_scope", id="cidr_outside_lab"),
    pytest.param("2001:db8::/120", "target_out_of_scope", id="ipv6_cidr_without_ipv6_scope"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("text", "rule"), REFUSED_WITHOUT_LOOKUP)
async def test_check_target_refuses_without_lookup(
    text: str, rule: str, lab_scope: Scope, make_resolver: Callable[..., Any]
) -> None:
    resolver = make_resolver({"web.lab.internal": ["10.20.0.5"]})

    with pytest.raises(ValidationError) as refused:
        await check_target(text, lab_scope, resolver)

    assert refused.value.rule == rule
    assert resolver.calls == []


@pytest.mark.anyio
async def test_target_rejects_ipv4_mapped_loopback(lab_scope: Scope, make_resolver: Callable[..., Any]) -> None:
    loopback_opened = dataclasses.replace(lab_scope, allow_loopback=True)

    with pytest.raises(ValidationError) as refused:
        await check_target("::ffff:127.0.0.1", loopback_opened, make_resolver())

    assert refused.value.rule == "target_ipv4_mapped_ipv6"


@pytest.mark.anyio
async def test_target_rejects_ipv4_prefix_longer_than_32_as_a_refusal(
    lab_scope: Scope, make_resolver: Callable[..., Any]
) -> None:
    # Regression: the "did you mean" hint used to raise a bare ValueError for /33../128.
    with pytest.raises(ValidationError) as refused:
        await check_target("10.20.1.0/64", lab_scope, make_resolver())

    assert refused.value.rule == "target_invalid_cidr"


@pytest.mark.anyio
async def test_target_with_host_bits_suggests_the_block(lab_scope: Scope, make_resolver: Callable[..., Any]) -> None:
    with pytest.raises(ValidationError) as refused:
        await check_target("10.20.1.5/24", lab_scope, make_resolver())

    assert "10.20.1.0/24" in refused.value.recovery_suggestion


@pytest.mark.anyio
async def test_cidr_refused_where_the_tool_takes_one_host(lab_scope: Scope, make_resolver: Callable[..., Any]) -> None:
    with pytest.raises(ValidationError) as refused:
        await check_target("10.20.1.0/30", lab_scope, make_resolver(), allow_cidr=False)

    assert refused.value.rule == "target_cidr_not_allowed"


# --- loopback: closed unless insecure_allow_loopback -------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.53", "127.0.0.0/30", "::1"])
@pytest.mark.parametrize("allow_loopback", [False, True])
async def test_loopback_is_denied_unless_insecure_allow_loopback(
    text: str, allow_loopback: bool, lab_scope: Scope, make_resolver: Callable[..., Any]
) -> None:
    scope = dataclasses.replace(lab_scope, allow_loopback=allow_loopback)

    if allow_loopback:
        checked = await check_target(text, scope, make_resolver())
        assert checked.scan_arg == str(ipaddress.ip_network(text).network_address if "/" not in text else text)
        return
    with pytest.raises(ValidationError) as refused:
        await check_target(text, scope, make_resolver())
    assert refused.value.rule == "target_denied_loopback"


@pytest.mark.anyio
async def test_insecure_allow_loopback_does_not_open_a_block_reaching_past_loopback(
    lab_scope: Scope, make_resolver: Callable[..., Any]
) -> None:
    scope = dataclasses.replace(lab_scope, allow_loopback=True)

    with pytest.raises(ValidationError) as refused:
        await check_target("::/120", scope, make_resolver())

    assert refused.value.rule == "target_denied_loopback"


@pytest.mark.anyio
async def test_operator_deny_inside_opened_loopback_still_wins(
    lab_scope: Scope, make_resolver: Callable[..., Any]
) -> None:
    denied = ((ipaddress.ip_network("127.0.0.8/29"), "target_denied_policy"),)
    scope = dataclasses.replace(lab_scope, allow_loopback=True, denied=lab_scope.denied + denied)

    for text in ("127.0.0.9", "127.0.0.0/28"):
        with pytest.raises(ValidationError) as refused:
            await check_target(text, scope, make_resolver())
        assert refused.value.rule == "target_denied_policy"
    assert (await check_target("127.0.0.1", scope, make_resolver())).scan_arg == "127.0.0.1"


# --- hostnames: suffix before lookup, every answer in scope ---------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["scanme.nmap.org", "lab.internal.evil.com", "internal", "web.lab.internal.evil"])
async def test_hostname_outside_suffix_is_never_resolved(
    name: str, lab_scope: Scope, make_resolver: Callable[..., Any]
) -> None:
    resolver = make_resolver({name: ["10.20.0.5"]})

    with pytest.raises(ValidationError) as refused:
        await check_target(name, lab_scope, resolver)

    assert refused.value.rule in ("target_hostname_suffix", "target_invalid_hostname")
    assert resolver.calls == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answers", "scan_arg"),
    [
        # safe
        (["10.20.0.5"], "10.20.0.5"),
        (["10.20.0.9", "10.20.0.5"], "10.20.0.5"),  # deterministic: the lowest address
        (["192.168.56.10", "10.20.0.5"], "10.20.0.5"),
    ],
)
async def test_hostname_resolving_in_scope_scans_the_checked_address(
    answers: list[str], scan_arg: str, lab_scope: Scope, make_resolver: Callable[..., Any]
) -> None:
    resolver = make_resolver({"web.lab.internal": answers})

    checked = await check_target("web.lab.internal", lab_scope, resolver)

    assert (checked.kind, checked.hostname, checked.scan_arg) == ("hostname", "web.lab.internal", scan_arg)
    assert checked.addresses == tuple(answers)
    assert resolver.calls == ["web.lab.internal"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answers", "cause"),
    [
        # unsafe
        pytest.param(["10.20.0.5", "169.254.169.254"], "target_denied_link_local", id="partly_metadata"),
        pytest.param(["10.20.0.5", "127.0.0.1"], "target_denied_loopback", id="partly_loopback"),
        pytest.param(["127.0.0.1"], "target_denied_loopback", id="loopback_only"),
        pytest.param(["10.20.0.5", "::ffff:127.0.0.1"], "target_ipv4_mapped_ipv6", id="partly_ipv4_mapped"),
        pytest.param(["10.20.0.5", "::7f00:1"], "target_ipv4_mapped_ipv6", id="partly_ipv4_compatible"),
        pytest.param(["10.20.0.5", "2001:db8::5"], "target_ipv6_not_allowed", id="partly_ipv6"),
        pytest.param(["10.20.0.1"], "target_denied_gateway", id="gateway"),
        pytest.param(["10.20.0.2"], "target_denied_own_address", id="own_address"),
        pytest.param(["0.0.0.0"], "target_denied_unspecified", id="unspecified"),
        pytest.param(["10.20.0.5", "8.8.8.8"], "target_out_of_scope", id="partly_internet"),
        pytest.param(["10.20.99.1"], "target_denied_policy", id="policy_deny"),
    ],
)
async def test_hostname_resolving_partly_out_of_scope_is_refused(
    answers: list[str], cause: str, lab_scope: Scope, make_resolver: Callable[..., Any]
) -> None:
    resolver = make_resolver({"web.lab.internal": answers})

    with pytest.raises(ValidationError) as refused:
        await check_target("web.lab.internal", lab_scope, resolver)

    assert refused.value.rule == "target_hostname_resolves_out_of_scope"
    assert isinstance(refused.value.__cause__, ValidationError)
    assert refused.value.__cause__.rule == cause


@pytest.mark.anyio
async def test_hostname_resolving_to_nothing_is_refused(lab_scope: Scope, make_resolver: Callable[..., Any]) -> None:
    resolver = make_resolver()

    with pytest.raises(ValidationError) as refused:
        await check_target("ghost.lab.internal", lab_scope, resolver)

    assert refused.value.rule == "target_hostname_unresolvable"
    assert resolver.calls == ["ghost.lab.internal"]


@pytest.mark.anyio
async def test_upper_case_hostname_is_accepted_and_lower_cased(
    lab_scope: Scope, make_resolver: Callable[..., Any]
) -> None:
    resolver = make_resolver({"web.lab.internal": ["10.20.0.5"]})

    checked = await check_target("WEB.Lab.INTERNAL", lab_scope, resolver)

    assert checked.hostname == "web.lab.internal"
    assert checked.scan_arg == "10.20.0.5"
    assert resolver.calls == ["web.lab.internal"]


@pytest.mark.anyio
async def test_hostname_prefers_ipv4_when_ipv6_is_in_scope(lab_scope: Scope, make_resolver: Callable[..., Any]) -> None:
    scope = dataclasses.replace(lab_scope, allowed=(*lab_scope.allowed, ipaddress.ip_network("2001:db8::/64")))
    resolver = make_resolver({"web.lab.internal": ["2001:db8::5", "10.20.0.5"]})

    checked = await check_target("web.lab.internal", scope, resolver)

    assert checked.scan_arg == "10.20.0.5"


# --- check_hostname on its own (gobuster dns mode calls it with raw request text) ----------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # safe
        ("web.lab.internal", "web.lab.internal"),
        ("WEB.LAB.INTERNAL", "web.lab.internal"),
        ("a-b.c.lab.internal", "a-b.c.lab.internal"),
        ("xn--bcher-kva.lab.internal", "xn--bcher-kva.lab.internal"),
        ("10.lab.internal", "10.lab.internal"),
    ],
)
def test_check_hostname_accepts_lab_names(name: str, expected: str) -> None:
    assert check_hostname(name, SUFFIXES) == expected


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        # unsafe
        pytest.param("web.lab.internal.", "target_trailing_dot", id="trailing_dot"),
        pytest.param("lab.internal.evil.com", "target_hostname_suffix", id="suffix_as_inner_labels"),
        pytest.param("evillab.internal", "target_hostname_suffix", id="suffix_without_dot_boundary"),
        pytest.param("web..lab.internal", "target_invalid_hostname", id="empty_label"),
        pytest.param("web-.lab.internal", "target_invalid_hostname", id="label_ends_with_hyphen"),
        pytest.param("a" * 64 + ".lab.internal", "target_invalid_hostname", id="label_longer_than_63"),
        pytest.param("localhost", "target_invalid_hostname", id="single_label"),
        pytest.param("-d.lab.internal", "target_option_injection", id="leading_dash"),
        pytest.param("\u212a.lab.internal", "target_not_ascii", id="kelvin_sign_lowers_to_k"),
        pytest.param("\uff4cab.internal", "target_not_ascii", id="fullwidth_letter"),
        pytest.param("web.lab.internal\n", "target_control_character", id="trailing_newline"),
        pytest.param(("a" * 60 + ".") * 5 + "lab.internal", "target_too_long", id="longer_than_253"),
    ],
)
def test_check_hostname_refuses(name: str, rule: str) -> None:
    with pytest.raises(ValidationError) as refused:
        check_hostname(name, SUFFIXES, allow_bare_suffix=True)

    assert refused.value.rule == rule


def test_check_hostname_accepts_the_bare_suffix_only_when_asked() -> None:
    assert check_hostname("lab.internal", SUFFIXES, allow_bare_suffix=True) == "lab.internal"
    with pytest.raises(ValidationError) as refused:
        check_hostname("lab.internal", SUFFIXES)
    assert refused.value.rule == "target_hostname_suffix"


# --- check_address and check_network on their own ------------------------------------------------


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        # safe
        ("10.20.0.5", None),
        ("192.168.56.1", None),
        # unsafe
        ("127.0.0.1", "target_denied_loopback"),
        ("::1", "target_denied_loopback"),
        ("::ffff:10.20.0.5", "target_ipv4_mapped_ipv6"),  # a resolver may answer this
        ("::a14:5", "target_ipv4_mapped_ipv6"),
        ("10.20.0.1", "target_denied_gateway"),
        ("10.20.0.2", "target_denied_own_address"),
        ("2001:db8::1", "target_ipv6_not_allowed"),
        ("192.168.57.1", "target_out_of_scope"),
    ],
)
def test_check_address(address: str, rule: str | None, lab_scope: Scope) -> None:
    if rule is None:
        check_address(ipaddress.ip_address(address), lab_scope)
        return
    with pytest.raises(ValidationError) as refused:
        check_address(ipaddress.ip_address(address), lab_scope)
    assert refused.value.rule == rule


def test_check_network_needs_one_allowed_network_to_hold_the_whole_block(lab_scope: Scope) -> None:
    # 10.20.0.0/16 and 10.21.0.0/16 are both allowed, but no single allowed network holds the /15.
    scope = dataclasses.replace(
        lab_scope,
        allowed=(ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("10.21.0.0/16")),
        denied=(),
        max_hosts=1 << 17,
    )
    check_network(ipaddress.ip_network("10.21.0.0/16"), scope)

    with pytest.raises(ValidationError) as refused:
        check_network(ipaddress.ip_network("10.20.0.0/15"), scope)

    assert refused.value.rule == "target_out_of_scope"


def test_check_network_counts_hosts_before_anything_else(lab_scope: Scope) -> None:
    scope = dataclasses.replace(lab_scope, max_hosts=4)
    check_network(ipaddress.ip_network("10.20.1.4/30"), scope)

    with pytest.raises(ValidationError) as refused:
        check_network(ipaddress.ip_network("10.20.1.0/29"), scope)

    assert refused.value.rule == "target_cidr_too_large"


# --- IPv6 ranges that embed IPv4 and hand packets to relays or translators ----------------------


def ipv6_everywhere(scope: Scope, *extra: str) -> Scope:
    """`scope` with all of IPv6 allowed (and `extra`), so only the embedding rules can refuse."""
    allowed = (*scope.allowed, ipaddress.ip_network("::/0"), *(ipaddress.ip_network(n) for n in extra))
    return dataclasses.replace(scope, allowed=allowed)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "target",
    [
        # unsafe: refused even with ::/0 allowed
        "2002:a14:5::1",  # 6to4 of the in-scope 10.20.0.5: the relay decides where it goes
        "2002:7f00:1::1",  # 6to4 of loopback
        "2001:0:a14:5::1",  # Teredo
        "2001::1",
        "::ffff:0:a14:5",  # SIIT IPv4-translated 10.20.0.5
        "::ffff:0:7f00:1",  # SIIT IPv4-translated loopback
        "2002::/120",
        "2001::/120",
        "::ffff:0:a14:0/120",
    ],
)
async def test_target_rejects_ipv6_relay_and_translation_ranges(
    target: str, lab_scope: Scope, make_resolver: Callable[..., Any]
) -> None:
    with pytest.raises(ValidationError) as refused:
        await check_target(target, ipv6_everywhere(lab_scope), make_resolver())

    assert refused.value.rule == "target_ipv4_mapped_ipv6"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "target",
    [
        # unsafe: NAT64 not listed in allow_networks (::/0 does not open it: the prefix must be named)
        "64:ff9b::a14:5",
        "64:ff9b:1::a14:5",
        "64:ff9b::a14:0/120",
    ],
)
async def test_target_rejects_nat64_unless_allow_networks_lists_it(
    target: str, lab_scope: Scope, make_resolver: Callable[..., Any]
) -> None:
    with pytest.raises(ValidationError) as refused:
        await check_target(target, ipv6_everywhere(lab_scope), make_resolver())

    assert refused.value.rule == "target_ipv4_mapped_ipv6"
    assert "allow_networks" in refused.value.message


NAT64_OPEN = ("64:ff9b::/96", "64:ff9b:1::/96")  # the /96 of a local-use translator


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("target", "rule"),
    [
        # safe: the embedded IPv4 address is in scope
        ("64:ff9b::a14:5", None),  # 10.20.0.5
        ("64:ff9b:1::a14:5", None),
        ("64:ff9b::a14:100/120", None),  # 10.20.1.0/24
        # unsafe: the embedded IPv4 address breaks an IPv4 rule
        ("64:ff9b::a14:1", "target_denied_gateway"),  # 10.20.0.1
        ("64:ff9b::a14:2", "target_denied_own_address"),
        ("64:ff9b::a14:6305", "target_denied_policy"),  # 10.20.99.5
        ("64:ff9b::a15:5", "target_out_of_scope"),  # 10.21.0.5
        ("64:ff9b::7f00:1", "target_denied_loopback"),
        ("64:ff9b::a9fe:a9fe", "target_denied_link_local"),  # 169.254.169.254, cloud metadata
        ("64:ff9b::a14:6300/120", "target_denied_policy"),
        ("64:ff9b::7f00:0/120", "target_denied_loopback"),
    ],
)
async def test_target_rejects_nat64_embedding_refused_ipv4(
    target: str, rule: str | None, lab_scope: Scope, make_resolver: Callable[..., Any]
) -> None:
    scope = dataclasses.replace(lab_scope, allowed=(*lab_scope.allowed, *map(ipaddress.ip_network, NAT64_OPEN)))
    if rule is None:
        await check_target(target, scope, make_resolver())
        return
    with pytest.raises(ValidationError) as refused:
        await check_target(target, scope, make_resolver())

    assert refused.value.rule == rule
    assert "NAT64" in refused.value.message


@pytest.mark.anyio
async def test_target_rejects_nat64_loopback_even_with_loopback_opened(
    lab_scope: Scope, make_resolver: Callable[..., Any]
) -> None:
    # insecure_allow_loopback opens this host's loopback, not the translator's.
    scope = dataclasses.replace(
        lab_scope, allow_loopback=True, allowed=(*lab_scope.allowed, ipaddress.ip_network("64:ff9b::/96"))
    )

    with pytest.raises(ValidationError) as refused:
        await check_target("64:ff9b::7f00:1", scope, make_resolver())

    assert refused.value.rule == "target_denied_loopback"


@pytest.mark.anyio
async def test_target_rejects_hostname_resolving_to_nat64_of_refused_ipv4(
    lab_scope: Scope, make_resolver: Callable[..., Any]
) -> None:
    scope = dataclasses.replace(lab_scope, allowed=(*lab_scope.allowed, ipaddress.ip_network("64:ff9b::/96")))
    resolver = make_resolver({"web.lab.internal": ["10.20.0.5", "64:ff9b::a14:1"]})

    with pytest.raises(ValidationError) as refused:
        await check_target("web.lab.internal", scope, resolver)

    assert refused.value.rule == "target_hostname_resolves_out_of_scope"
    assert "target_denied_gateway" in refused.value.message


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("target", "rule"),
    [
        # safe: inside the opened part
        ("64:ff9b::a14:5", None),
        # unsafe: the rest of the NAT64 prefix stays closed
        ("64:ff9b::a15:5", "target_ipv4_mapped_ipv6"),
        ("64:ff9b::a14:100/120", "target_ipv4_mapped_ipv6"),  # 10.20.1.0/24: in scope, but not opened
    ],
)
async def test_target_rejects_nat64_outside_the_opened_part(
    target: str, rule: str | None, lab_scope: Scope, make_resolver: Callable[..., Any]
) -> None:
    scope = dataclasses.replace(lab_scope, allowed=(*lab_scope.allowed, ipaddress.ip_network("64:ff9b::a14:0/120")))
    if rule is None:
        await check_target(target, scope, make_resolver())
        return
    with pytest.raises(ValidationError) as refused:
        await check_target(target, scope, make_resolver())

    assert refused.value.rule == rule


@pytest.mark.anyio
async def test_target_rejects_nat64_opened_by_an_entry_wider_than_96(
    lab_scope: Scope, make_resolver: Callable[..., Any]
) -> None:
    # A /64 entry in the local-use prefix: a translator on RFC 6052's /64 layout reads the IPv4
    # from bits this check does not look at, so such an entry opens nothing.
    wide = ipaddress.ip_network("64:ff9b:1:0:0::/64")
    scope = dataclasses.replace(lab_scope, allowed=(*lab_scope.allowed, wide))

    with pytest.raises(ValidationError) as refused:
        await check_target("64:ff9b:1::a14:5", scope, make_resolver())  # last 32 bits: 10.20.0.5

    assert refused.value.rule == "target_ipv4_mapped_ipv6"
