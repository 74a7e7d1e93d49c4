"""system_resolve: /etc/hosts first, then the resolver with the absolute name (no search list).

The hosts file is a temporary file and getaddrinfo a fake that records the names it was asked:
no DNS query leaves the test. That glibc really skips the search list for an absolute name was
checked by hand (a DNS stub on 127.0.0.1 under `unshare -n -m`, see the CHANGELOG).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from appliance.policy.resolve import absolute_name, hosts_lookup, system_resolve

pytestmark = pytest.mark.anyio

HOSTS = """\
127.0.0.1 localhost
# 10.20.0.8 commented.lab.internal
10.20.0.7   filehost.lab.internal filehost   # trailing comment
10.20.0.9 Mixed.Lab.Internal
fd00:20::7 filehost.lab.internal
not-an-address broken.lab.internal
"""


class FakeGetAddrInfo:
    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def __call__(self, host: str, port: Any, *, type: int = 0) -> list[tuple[Any, ...]]:
        self.asked.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, type, 6, "", (address, 0)) for address in self.answers[host]]


@pytest.fixture
def hosts_file(tmp_path: Path) -> Path:
    path = tmp_path / "hosts"
    path.write_text(HOSTS)
    return path


async def test_resolver_never_asks_a_search_list_name(hosts_file: Path) -> None:
    # With `search corp.example` glibc asked ghost.lab.internal.corp.example; an absolute name it cannot.
    lookup = FakeGetAddrInfo({"ghost.lab.internal.corp.example": ["10.99.0.9"], "ghost.lab.internal.": []})

    assert await system_resolve("ghost.lab.internal", hosts_file=hosts_file, getaddrinfo=lookup) == []
    assert lookup.asked == ["ghost.lab.internal."]


async def test_resolver_returns_the_answers_for_the_absolute_name(hosts_file: Path) -> None:
    lookup = FakeGetAddrInfo({"web.lab.internal.": ["10.20.0.5", "10.20.0.5", "10.20.0.4"]})

    assert await system_resolve("web.lab.internal", hosts_file=hosts_file, getaddrinfo=lookup) == [
        "10.20.0.4",
        "10.20.0.5",
    ]


async def test_hosts_file_entry_answers_without_a_lookup(hosts_file: Path) -> None:
    # glibc 2.36 does not match "filehost.lab.internal." against the entry, so the file is read here.
    lookup = FakeGetAddrInfo({})

    answers = await system_resolve("filehost.lab.internal", hosts_file=hosts_file, getaddrinfo=lookup)

    assert answers == ["10.20.0.7", "fd00:20::7"]
    assert lookup.asked == []


async def test_missing_hosts_file_falls_back_to_the_resolver(tmp_path: Path) -> None:
    lookup = FakeGetAddrInfo({"web.lab.internal.": ["10.20.0.5"]})

    assert await system_resolve("web.lab.internal", hosts_file=tmp_path / "none", getaddrinfo=lookup) == ["10.20.0.5"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # safe: entries that match, case-insensitively, by any alias
        ("filehost.lab.internal", ["10.20.0.7", "fd00:20::7"]),
        ("mixed.lab.internal", ["10.20.0.9"]),
        # unsafe: comments, malformed addresses and partial names never match
        ("commented.lab.internal", []),
        ("broken.lab.internal", []),
        ("host.lab.internal", []),
        ("lab.internal", []),
    ],
)
def test_hosts_lookup(name: str, expected: list[str]) -> None:
    assert hosts_lookup(name, HOSTS) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("web.lab.internal", "web.lab.internal."),
        ("web.lab.internal.", "web.lab.internal."),
    ],
)
def test_absolute_name(name: str, expected: str) -> None:
    assert absolute_name(name) == expected
