"""The current policy and its compiled scope, swapped whole on reload or when the host's network changes.

A call takes one `PolicySnapshot` when it starts (`store.current`, read once) and uses it to the
end, so a reload never changes the rules under a running call. A bad file never replaces a good
policy. Each read of `current` first asks `netwatch.generation()` whether the kernel reported an
address, link or route change since the snapshot was built; when it did, the facts are read
again and the same policy is compiled against them, so an address added after start is denied
from the next call on, without a SIGHUP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from appliance.errors import PolicyError
from appliance.policy import netwatch
from appliance.policy.migrate import Moved
from appliance.policy.model import POLICY_VERSION, Policy, load_document
from appliance.policy.netinfo import NetworkFacts, read_network_facts
from appliance.policy.nse import SCRIPT_DB, build_nmap_datadir, check_script_allowlist
from appliance.policy.scope import compile_scope
from appliance.policy.targets import Scope

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicySnapshot:
    policy: Policy
    scope: Scope
    source: Path
    facts: NetworkFacts
    # A version 1 file is converted at load: its version and the keys that moved.
    file_version: int = POLICY_VERSION
    moved: tuple[Moved, ...] = ()
    # When the file was loaded (wall clock): the status page's "reloaded at". A recompile for new
    # network facts keeps it, since the file did not change.
    loaded_at: float = field(default_factory=time.time)


def build_snapshot(path: Path, facts: NetworkFacts, script_db: Path = SCRIPT_DB) -> PolicySnapshot:
    """Load, validate and compile one policy file; raises PolicyError naming every problem."""
    document = load_document(path)
    policy = document.policy
    check_script_allowlist(policy, script_db)
    build_nmap_datadir(policy.tools.nmap_scan.allowed_scripts, script_db)
    return PolicySnapshot(policy, compile_scope(policy, facts), path, facts, document.file_version, document.moved)


class PolicyStore:
    def __init__(
        self,
        path: Path,
        facts: Callable[[], NetworkFacts] = read_network_facts,
        script_db: Path = SCRIPT_DB,
        # A value that changes when the host's addresses or routes change (equal: nothing to re-read).
        signature: Callable[[], object] = netwatch.generation,
    ) -> None:
        self._path = path
        self._facts = facts
        self._script_db = script_db
        self._signature = signature
        self._seen = signature()
        self._current = build_snapshot(path, facts(), script_db)
        # The last reload refused since the current policy loaded: (when, rule), for the status page.
        self.refused: tuple[float, str] | None = None
        self._warn_if_insecure(self._current)

    @property
    def current(self) -> PolicySnapshot:
        """The snapshot for one call, recompiled first if the host's addresses or routes changed."""
        seen = self._signature()
        if seen != self._seen:
            self._refresh_facts()
            # Only once the re-read worked: a failed read (an interface vanishing mid-read) is
            # tried again by the next call instead of leaving the old scope in force.
            self._seen = seen
        return self._current

    def _refresh_facts(self) -> None:
        facts = self._facts()
        if facts == self._current.facts:
            return
        snapshot = self._current
        self._current = replace(snapshot, scope=compile_scope(snapshot.policy, facts), facts=facts)
        log.info("network facts changed; scope recompiled", extra={"policy_path": str(self._path)})

    def reload(self) -> bool:
        """Re-read the file. True when the new policy is in force; False keeps the last good one."""
        self._seen = self._signature()
        try:
            snapshot = build_snapshot(self._path, self._facts(), self._script_db)
        except PolicyError as exc:
            log.error(
                "policy reload refused; the last good policy stays", extra={"rule": exc.rule, "reason": exc.message}
            )
            # The facts are the host's, not the file's: they apply to the last good policy too.
            self._refresh_facts()
            self.refused = (time.time(), exc.rule)
            return False
        self._current = snapshot
        self.refused = None
        self._warn_if_insecure(snapshot)
        log.info("policy reloaded", extra={"policy_path": str(self._path)})
        return True

    @staticmethod
    def _warn_if_insecure(snapshot: PolicySnapshot) -> None:
        if snapshot.policy.scope.insecure_allow_loopback:
            log.warning(
                "INSECURE: insecure_allow_loopback is on; loopback targets are allowed (tests and demos only)",
                extra={"policy_path": str(snapshot.source)},
            )
