"""TLS for the MCP HTTP transport and the sidecar, and the trust store for outgoing https.

One server context serves both listeners. A new certificate (renewal, rotation) is picked up
without a restart: the files are watched like the policy and, once a fresh context loads them,
loaded into the live context, so every later handshake presents the new certificate and open
connections keep theirs. A bad pair (half-written renewal, key of another certificate) keeps the
last good one, as a bad policy does; /healthz shows the problem.

Outgoing https (the identity provider's JWKS, an OTLP exporter) trusts `APPLIANCE_CA_FILE`,
by default the Debian CA bundle the image ships.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.config import DEFAULT_CA_FILE
from appliance.errors import ConfigError

log = logging.getLogger(__name__)

# TLS 1.2 is the oldest version without known protocol breaks; MCP clients all speak 1.3.
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True)
class CertificateInfo:
    """What /healthz shows of the certificate in use (no key material)."""

    subject: str
    not_after: str
    serial: str

    @classmethod
    def read(cls, cert_file: Path) -> CertificateInfo:
        # Imported here: only a TLS deployment pays for it. The first PEM block is the leaf.
        from cryptography import x509

        try:
            leaf = x509.load_pem_x509_certificate(cert_file.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot read the TLS certificate {cert_file}: {exc}",
                rule="tls_certificate_invalid",
                recovery_suggestion="Give a PEM certificate chain with the leaf first.",
            ) from exc
        return cls(leaf.subject.rfc4514_string(), leaf.not_valid_after_utc.isoformat(), format(leaf.serial_number, "x"))


def _load(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    try:
        context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"cannot load the TLS certificate {cert_file} with key {key_file}: {reason}",
            rule="tls_certificate_invalid",
            recovery_suggestion="Give a PEM certificate chain (leaf first) and its PEM private key, readable by "
            "UID 65532; scripts/create-cert makes a pair for the compose lab.",
        ) from exc


def server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MINIMUM_VERSION
    return context


class ServerTLS:
    """The listeners' SSL context, reloadable from its files (see the module doc)."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.context = server_context()
        _load(self.context, cert_file, key_file)  # a start with a bad pair is refused
        self.info = CertificateInfo.read(cert_file)
        self.problem: str | None = None
        self.loaded_at = datetime.now(UTC).isoformat(timespec="seconds")
        self._lock = threading.Lock()

    @property
    def watched(self) -> tuple[Path, Path]:
        return (self.cert_file, self.key_file)

    def reload(self) -> bool:
        """Load the files again; on any problem keep the certificate in use and say why."""
        with self._lock:
            try:
                # A scratch context first: load_cert_chain on the live one could fail half-way.
                _load(server_context(), self.cert_file, self.key_file)
                _load(self.context, self.cert_file, self.key_file)
                self.info = CertificateInfo.read(self.cert_file)
            except ConfigError as exc:
                self.problem = exc.message
                log.error(
                    "TLS certificate reload refused: the last good certificate stays in use",
                    extra={"rule": exc.rule, "reason": exc.message},
                )
                return False
            self.problem = None
            self.loaded_at = datetime.now(UTC).isoformat(timespec="seconds")
            log.info("TLS certificate reloaded", extra={"serial": self.info.serial, "not_after": self.info.not_after})
            return True

    def status(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "cert_file": str(self.cert_file),
            "subject": self.info.subject,
            "serial": self.info.serial,
            "not_after": self.info.not_after,
            "loaded_at": self.loaded_at,
            "problem": self.problem,
        }


def server_tls(cert_file: Path | None, key_file: Path | None) -> ServerTLS | None:
    """The listeners' TLS from the settings, None when neither file is set."""
    if cert_file is None and key_file is None:
        return None
    if cert_file is None or key_file is None:
        raise ConfigError(
            "TLS needs both APPLIANCE_TLS_CERT_FILE and APPLIANCE_TLS_KEY_FILE",
            rule="tls_incomplete",
            recovery_suggestion="Set both (or mount both secrets appliance_tls_cert and appliance_tls_key), or neither "
            "for cleartext HTTP.",
        )
    return ServerTLS(cert_file, key_file)


def client_context(ca_file: Path) -> ssl.SSLContext:
    """Verification for outgoing https: hostname checked, `ca_file` the only trust anchors."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot read the CA file {ca_file}: {exc}",
            rule="tls_ca_file_invalid",
            recovery_suggestion="Point APPLIANCE_CA_FILE at a PEM bundle (the image ships Debian's at "
            f"{DEFAULT_CA_FILE}).",
        ) from exc
    context.minimum_version = MINIMUM_VERSION
    return context


def pinned_context(cert_file: Path) -> ssl.SSLContext:
    """Trust exactly the appliance's own certificate (the health probe talks to itself).

    The probe dials the listen address, which need not be a name in the certificate, so the
    host name is not checked; the certificate must be the one in `cert_file` instead, which is
    stricter (VERIFY_X509_PARTIAL_CHAIN lets the leaf itself be the trust anchor).
    """
    context = ssl.create_default_context(cafile=str(cert_file))
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context
