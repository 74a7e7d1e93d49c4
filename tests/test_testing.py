"""appliance.testing's pure parts: the policy and token files it mounts, and the container
arguments it builds, checked against compose.yaml (the settings it must stay in step with).

Starting the containers is tested in tests/integration/test_testing_module.py.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import re
import socket
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.policies import REPO

from appliance.policy.model import load_policy
from appliance.testing import (
    CONTAINER_POLICY_DIR,
    POLICY_FILENAME,
    ContainerNotReadyError,
    TlsFiles,
    _http_ok,
    _wait_for,
    appliance_environment,
    appliance_hardening,
    copy_tls_files,
    lab_policy,
    lab_target_hardening,
    write_policy,
    write_token,
)

# compose.yaml as PyYAML reads it: anchors and merge keys resolved, ${...} left as text (the
# hardening fields have none).
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())
SERVICE_FOR_MODE = {"connect": "appliance", "raw": "appliance-raw"}
_SIZE = re.compile(r"(\d+)([kmg])")


def compose_bytes(text: str) -> int:
    number, unit = _SIZE.fullmatch(text).groups()  # type: ignore[union-attr]
    return int(number) * 1024 ** {"k": 1, "m": 2, "g": 3}[unit]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_policy_from_a_dict_is_readable_by_the_container_user(tmp_path: Path) -> None:
    policy = lab_policy("10.99.0.7")
    path = write_policy(policy, tmp_path)
    assert path == tmp_path / POLICY_FILENAME
    assert yaml.safe_load(path.read_text()) == policy
    assert mode(path) == 0o644 and mode(tmp_path) == 0o755


def test_write_policy_copies_a_file_and_leaves_the_original_alone(tmp_path: Path) -> None:
    source = tmp_path / "mine" / "my-scope.yaml"
    source.parent.mkdir()
    source.write_text(yaml.safe_dump(lab_policy("10.99.0.0/24")))
    source.chmod(0o600)
    target_dir = tmp_path / "mounted"
    target_dir.mkdir()
    path = write_policy(source, target_dir)
    assert path.read_text() == source.read_text()
    assert mode(path) == 0o644 and mode(source) == 0o600


def test_write_token_is_the_token_alone_mode_0444(tmp_path: Path) -> None:
    path = write_token("a-token-of-thirty-two-characters", tmp_path)
    assert path.read_bytes() == b"a-token-of-thirty-two-characters"
    assert mode(path) == 0o444


def test_lab_policy_validates_and_allows_only_what_it_names(tmp_path: Path) -> None:
    policy = load_policy(write_policy(lab_policy("10.99.0.7", "10.98.0.0/28"), tmp_path))
    networks = {ipaddress.ip_network(str(n)) for n in policy.scope.allow_networks}
    assert networks == {ipaddress.ip_network("10.99.0.7/32"), ipaddress.ip_network("10.98.0.0/28")}
    assert policy.scope.deny_default_gateways and policy.scope.deny_own_addresses
    assert not policy.scope.insecure_allow_loopback


def test_lab_policy_refuses_an_empty_allow_list() -> None:
    # An empty list would not mean "nothing": it would fail validation far away, in the container.
    with pytest.raises(ValueError, match="at least one"):
        lab_policy()


@pytest.mark.parametrize("mode_name", ["connect", "raw"])
def test_appliance_hardening_matches_compose(mode_name: str) -> None:
    service = COMPOSE["services"][SERVICE_FOR_MODE[mode_name]]
    kwargs = appliance_hardening(mode_name)  # type: ignore[arg-type]
    assert kwargs["user"] == service["user"]
    assert kwargs["cap_drop"] == service["cap_drop"] == ["ALL"]
    assert sorted(kwargs.get("cap_add", [])) == sorted(service.get("cap_add", []))
    assert kwargs["read_only"] is service["read_only"] is True
    assert kwargs["init"] is service["init"]
    assert kwargs["mem_limit"] == compose_bytes(service["mem_limit"])
    assert kwargs["nano_cpus"] == int(float(service["cpus"]) * 10**9)
    assert kwargs["cpu_shares"] == service["cpu_shares"]
    assert kwargs["pids_limit"] == service["pids_limit"]
    assert "no-new-privileges:true" in kwargs["security_opt"] and "no-new-privileges:true" in service["security_opt"]
    if mode_name == "raw":
        assert kwargs["entrypoint"] == service["entrypoint"]
        assert kwargs["healthcheck"]["test"] == service["healthcheck"]["test"]
    else:
        assert "entrypoint" not in kwargs and "healthcheck" not in kwargs


def test_appliance_hardening_without_a_profile_names_no_seccomp() -> None:
    assert not any(option.startswith("seccomp") for option in appliance_hardening("connect")["security_opt"])


def test_appliance_hardening_inlines_the_seccomp_profile_compose_uses() -> None:
    # The Engine API takes the profile's JSON, not a path (the docker CLI reads the file itself).
    profile = REPO / "seccomp" / "appliance.json"
    assert f"seccomp={profile.relative_to(REPO)}" in [o.replace("./", "") for o in COMPOSE["x-appliance-security"]]
    options = appliance_hardening("connect", profile)["security_opt"]
    inlined = [o.removeprefix("seccomp=") for o in options if o.startswith("seccomp=")]
    assert len(inlined) == 1 and json.loads(inlined[0]) == json.loads(profile.read_text())


def test_lab_target_hardening_matches_compose() -> None:
    web = COMPOSE["services"]["web"]
    kwargs = lab_target_hardening()
    assert kwargs["user"] == web["user"] and kwargs["cap_drop"] == web["cap_drop"]
    assert kwargs["security_opt"] == web["security_opt"]
    assert kwargs["read_only"] is web["read_only"] is True
    assert kwargs["mem_limit"] == compose_bytes(web["mem_limit"])
    assert kwargs["nano_cpus"] == int(float(web["cpus"]) * 10**9)
    assert kwargs["cpu_shares"] == web["cpu_shares"] and kwargs["pids_limit"] == web["pids_limit"]


@pytest.mark.parametrize("mode_name", ["connect", "raw"])
def test_appliance_environment_serves_http_in_its_mode_with_the_mounted_policy(mode_name: str) -> None:
    env = appliance_environment(mode_name, "scanner")  # type: ignore[arg-type]
    assert env["APPLIANCE_TRANSPORT"] == "http"
    assert env["APPLIANCE_PRIVILEGE_MODE"] == mode_name
    assert env["APPLIANCE_POLICY_PATH"] == f"{CONTAINER_POLICY_DIR}/{POLICY_FILENAME}"
    # The ports the container's clients use are the ones compose.yaml serves.
    compose_env = COMPOSE["x-appliance-environment"]
    assert env["APPLIANCE_PORT"] == compose_env["APPLIANCE_PORT"]
    assert env["APPLIANCE_HEALTH_PORT"] == compose_env["APPLIANCE_HEALTH_PORT"]


def test_appliance_environment_accepts_the_alias_as_host_and_no_other_name() -> None:
    env = appliance_environment("connect", "scanner")
    for key in ("APPLIANCE_ALLOWED_HOSTS", "APPLIANCE_HEALTH_ALLOWED_HOSTS"):
        hosts = json.loads(env[key])
        assert "scanner:*" in hosts
        assert set(hosts) == {"scanner:*", "127.0.0.1:*", "localhost:*"}


def test_lab_policy_refuses_a_network_with_host_bits() -> None:
    with pytest.raises(ValueError, match="host bits"):
        lab_policy("10.99.0.7/24")


def test_appliance_environment_without_tls_names_no_certificate() -> None:
    assert not any(key.startswith("APPLIANCE_TLS") for key in appliance_environment("connect", "appliance"))


def test_appliance_environment_with_tls_points_both_listeners_at_the_mounted_pair() -> None:
    env = appliance_environment("connect", "appliance", tls=True)
    assert env["APPLIANCE_TLS_CERT_FILE"] == "/run/secrets/appliance_tls_cert"
    assert env["APPLIANCE_TLS_KEY_FILE"] == "/run/secrets/appliance_tls_key"


def test_copy_tls_files_makes_readable_copies_and_leaves_the_key_alone(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    tls = TlsFiles(cert=mine / "cert.pem", key=mine / "key.pem", ca=mine / "ca.pem")
    tls.cert.write_text("CERT")
    tls.key.write_text("KEY")
    tls.key.chmod(0o400)
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    cert, key = copy_tls_files(tls, mounted)
    assert (cert.read_text(), key.read_text()) == ("CERT", "KEY")
    assert mode(cert) == mode(key) == 0o444 and mode(tls.key) == 0o400


class FakeWrapped:
    """The docker-py container `_wait_for` reads: a status that moves on at each reload."""

    def __init__(self, statuses: list[str]) -> None:
        self._statuses = statuses
        self.attrs: dict[str, Any] = {}

    def reload(self) -> None:
        status = self._statuses.pop(0) if len(self._statuses) > 1 else self._statuses[0]
        self.attrs = {"State": {"Status": status, "ExitCode": 2 if status == "exited" else 0}}


class FakeContainer:
    def __init__(self, statuses: list[str]) -> None:
        self.wrapped = FakeWrapped(statuses)

    def get_wrapped_container(self) -> FakeWrapped:
        return self.wrapped

    def get_logs(self) -> tuple[bytes, bytes]:
        return b"", b"early lines\n" + b'{"message": "policy file not found", "rule": "policy_invalid"}\n'


def test_wait_returns_once_ready() -> None:
    answers = iter([False, False, True])
    _wait_for(FakeContainer(["running"]), lambda: next(answers), "appliance", timeout=10)  # type: ignore[arg-type]


def test_wait_on_an_exited_container_fails_at_once_with_its_logs() -> None:
    with pytest.raises(ContainerNotReadyError, match="exited with code 2") as failed:
        _wait_for(FakeContainer(["running", "exited"]), lambda: False, "appliance", timeout=60)  # type: ignore[arg-type]
    assert "policy file not found" in str(failed.value)


def test_wait_on_a_container_that_stops_while_its_address_is_read_fails_with_its_exit() -> None:
    # The state said running; by the time the probe read its address the container had exited
    # (and lost its address): the failure names the exit and shows the logs, not the address.
    def probe() -> bool:
        raise ContainerNotReadyError("container relaxed_elion has no address on its network")

    with pytest.raises(ContainerNotReadyError, match="exited with code 2") as failed:
        _wait_for(FakeContainer(["running", "exited"]), probe, "appliance", timeout=60)  # type: ignore[arg-type]
    assert "policy file not found" in str(failed.value)


def test_wait_that_never_gets_ready_fails_after_the_timeout_with_its_logs() -> None:
    with pytest.raises(ContainerNotReadyError, match="not ready within 0 s") as failed:
        _wait_for(FakeContainer(["running"]), lambda: False, "appliance", timeout=0)  # type: ignore[arg-type]
    assert "policy_invalid" in str(failed.value)


class Readyz(http.server.BaseHTTPRequestHandler):
    status = 503

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("status", "ready"), [(200, True), (503, False)])
def test_readiness_probe_is_true_on_200_only(status: int, ready: bool) -> None:
    handler = type("Answer", (Readyz,), {"status": status})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/readyz"
            assert _http_ok(url, {"Host": "appliance:9090"}, None) is ready
        finally:
            server.shutdown()
            thread.join()


def test_readiness_probe_is_false_when_nothing_listens() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    assert _http_ok(f"http://127.0.0.1:{port}/readyz", {}, None) is False
