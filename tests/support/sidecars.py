"""The sidecar's health model on a real policy, audit sink and scanner table (no scanner runs),
and the status page's credentials: static tokens with scopes through the appliance's own verifier."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from appliance.audit import AuditSink
from appliance.auth import BearerTokenVerifier, TokenSource
from appliance.config import Settings
from appliance.health import Health, ScannerStatus
from appliance.policy.netinfo import NetworkFacts
from appliance.policy.store import PolicyStore
from appliance.tools import TOOLS
from support.policies import write_policy

HEALTH_TOKEN = "health-token-0123456789"
# principal -> (token, scopes column) of the tokens file `status_verifier` writes.
STATUS_TOKENS = {
    "reader": ("reader-token-0123456789", "scan:read,scan:run"),
    "admin": ("admin-token-0123456789ab", "scan:read,scan:admin"),
    "runner": ("runner-token-0123456789a", "scan:run"),
}


class State:
    draining = False


def make_health(tmp_path: Path, scanners_present: bool = True, audit_dir: Path | None = None) -> tuple[Health, State]:
    policy = write_policy(tmp_path)
    audit_path = (audit_dir or tmp_path) / "audit.log"
    settings = Settings(policy_path=policy, audit_path=audit_path, auth_token="never-shown-secret-123")  # type: ignore[arg-type]
    state = State()
    scanners = {t: ScannerStatus(f"/usr/bin/{t}", scanners_present, "v1" if scanners_present else None) for t in TOOLS}
    health = Health(
        settings,
        PolicyStore(policy, facts=NetworkFacts),
        AuditSink(audit_path),
        scanners,
        breakers=lambda: {t: {"state": "closed"} for t in TOOLS},
        draining=lambda: state.draining,
        privilege_check=lambda: {"ok": True, "excess": []},
    )
    return health, state


@dataclass(frozen=True)
class StatusTokens:
    verifier: BearerTokenVerifier
    source: TokenSource
    path: Path

    def revoke(self, principal: str) -> None:
        """Drop `principal`'s line from the file and reload, as an operator revokes a token."""
        kept = [line for line in self.path.read_text().splitlines() if not line.startswith(f"{principal} ")]
        self.path.write_text("\n".join(kept) + "\n")
        self.source.reload()


def status_verifier(tmp_path: Path) -> StatusTokens:
    """The MCP transport's verifier (appliance.auth) over a tokens file of STATUS_TOKENS."""
    path = tmp_path / "tokens"
    path.write_text("".join(f"{who} {token} {scopes}\n" for who, (token, scopes) in STATUS_TOKENS.items()))
    source = TokenSource(None, path, CollectorRegistry())
    return StatusTokens(BearerTokenVerifier(source), source, path)
