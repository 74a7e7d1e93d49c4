"""TLS files for tests, made by the same `scripts/create-cert` the compose deployment uses."""

from __future__ import annotations

import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

REPO = Path(__file__).resolve().parents[2]
CREATE_CERT = REPO / "scripts" / "create-cert"


@dataclass(frozen=True)
class Certs:
    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "appliance_tls_ca.pem"

    @property
    def cert(self) -> Path:
        return self.folder / "appliance_tls_cert.pem"

    @property
    def key(self) -> Path:
        return self.folder / "appliance_tls_key.pem"

    def env(self) -> dict[str, str]:
        """The appliance's settings for these files."""
        return {"APPLIANCE_TLS_CERT_FILE": str(self.cert), "APPLIANCE_TLS_KEY_FILE": str(self.key)}

    def client_context(self) -> ssl.SSLContext:
        """What an MCP client configured with the CA file trusts (host names checked)."""
        return ssl.create_default_context(cafile=str(self.ca))

    def serial(self) -> str:
        """The serial of the leaf in the chain file, hex as appliance.tls reports it."""
        return format(x509.load_pem_x509_certificate(self.cert.read_bytes()).serial_number, "x")


def create_certs(folder: Path, *, renew: bool = False) -> Certs:
    subprocess.run([str(CREATE_CERT), *(["--renew"] if renew else []), str(folder)], check=True, capture_output=True)
    return Certs(folder)


def served_serial(port: int, trust: ssl.SSLContext, host: str = "localhost") -> str:
    """The serial of the certificate a TLS listener on 127.0.0.1:`port` presents now."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        trust.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return format(x509.load_der_x509_certificate(der).serial_number, "x")
