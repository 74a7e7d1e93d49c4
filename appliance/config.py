"""Process settings: what needs a restart to change (transport, ports, paths, privilege mode).

Everything that may change while the appliance runs (scope, limits, tools enabled) lives in the
policy file instead (`appliance.policy`). Settings are built once in `main()` and passed down;
nothing else in the package reads the environment, but for the OpenTelemetry SDK's own OTEL_*
variables (appliance.tracing.export; README: Traces).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from appliance.audit.syslog import SyslogTarget
from appliance.errors import ConfigError

# The default policies ship inside the package (package data), so that a `pip install` works
# from any folder; they are also the repository's only copies (the image copies them to
# /etc/appliance/ for operators to mount over).
DEFAULT_POLICY_PATH = Path(__file__).resolve().parent / "data" / "policies" / "scope.yaml"
DEFAULT_CAPABILITY_POLICY_PATH = DEFAULT_POLICY_PATH.with_name("capabilities.yaml")
SECRETS_DIR = Path("/run/secrets")
# The image's Debian `ca-certificates` bundle (Containerfile); also where Debian hosts keep it.
DEFAULT_CA_FILE = Path("/etc/ssl/certs/ca-certificates.crt")
DEFAULT_AUDIT_KEY_FILE = SECRETS_DIR / "appliance_audit_key"
# An origin as browsers send it (RFC 6454: scheme, host, optional port; no path, no userinfo),
# with `*` allowed only as the whole port. The host is a DNS name or a bracketed IPv6 literal.
ORIGIN = re.compile(r"https?://(?:[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\])(?::(?:[0-9]{1,5}|\*))?")
# The sidecar token: the same rule as the HTTP bearer tokens (appliance.auth.TOKEN).
HEALTH_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{16,512}")


def _secret_file(name: str) -> Path | None:
    """A secret's path when it is mounted (compose secrets), else None (the setting is off)."""
    path = SECRETS_DIR / name
    return path if path.is_file() else None


# The job store's home when no writable data directory is mounted (a plain `docker run --rm`).
# /tmp is the container's own tmpfs; the store creates the directory 0700 (S108 does not apply).
EPHEMERAL_DATA_DIR = Path("/tmp/appliance-data")  # noqa: S108


