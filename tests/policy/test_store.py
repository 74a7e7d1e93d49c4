"""PolicyStore: one snapshot per call, recompiled when the host's addresses or routes change.

The facts and the table signature are injected: nothing reads this host's tables.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.errors import ValidationError
from appliance.policy.netinfo import NetworkFacts
from appliance.policy.store import PolicyStore
from appliance.policy.targets import check_address

ADDED = ipaddress.ip_address("10.20.0.77")


class Host:
    """A fake host whose addresses change between calls, as `ip addr add` would change them."""

    def __init__(self, facts: NetworkFacts) -> None:
        self.facts = facts
        self.generation = 0
        self.reads = 0
        self.fail_next = False

    def add_address(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        self.facts = NetworkFacts(
            own_addresses=self.facts.own_addresses | {address},
            broadcasts=self.facts.broadcasts,
            gateways=self.facts.gateways,
            subnets=self.facts.subnets,
        )
        self.generation += 1

    def read(self) -> NetworkFacts:
        self.reads += 1
        if self.fail_next:
            self.fail_next = False
            raise OSError("interface vanished mid-read")
        return self.facts

    def signature(self) -> bytes:
        return str(self.generation).encode()


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def host(lab_facts: NetworkFacts) -> Host:
    return Host(lab_facts)


@pytest.fixture
def store(tmp_path: Path, lab_policy_data: dict[str, Any], lab_script_db: Path, host: Host) -> PolicyStore:
    path = write(tmp_path / "policy.yaml", lab_policy_data)
    return PolicyStore(path, facts=host.read, script_db=lab_script_db, signature=host.signature)


def test_target_rejects_address_added_after_start_without_reload(store: PolicyStore, host: Host) -> None:
    check_address(ADDED, store.current.scope)  # an ordinary lab host before it becomes ours

    host.add_address(ADDED)

    with pytest.raises(ValidationError) as refused:
        check_address(ADDED, store.current.scope)
    assert refused.value.rule == "target_denied_own_address"
    assert ADDED in store.current.facts.own_addresses


def test_unchanged_tables_reuse_the_snapshot_without_reading_facts(store: PolicyStore, host: Host) -> None:
    first = store.current
    reads = host.reads

    assert store.current is first
    assert store.current is first
    assert host.reads == reads


def test_a_call_keeps_its_snapshot_when_the_facts_change(store: PolicyStore, host: Host) -> None:
    during_call = store.current  # what ScanService.call takes once

    host.add_address(ADDED)
    later = store.current

    assert later is not during_call
    check_address(ADDED, during_call.scope)  # the running call's rules did not change under it
    assert later.policy is during_call.policy  # only the facts moved, the policy is the same


def test_changed_signature_with_equal_facts_keeps_the_snapshot(store: PolicyStore, host: Host) -> None:
    first = store.current
    host.generation += 1  # e.g. a route's use counter: the tables changed, the facts did not

    assert store.current is first


def test_bad_reload_keeps_the_policy_but_applies_fresh_facts(store: PolicyStore, host: Host, tmp_path: Path) -> None:
    good = store.current.policy
    (tmp_path / "policy.yaml").write_text("version: 2\nscope: {allow_networks: [not-a-network]}\n")
    host.add_address(ADDED)

    assert store.reload() is False

    assert store.current.policy is good
    with pytest.raises(ValidationError) as refused:
        check_address(ADDED, store.current.scope)
    assert refused.value.rule == "target_denied_own_address"


def test_good_reload_uses_fresh_facts(
    store: PolicyStore, host: Host, tmp_path: Path, lab_policy_data: dict[str, Any]
) -> None:
    lab_policy_data["scope"]["deny_networks"] = []
    write(tmp_path / "policy.yaml", lab_policy_data)
    host.add_address(ADDED)

    assert store.reload() is True

    assert ADDED in store.current.facts.own_addresses


def test_reload_of_a_version_1_file_applies_its_limits_and_says_it_was_converted(
    store: PolicyStore, tmp_path: Path, lab_policy_data: dict[str, Any]
) -> None:
    old = {**lab_policy_data, "version": 1, "resilience": {"max_concurrent_scans": 2}}
    write(tmp_path / "policy.yaml", old)

    assert store.reload() is True

    snapshot = store.current
    assert snapshot.policy.limits.concurrency.global_.running == 2
    assert snapshot.file_version == 1
    assert [(m.old, m.new) for m in snapshot.moved] == [
        ("resilience.max_concurrent_scans", "limits.concurrency.global.running")
    ]


def test_reload_of_a_version_2_file_with_an_old_key_keeps_the_last_good_policy(
    store: PolicyStore, tmp_path: Path, lab_policy_data: dict[str, Any]
) -> None:
    good = store.current.policy
    write(tmp_path / "policy.yaml", {**lab_policy_data, "resilience": {"max_concurrent_scans": 2}})

    assert store.reload() is False

    assert store.current.policy is good


def test_failed_facts_read_is_retried_by_the_next_call(store: PolicyStore, host: Host) -> None:
    host.add_address(ADDED)
    host.fail_next = True  # the interface table changes under the read

    with pytest.raises(OSError, match="vanished"):
        store.current  # noqa: B018 - the property read is the call under test

    assert ADDED in store.current.facts.own_addresses  # retried, not left stale
