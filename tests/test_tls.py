"""TLS on the MCP port and the sidecar: real handshakes against `appliance serve` on loopback,
with files made by scripts/create-cert; renewal without a restart; a bad pair keeps the last good."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import httpx2
import pytest
from support import LOOPBACK_POLICY, TOKEN, http_client, run_cli, served, sidecar_get, wait_until, write_policy
from support.certs import Certs, create_certs, served_serial

from appliance.errors import ConfigError
from appliance.tls import client_context, server_tls

pytestmark = pytest.mark.anyio
# The appliance checks its files this often in these tests (APPLIANCE_RELOAD_POLL_SECONDS).
POLL = "0.1"


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return create_certs(tmp_path / "secrets")


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


# --- settings and files --------------------------------------------------------------------
def test_no_files_means_no_tls() -> None:
    assert server_tls(None, None) is None


@pytest.mark.parametrize("which", ["cert", "key"])
def test_one_file_without_the_other_is_refused_by_name(certs: Certs, which: str) -> None:
    with pytest.raises(ConfigError) as caught:
        server_tls(certs.cert if which == "cert" else None, certs.key if which == "key" else None)
    assert caught.value.rule == "tls_incomplete"
    assert "APPLIANCE_TLS_KEY_FILE" in caught.value.message


def test_key_of_another_certificate_is_refused_at_start(certs: Certs, tmp_path: Path) -> None:
    other = create_certs(tmp_path / "other")
    with pytest.raises(ConfigError) as caught:
        server_tls(certs.cert, other.key)
    assert caught.value.rule == "tls_certificate_invalid"
    assert caught.value.recovery_suggestion


def test_status_names_the_certificate_in_use(certs: Certs) -> None:
    tls = server_tls(certs.cert, certs.key)
    assert tls is not None
    status = tls.status()
    assert status["enabled"] is True
    assert status["serial"] == certs.serial()
    assert status["subject"] == "CN=appliance"
    assert status["problem"] is None


def test_reload_keeps_the_last_good_pair_when_the_new_one_is_broken(certs: Certs) -> None:
    tls = server_tls(certs.cert, certs.key)
    assert tls is not None
    before = tls.info.serial
    os.chmod(certs.cert, 0o644)
    certs.cert.write_text("-----BEGIN CERTIFICATE-----\nhalf-written\n")
    assert tls.reload() is False
    assert tls.info.serial == before
    assert tls.status()["problem"] and "cannot load" in tls.status()["problem"]
    create_certs(certs.folder, renew=True)
    assert tls.reload() is True
    assert tls.info.serial == certs.serial() != before
    assert tls.status()["problem"] is None


def test_client_context_refuses_a_missing_ca_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        client_context(tmp_path / "none.pem")
    assert caught.value.rule == "tls_ca_file_invalid"


# --- the real listeners ----------------------------------------------------------------------
async def test_mcp_over_https_with_the_ca_file(tmp_path: Path, certs: Certs) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    with served(policy, **certs.env()) as server:
        url = server.url.replace("http://127.0.0.1", "https://localhost")
        async with http_client(url, "legacy", verify=client_context(certs.ca)) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
        assert "nmap_scan" in tools


async def test_a_client_that_does_not_trust_the_ca_is_refused_the_handshake(tmp_path: Path, certs: Certs) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    other = create_certs(tmp_path / "other")
    with served(policy, **certs.env()) as server:
        url = server.url.replace("http://127.0.0.1", "https://localhost")
        async with httpx2.AsyncClient(verify=client_context(other.ca)) as http:
            with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.post(url, headers={"Authorization": f"Bearer {TOKEN}"}, json={})


async def test_cleartext_http_gets_no_mcp_answer_from_a_tls_port(tmp_path: Path, certs: Certs) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    with served(policy, **certs.env()) as server:
        async with httpx2.AsyncClient() as http:
            with pytest.raises(httpx2.HTTPError):
                await http.post(server.url, headers={"Authorization": f"Bearer {TOKEN}"}, json={})


def test_sidecar_serves_https_and_reports_the_certificate(tmp_path: Path, certs: Certs) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    with served(policy, **certs.env()) as server:
        trust = certs.client_context()
        assert sidecar_get(server.health_port, "/livez", trust) == (200, {"status": "alive"})
        status, report = sidecar_get(server.health_port, "/healthz", trust)
        assert status == 200
        assert report["checks"]["tls"]["serial"] == certs.serial()
        with pytest.raises((ConnectionError, urllib.error.URLError)):  # closed at once, or refused
            urllib.request.urlopen(f"http://127.0.0.1:{server.health_port}/livez", timeout=5)


def test_health_probe_trusts_exactly_the_appliances_own_certificate(tmp_path: Path, certs: Certs) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    other = create_certs(tmp_path / "other")
    with served(policy, **certs.env()) as server:
        port = str(server.health_port)
        code, _body, stderr = run_cli("health", "--probe", APPLIANCE_HEALTH_PORT=port, **certs.env())
        assert code == 0, stderr
        # The same probe expecting another certificate: the handshake is refused.
        wrong = {**certs.env(), "APPLIANCE_TLS_CERT_FILE": str(other.cert), "APPLIANCE_TLS_KEY_FILE": str(other.key)}
        code, _body, stderr = run_cli("health", "--probe", APPLIANCE_HEALTH_PORT=port, **wrong)
        assert code == 1
        assert "CERTIFICATE_VERIFY_FAILED" in stderr


def test_renewed_certificate_is_served_without_a_restart(tmp_path: Path, certs: Certs) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    with served(policy, APPLIANCE_RELOAD_POLL_SECONDS=POLL, **certs.env()) as server:
        trust = certs.client_context()
        mcp_port = _port(server.url)
        first = served_serial(mcp_port, trust)
        assert first == certs.serial() == served_serial(server.health_port, trust)
        create_certs(certs.folder, renew=True)
        renewed = certs.serial()
        assert renewed != first
        wait_until(lambda: served_serial(mcp_port, trust) == renewed, timeout=10, what="renewed MCP certificate")
        wait_until(lambda: served_serial(server.health_port, trust) == renewed, timeout=10, what="renewed sidecar")
        assert server.proc.poll() is None


def test_broken_renewal_keeps_serving_the_last_good_certificate(tmp_path: Path, certs: Certs) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    with served(policy, APPLIANCE_RELOAD_POLL_SECONDS=POLL, **certs.env()) as server:
        trust = certs.client_context()
        good = certs.serial()
        os.chmod(certs.key, 0o644)
        certs.key.write_text("not a key\n")

        def problem_shown() -> bool:
            return bool(sidecar_get(server.health_port, "/healthz", trust)[1]["checks"]["tls"]["problem"])

        wait_until(problem_shown, timeout=10, what="the refused reload in /healthz")
        assert served_serial(_port(server.url), trust) == good
        assert "TLS certificate reload refused" in server.stderr_tail()


def test_appliance_refuses_to_start_with_half_the_tls_settings(tmp_path: Path, certs: Certs) -> None:
    policy = write_policy(tmp_path, LOOPBACK_POLICY)
    code, _body, stderr = run_cli(
        "serve",
        APPLIANCE_TRANSPORT="http",
        APPLIANCE_AUTH_TOKEN=TOKEN,
        APPLIANCE_POLICY_PATH=str(policy),
        APPLIANCE_TLS_CERT_FILE=str(certs.cert),
    )
    assert code != 0
    assert "tls_incomplete" in stderr


def test_create_cert_names_the_compose_hosts(certs: Certs) -> None:
    from cryptography import x509

    leaf = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"appliance", "appliance-raw", "localhost"} <= set(names.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "10.77.1.10", "10.77.1.11"} <= {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert (certs.key.stat().st_mode & 0o777) == 0o444
    assert (certs.folder / "appliance_tls_ca.key").stat().st_mode & 0o777 == 0o400
