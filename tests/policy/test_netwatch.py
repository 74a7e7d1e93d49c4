"""netwatch: the change counter the store checks on every call.

A fake socket stands in for netlink in the unit tests; the last test runs the real watch in a
network namespace of its own and adds an address there.
"""

from __future__ import annotations

import errno
import functools
import subprocess
import sys
from pathlib import Path

import pytest
from support import write_policy

from appliance.policy import netwatch
from appliance.policy.netinfo import SIGNATURE_FILES, facts_signature


class FakeNetlink:
    def __init__(self) -> None:
        self.queue: list[bytes | OSError] = []

    def recv(self, size: int) -> bytes:
        if not self.queue:
            raise BlockingIOError(errno.EAGAIN, "no message")
        item = self.queue.pop(0)
        if isinstance(item, OSError):
            raise item
        return item


@pytest.fixture
def watch() -> tuple[netwatch.NetlinkWatch, FakeNetlink]:
    fake = FakeNetlink()
    watch = netwatch.NetlinkWatch.__new__(netwatch.NetlinkWatch)
    watch._socket = fake  # type: ignore[assignment]
    watch._generation = 0
    return watch, fake


def test_no_message_keeps_the_generation(watch: tuple[netwatch.NetlinkWatch, FakeNetlink]) -> None:
    w, _ = watch

    assert w.generation() == w.generation() == 0


def test_a_batch_of_messages_moves_the_generation_once(watch: tuple[netwatch.NetlinkWatch, FakeNetlink]) -> None:
    w, fake = watch
    fake.queue += [b"RTM_NEWADDR", b"RTM_NEWROUTE", b"RTM_NEWROUTE"]

    assert w.generation() == 1
    assert fake.queue == []
    assert w.generation() == 1


def test_overflowed_queue_counts_as_a_change(watch: tuple[netwatch.NetlinkWatch, FakeNetlink]) -> None:
    # ENOBUFS: the kernel dropped notifications; what they said is unknown, so the facts are re-read.
    w, fake = watch
    fake.queue.append(OSError(errno.ENOBUFS, "No buffer space available"))

    assert w.generation() == 1


def test_other_socket_errors_are_raised(watch: tuple[netwatch.NetlinkWatch, FakeNetlink]) -> None:
    w, fake = watch
    fake.queue.append(OSError(errno.EBADF, "Bad file descriptor"))

    with pytest.raises(OSError, match="Bad file descriptor"):
        w.generation()


def test_real_netlink_socket_opens_unprivileged_groups() -> None:
    # Binding to the rtnetlink groups needs no capability; the appliance runs without any.
    w = netwatch.NetlinkWatch()
    try:
        assert isinstance(w.generation(), int)
    finally:
        w.close()


def test_signature_watch_moves_when_a_table_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SIGNATURE_FILES:
        (tmp_path / name).write_text("before\n")
    monkeypatch.setattr(netwatch, "facts_signature", functools.partial(facts_signature, tmp_path))
    w = netwatch.SignatureWatch()

    assert w.generation() == 0
    (tmp_path / "route").write_text("after\n")
    assert w.generation() == 1
    assert w.generation() == 1


# The kernel side, for real: a child process in a network namespace of its own (nothing here
# touches this host's interfaces) adds an address to its loopback interface and asks the store, with
# the real netlink watch and the real interface tables, whether that address may be scanned.
NAMESPACE_CHECK = """
import ipaddress, subprocess, sys
from pathlib import Path
from appliance.errors import ValidationError
from appliance.policy.store import PolicyStore
from appliance.policy.targets import check_address

store = PolicyStore(Path(sys.argv[1]))
added = ipaddress.ip_address("10.20.0.77")
check_address(added, store.current.scope)  # an ordinary lab address before it becomes ours
for command in ("ip link set lo up", "ip addr add 10.20.0.77/24 dev lo"):
    subprocess.run(command.split(), check=True)
try:
    check_address(added, store.current.scope)  # no reload, no SIGHUP
except ValidationError as exc:
    print(exc.rule)
else:
    print("allowed")
"""


def test_target_rejects_address_added_after_start_in_a_real_namespace(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, {"scope": {"allow_networks": ["10.20.0.0/16"]}})
    done = subprocess.run(
        ["unshare", "-n", "--", sys.executable, "-c", NAMESPACE_CHECK, str(policy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["target_denied_own_address"]
