"""Port specification check: TCP numbers and low-high ranges only, counted against the limit."""

from __future__ import annotations

import pytest

from appliance.errors import ValidationError
from appliance.policy.ports import MAX_PORT_SPEC_LENGTH, check_ports

LIMIT = 1024


@pytest.mark.parametrize(
    ("text", "count"),
    [
        # safe
        ("22", 1),
        ("1", 1),
        ("65535", 1),
        ("22,80,443", 3),
        ("8000-8100", 101),
        ("22,80,8000-8100", 103),
        ("80,80", 1),  # duplicates are counted once
        ("1-100,50-150", 150),  # overlaps are counted once
        ("1-1024", 1024),  # exactly the limit
        ("65535-65535", 1),
    ],
)
def test_check_ports_accepts_and_counts(text: str, count: int) -> None:
    spec = check_ports(text, LIMIT)

    assert (spec.text, spec.count) == (text, count)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        # unsafe
        pytest.param("", "ports_empty", id="empty"),
        pytest.param("0", "ports_invalid", id="port_zero"),
        pytest.param("0-1024", "ports_invalid", id="range_from_zero"),
        pytest.param("65536", "ports_out_of_range", id="port_above_65535"),
        pytest.param("99999", "ports_out_of_range", id="five_digits_above_65535"),
        pytest.param("1-65536", "ports_out_of_range", id="range_past_65535"),
        pytest.param("80-22", "ports_out_of_range", id="reversed_range"),
        pytest.param("-1", "ports_option_injection", id="negative_port"),
        pytest.param("-100", "ports_option_injection", id="open_low_range"),
        pytest.param("-", "ports_option_injection", id="all_ports_dash"),
        pytest.param("-p-", "ports_option_injection", id="option_in_ports"),
        pytest.param("1-", "ports_invalid", id="open_high_range"),
        pytest.param("http", "ports_invalid", id="service_name"),
        pytest.param("T:80", "ports_invalid", id="protocol_prefix"),
        pytest.param("U:53,T:80", "ports_invalid", id="udp_prefix"),
        pytest.param("[80]", "ports_invalid", id="bracket_range"),
        pytest.param("[1-65535]", "ports_invalid", id="bracket_all_ports"),
        pytest.param("*", "ports_invalid", id="wildcard"),
        pytest.param("22 80", "ports_invalid", id="space_separated"),
        pytest.param("22\n80", "ports_invalid", id="newline_separated"),
        pytest.param("22,", "ports_invalid", id="trailing_comma"),
        pytest.param("22,,80", "ports_invalid", id="empty_item"),
        pytest.param("022", "ports_invalid", id="leading_zero"),
        pytest.param("0x50", "ports_invalid", id="hex_port"),
        pytest.param("80/tcp", "ports_invalid", id="protocol_suffix"),
        pytest.param("+80", "ports_invalid", id="signed_port"),
        pytest.param("\uff11\uff12\uff13", "ports_invalid", id="fullwidth_digits"),
        pytest.param("\u0668\u0660", "ports_invalid", id="arabic_indic_digits"),
        pytest.param("1" * (MAX_PORT_SPEC_LENGTH + 1), "ports_invalid", id="longer_than_spec_limit"),
        pytest.param("1-65535", "ports_too_many", id="all_ports"),
        pytest.param("1-1025", "ports_too_many", id="one_range_over_limit"),
        pytest.param("1-1000,2000-2100", "ports_too_many", id="ranges_adding_up_over_limit"),
    ],
)
def test_check_ports_refuses(text: str, rule: str) -> None:
    with pytest.raises(ValidationError) as refused:
        check_ports(text, LIMIT)

    assert refused.value.rule == rule


@pytest.mark.parametrize("text", ["1-11", "1,2,3,4,5,6,7,8,9,10,11", "1-5,6,7-11"])
def test_check_ports_refuses_more_ports_than_the_policy_limit(text: str) -> None:
    assert check_ports("1-10", 10).count == 10
    with pytest.raises(ValidationError) as refused:
        check_ports(text, 10)
    assert refused.value.rule == "ports_too_many"
