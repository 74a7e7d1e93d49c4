"""Gobuster URL check: every form whose host is ambiguous is refused before the target check."""

from __future__ import annotations

import pytest

from appliance.errors import ValidationError
from appliance.policy.urls import MAX_URL_LENGTH, LabUrl, parse_lab_url


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # safe
        ("http://10.20.0.5/", LabUrl("http", "10.20.0.5", 80, "/")),
        ("http://10.20.0.5", LabUrl("http", "10.20.0.5", 80, "/")),
        ("https://web.lab.internal", LabUrl("https", "web.lab.internal", 443, "/")),
        ("http://web.lab.internal:8080/app/", LabUrl("http", "web.lab.internal", 8080, "/app/")),
        ("http://10.20.0.5:65535/a/b.c~d_e-f", LabUrl("http", "10.20.0.5", 65535, "/a/b.c~d_e-f")),
        ("http://[2001:db8::1]:8443/x", LabUrl("http", "2001:db8::1", 8443, "/x")),
        # The host keeps its case here; the target check lower-cases names.
        ("http://WEB.lab.internal/", LabUrl("http", "WEB.lab.internal", 80, "/")),
    ],
)
def test_parse_lab_url_accepts_plain_urls(text: str, expected: LabUrl) -> None:
    assert parse_lab_url(text) == expected


@pytest.mark.parametrize(
    ("url", "address", "expected"),
    [
        (LabUrl("http", "web.lab.internal", 8080, "/app/"), "10.20.0.5", "http://10.20.0.5:8080/app/"),
        (LabUrl("https", "web.lab.internal", 443, "/"), "2001:db8::5", "https://[2001:db8::5]:443/"),
    ],
)
def test_with_host_puts_the_checked_address_in_the_url(url: LabUrl, address: str, expected: str) -> None:
    assert url.with_host(address) == expected


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        # unsafe: user info hides the real host
        pytest.param("http://a@10.0.0.1/", "url_userinfo", id="userinfo_before_address"),
        pytest.param("http://10.0.0.1@evil.lab.internal/", "url_userinfo", id="lab_address_as_userinfo"),
        pytest.param("http://user:pass@10.20.0.5/", "url_userinfo", id="user_and_password"),
        pytest.param("http://10.20.0.5:80@169.254.169.254/", "url_userinfo", id="port_lookalike_userinfo"),
        pytest.param("http://@10.20.0.5/", "url_userinfo", id="empty_userinfo"),
        # unsafe: backslashes (browsers read them as slashes, others do not)
        pytest.param("http://10.20.0.5\\@evil.example/", "url_backslash", id="backslash_before_at"),
        pytest.param("http:\\\\10.20.0.5\\", "url_backslash", id="backslash_scheme_separator"),
        pytest.param("http://10.20.0.5\\.lab.internal/", "url_backslash", id="backslash_in_host"),
        pytest.param("http://evil.example\\@10.20.0.5/", "url_backslash", id="backslash_then_userinfo"),
        # unsafe: percent-encoded hosts
        pytest.param("http://%31%30.20.0.5/", "url_encoded_host", id="encoded_digits"),
        pytest.param("http://web%2elab.internal/", "url_encoded_host", id="encoded_dot"),
        pytest.param("http://10.20.0.5%00.lab.internal/", "url_encoded_host", id="encoded_nul"),
        # unsafe: queries and fragments
        pytest.param("http://10.20.0.5/?q=1", "url_query_or_fragment", id="query"),
        pytest.param("http://10.20.0.5/#top", "url_query_or_fragment", id="fragment"),
        pytest.param("http://10.20.0.5#@evil.example/", "url_query_or_fragment", id="fragment_then_at"),
        pytest.param("http://10.20.0.5?@evil.example/", "url_query_or_fragment", id="query_then_at"),
        # unsafe: schemes other than http(s), and none at all
        pytest.param("ftp://10.20.0.5/", "url_scheme", id="ftp"),
        pytest.param("javascript:alert(1)", "url_scheme", id="javascript"),
        pytest.param("file:///etc/passwd", "url_scheme", id="file"),
        pytest.param("gopher://10.20.0.5:70/", "url_scheme", id="gopher"),
        pytest.param("ws://10.20.0.5/", "url_scheme", id="websocket"),
        pytest.param("data:text/html,x", "url_scheme", id="data"),
        pytest.param("10.20.0.5/", "url_scheme", id="missing_scheme"),
        pytest.param("//10.20.0.5/", "url_scheme", id="scheme_relative"),
        pytest.param("http:/10.20.0.5/", "url_scheme", id="single_slash"),
        # unsafe: ports
        pytest.param("http://10.20.0.5:0/", "url_invalid", id="port_zero"),
        pytest.param("http://10.20.0.5:080/", "url_invalid", id="port_leading_zero"),
        pytest.param("http://10.20.0.5:/", "url_invalid", id="empty_port"),
        pytest.param("http://10.20.0.5:80:80/", "url_invalid", id="two_ports"),
        pytest.param("http://10.20.0.5:65536/", "url_port_invalid", id="port_65536"),
        pytest.param("http://10.20.0.5:99999/", "url_port_invalid", id="port_99999"),
        # unsafe: hosts and paths of no plain form
        pytest.param("HTTP://10.20.0.5/", "url_invalid", id="upper_case_scheme"),
        pytest.param("http://[::ffff:127.0.0.1]/", "url_invalid", id="bracketed_ipv4_mapped_dotted"),
        pytest.param("http://[::1/", "url_invalid", id="unclosed_bracket"),
        pytest.param("http://[2001:DB8::1]/", "url_invalid", id="bracketed_upper_case_ipv6"),
        pytest.param("http:///", "url_invalid", id="empty_host"),
        pytest.param("http://_evil/", "url_invalid", id="underscore_host"),
        pytest.param("http://10.20.0.5/%2e%2e/", "url_invalid", id="encoded_path"),
        pytest.param("http://10.20.0.5/a,b", "url_invalid", id="comma_in_path"),
        # unsafe: characters
        pytest.param("", "url_invalid", id="empty"),
        pytest.param("http://10.20.0.5 /", "url_invalid", id="space"),
        pytest.param("http://10.20.0.5/\n", "url_invalid", id="trailing_newline"),
        pytest.param("http://10.20.0.5/\r\nHost: evil", "url_invalid", id="header_injection"),
        pytest.param("http://10.20.0.5\t/", "url_invalid", id="tab"),
        pytest.param("http://10.20.0.5/\x00", "url_invalid", id="nul"),
        pytest.param("http://\uff11\uff10.\uff12\uff10.\uff10.\uff15/", "url_invalid", id="fullwidth_digits"),
        pytest.param("http://10\u300220\u30020\u30025/", "url_invalid", id="ideographic_full_stop"),
        pytest.param("http://" + "a" * MAX_URL_LENGTH, "url_invalid", id="too_long"),
    ],
)
def test_parse_lab_url_refuses(text: str, rule: str) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_lab_url(text)

    assert refused.value.rule == rule