class Settings(BaseSettings):
    """Settings from `APPLIANCE_*` environment variables and files in /run/secrets."""

    model_config = SettingsConfigDict(
        env_prefix="APPLIANCE_",
        # Only read the secrets folder when it exists: a developer's host has none.
        secrets_dir=SECRETS_DIR if SECRETS_DIR.is_dir() else None,
        extra="ignore",
    )

    transport: Literal["stdio", "http"] = Field(
        default="stdio", description="MCP transport: stdio (for `docker run -i`) or streamable HTTP."
    )
    host: str = Field(default="127.0.0.1", description="HTTP listen address (http transport only).")
    port: int = Field(default=8080, ge=0, le=65535, description="HTTP listen port; 0 picks a free one.")
    http_path: str = Field(default="/mcp", pattern=r"^/[a-z0-9/_-]*$", description="Path of the MCP endpoint.")
    policy_path: Path = Field(
        default=DEFAULT_POLICY_PATH, description="Scope policy file (YAML); re-read on SIGHUP and on change."
    )
    privilege_mode: Literal["connect", "raw"] = Field(
        default="connect",
        description="connect: no capabilities, connect scans only. raw: CAP_NET_RAW for SYN scans and masscan.",
    )
    enforce_privileges: bool = Field(
        default=False,
        description="Refuse to start when the process holds more than its mode allows (the image sets it).",
    )
    capability_policy_path: Path = Field(
        default=DEFAULT_CAPABILITY_POLICY_PATH, description="What each privilege mode may hold."
    )
    audit_path: Path | None = Field(
        default=None, description="Append audit lines (JSON) to this file; unset means stderr."
    )
    audit_key_file: Path | None = Field(
        default=DEFAULT_AUDIT_KEY_FILE,
        description="HMAC key of the audit chain, used when present (the default path may be absent: then a "
        "plain SHA-256 chain); another path that cannot be read refuses start.",
    )
    audit_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=4096, description="The audit file is rotated before it grows past this."
    )
    audit_keep_files: int = Field(
        default=5, ge=1, le=1000, description="Rotated audit files kept (FILE.1 ... FILE.N); older ones go."
    )
    audit_syslog: str | None = Field(
        default=None,
        description="Also forward each audit line to syslog: unix:/dev/log or udp://HOST:PORT (off when unset).",
    )
    data_dir: Path | None = Field(
        default=None,
        description="Where the job store lives (the image: /var/lib/appliance, a volume). Unset or not writable: "
        f"{EPHEMERAL_DATA_DIR}, lost with the container (/healthz says store: ephemeral).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO")
    nmap_path: Path = Field(default=Path("/usr/bin/nmap"))
    masscan_path: Path = Field(default=Path("/usr/bin/masscan"))
    gobuster_path: Path = Field(default=Path("/usr/bin/gobuster"))
    wordlist_dir: Path = Field(
        default=Path(__file__).resolve().parent / "data" / "wordlists",
        description="Folder of the bundled wordlists that gobuster_scan names by file stem.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["127.0.0.1:*", "localhost:*", "[::1]:*"],
        description="Host header values the HTTP transport accepts (DNS-rebinding protection).",
    )
    allowed_origins: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        description=(
            "Origin header values the HTTP transport accepts from browser clients (DNS-rebinding "
            "protection); `scheme://host:port`, or `:*` for any port. A request without Origin is not a browser's."
        ),
    )
    insecure_http_no_auth: bool = Field(
        default=False,
        description="TEST ONLY: serve HTTP on a loopback address without a bearer token.",
    )
    auth_tokens_file: Path | None = Field(
        default=Path("/run/secrets/appliance_tokens") if Path("/run/secrets/appliance_tokens").is_file() else None,
        description="File of 'principal token' lines (several for rotation); re-read on SIGHUP and on change.",
    )
    health_host: str = Field(default="127.0.0.1", description="Listen address of the health and metrics sidecar.")
    health_port: int = Field(default=9090, ge=0, le=65535, description="Sidecar port; 0 picks a free one.")
    health_enabled: bool = Field(
        default=True, description="Run the aiohttp sidecar (/livez /readyz /healthz /metrics)."
    )
    health_token: SecretStr | None = Field(
        default=None,
        description="When set, /healthz and /metrics need 'Authorization: Bearer <it>' (16+ URL-safe characters; "
        "an empty or weak one refuses start); /livez and /readyz stay open.",
    )
    health_allowed_hosts: list[str] = Field(
        default_factory=lambda: ["127.0.0.1:*", "localhost:*", "[::1]:*"],
        description="Host header values /healthz and /metrics accept (DNS-rebinding protection); 'name:*' "
        "allows any port. Add the names Prometheus or an orchestrator uses.",
    )
    health_cpu_percent: float = Field(default=95.0, gt=0, le=100, description="CPU use above this is 'degraded'.")
    health_memory_percent: float = Field(default=90.0, gt=0, le=100, description="Memory use (of the cgroup limit).")
    health_disk_percent: float = Field(default=95.0, gt=0, le=100, description="Use of the audit sink's filesystem.")
    drain_seconds: float = Field(
        default=1.0, ge=0, le=60, description="On shutdown, running scans get this long before they are killed."
    )
    reload_poll_seconds: float = Field(
        default=2.0, gt=0, le=3600, description="How often the policy and token files are checked for changes."
    )
    auth_token: SecretStr | None = Field(
        default=None, description="Bearer token for the HTTP transport (or the file /run/secrets/appliance_auth_token)."
    )
    oauth_issuer: str | None = Field(
        default=None,
        description="OAuth 2.1 / OpenID issuer whose JWT access tokens the HTTP transport accepts (https; exactly "
        "the `iss` of its tokens). Its metadata and keys are fetched from it alone; static tokens stay valid.",
    )
    public_url: str | None = Field(
        default=None,
        description="The MCP endpoint's URL as clients reach it (e.g. https://scanner.lab.example/mcp): the "
        "resource identifier JWTs must carry in `aud` (RFC 8707) and the base of the protected resource metadata.",
    )
    insecure_oauth_loopback_http: bool = Field(
        default=False,
        description="TEST ONLY: allow an http:// issuer and public URL on a loopback host.",
    )

    tls_cert_file: Path | None = Field(
        default=_secret_file("appliance_tls_cert"),
        description="PEM certificate chain (leaf first) for HTTPS on the MCP port and the sidecar (or the secret "
        "/run/secrets/appliance_tls_cert); reloaded on change. Needs tls_key_file.",
    )
    tls_key_file: Path | None = Field(
        default=_secret_file("appliance_tls_key"),
        description="PEM private key of tls_cert_file (or the secret /run/secrets/appliance_tls_key).",
    )
    ca_file: Path = Field(
        default=DEFAULT_CA_FILE,
        description="Trust anchors (PEM) for outgoing https: the identity provider's JWKS, an OTLP exporter.",
    )

    role: Literal["standalone", "front", "segment"] = Field(
        default="standalone",
        description="standalone: MCP endpoint and scanners, SQLite job store. front: the fleet's MCP endpoint "
        "(checks, routes to segments, answers job queries; runs no scanner). segment: runs the scans of one "
        "segment from NATS (no MCP endpoint). README: Fleet.",
    )
    nats_url: str | None = Field(
        default=None,
        description="The fleet's NATS servers, comma-separated (nats:// or tls://); needed by front and segment.",
    )
    nats_user: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="This appliance's NATS user (scripts/up makes `front` and `segment-<segment>`, with subject "
        "permissions for the role; README: Fleet, bus security). Needs nats_password_file.",
    )
    nats_password_file: Path | None = Field(
        default=_secret_file("appliance_nats_password"),
        description="File holding nats_user's password (or the secret /run/secrets/appliance_nats_password); "
        "read at start, never logged.",
    )
    nats_credentials_file: Path | None = Field(
        default=_secret_file("appliance_nats_creds"),
        description="NATS credentials (.creds, decentralized JWT auth) of this appliance instead of a user and "
        "password (or the secret /run/secrets/appliance_nats_creds).",
    )
    request_state_key_file: Path | None = Field(
        default=_secret_file("appliance_request_state_key"),
        description="Keys (one a line, each 32 bytes or more; the first seals, all open: rotation) that seal the "
        "2026-07-28 request state, shared by every front so that an approval answer may reach any front (or the "
        "secret /run/secrets/appliance_request_state_key). Unset: a key of this process alone, and a front "
        "refuses calls that need approval.",
    )
    fleet_seal_key_file: Path | None = Field(
        default=_secret_file("appliance_fleet_seal_key"),
        description="A front's Ed25519 private key (PEM) that seals the jobs it admits (or the secret "
        "/run/secrets/appliance_fleet_seal_key); a front refuses to start without it. scripts/create-nats-secrets "
        "writes secrets/fleet_seal_key.pem.",
    )
    fleet_seal_public_keys_file: Path | None = Field(
        default=_secret_file("appliance_fleet_seal_pub"),
        description="A segment's file of the fronts' Ed25519 public keys (PEM, one or more: rotation), or the "
        "secret /run/secrets/appliance_fleet_seal_pub; a segment runs only jobs a front sealed and refuses to "
        "start without it.",
    )
    nats_ca_file: Path | None = Field(
        default=_secret_file("appliance_nats_ca"),
        description="Trust anchor (PEM) of the NATS servers' certificates, for tls:// URLs (or the secret "
        "/run/secrets/appliance_nats_ca).",
    )
    segment: str | None = Field(
        default=None, description="The segment a segment appliance runs scans for (its job subject jobs.<segment>)."
    )
    appliance_id: str = Field(
        default_factory=lambda: re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64] or "appliance",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="This appliance's name in the fleet (claims, heartbeats); default: the host name.",
    )
    fleet_ack_wait_seconds: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="How long a segment appliance may hold a job without a heartbeat before it is redelivered.",
    )
    fleet_max_deliver: int = Field(
        default=2, ge=1, le=10, description="Deliveries of one job in all (2: one redelivery to another appliance)."
    )
    fleet_replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="Copies JetStream keeps of the fleet's buckets and queue when it creates them (3 on a "
        "three-node cluster: one node may fail without losing a job).",
    )

    @field_validator("allowed_origins")
    @classmethod
    def _origins_exact(cls, value: list[str]) -> list[str]:
        # The SDK compares an Origin by string equality, or by prefix for a trailing ":*". A
        # trailing slash, a path or a bare "*" would never match (or, as a prefix, match too much),
        # so a typo here must stop the start instead of silently locking out or letting in browsers.
        for origin in value:
            if not ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"{origin!r} is not an origin; write scheme://host or scheme://host:port, "
                    "or scheme://host:* for any port, e.g. 'http://localhost:*'"
                )
        return value

    @field_validator("audit_syslog")
    @classmethod
    def _syslog_target(cls, value: str | None) -> str | None:
        if value is not None:
            SyslogTarget.parse(value)  # its ValueError names the two forms
        return value

    @field_validator("health_token")
    @classmethod
    def _health_token_strong(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty value used to switch the sidecar's auth off without a word; now it is an error.
        if value is not None and not HEALTH_TOKEN.fullmatch(value.get_secret_value()):
            raise ValueError("empty or weak: use 16+ URL-safe characters (e.g. scripts/create-token FILE), or unset it")
        return value

    @model_validator(mode="after")
    def _fleet_roles_complete(self) -> Settings:
        if self.role != "standalone" and not self.nats_url:
            raise ValueError(f"role {self.role} needs APPLIANCE_NATS_URL (the fleet's NATS servers)")
        if self.role == "segment" and not self.segment:
            raise ValueError("role segment needs APPLIANCE_SEGMENT (the segment it runs scans for)")
        if self.role == "front" and self.transport != "http":
            raise ValueError("role front serves MCP over HTTP: set APPLIANCE_TRANSPORT=http")
        if self.role != "standalone" and self.nats_user is not None:
            if self.nats_password_file is None:
                raise ValueError("APPLIANCE_NATS_USER needs APPLIANCE_NATS_PASSWORD_FILE (scripts/up writes it)")
            if self.nats_credentials_file is not None:
                raise ValueError(
                    "set APPLIANCE_NATS_USER (with a password file) or APPLIANCE_NATS_CREDENTIALS_FILE, not both"
                )
        return self

    def nats_servers(self) -> tuple[str, ...]:
        return tuple(url.strip() for url in (self.nats_url or "").split(",") if url.strip())

    def redacted(self) -> dict[str, Any]:
        """The settings as JSON-ready values with every secret replaced by a marker."""
        shown: dict[str, Any] = {}
        for name, value in self.model_dump(mode="json").items():
            field_value = getattr(self, name)
            if isinstance(field_value, SecretStr):
                shown[name] = "**redacted**"
            elif name == "nats_url" and value:
                shown[name] = re.sub(r"//[^/@,]*@", "//**redacted**@", value)  # user:password@ in a URL
            else:
                shown[name] = value
        return shown


def load_settings(**overrides: Any) -> Settings:
    """Build the settings once, turning pydantic's error into the appliance's own."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"APPLIANCE_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}", rule="settings_invalid") from exc
