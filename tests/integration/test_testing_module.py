"""appliance.testing as its users run it: a network of their own, the lab target and the
appliance started with the module, a scan through `client()`, and a refusal.

The first test is the README's example ("Testing your agent against the appliance") as it is
written there, with the project's seccomp profile added. Network safety: the network is internal
and made here, the policy allows the lab target's /32 alone; the refused target is asked for as
a dry run first, and sent for real only once that was refused (refused before any scanner runs).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from dockerlab import REPO, audit_lines, open_ports
from support.certs import create_certs
from testcontainers.core.network import Network

from appliance.testing import ApplianceContainer, ContainerNotReadyError, LabTargetContainer, TlsFiles, lab_policy

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

SECCOMP_PROFILE = REPO / "seccomp" / "appliance.json"
# Private, outside the policy's /32, and on no network of this test: refused as out of scope.
OUT_OF_SCOPE = "10.255.255.254"


async def test_readme_example_scans_the_lab_target(images: tuple[str, str]) -> None:
    with (
        Network(docker_network_kw={"internal": True}) as net,
        LabTargetContainer(network=net) as web,
        ApplianceContainer(policy=lab_policy(web.address), network=net, seccomp_profile=SECCOMP_PROFILE) as appliance,
    ):
        async with appliance.client() as client:
            result = await client.call_tool("nmap_scan", {"target": web.alias, "ports": "22,8080"})
        address = web.address
    assert not result.is_error, result.content
    ports = result.structured_content["hosts"][0]["ports"]
    assert {p["port"] for p in ports if p["state"] == "open"} == {8080}
    # Beyond the README: the alias was resolved to the target's address, and only that was scanned.
    assert result.structured_content["scanned_address"] == address
    assert open_ports(result.structured_content) == {8080}


@pytest.fixture(scope="module")
def appliance(images: tuple[str, str]) -> Iterator[ApplianceContainer]:
    with (
        Network(docker_network_kw={"internal": True}) as net,
        LabTargetContainer(network=net) as web,
        ApplianceContainer(policy=lab_policy(web.address), network=net, seccomp_profile=SECCOMP_PROFILE) as started,
    ):
        yield started


def test_appliance_container_is_hardened_as_compose_runs_it(appliance: ApplianceContainer) -> None:
    wrapped = appliance.get_wrapped_container()
    wrapped.reload()
    host: dict[str, Any] = wrapped.attrs["HostConfig"]
    assert wrapped.attrs["Config"]["User"] == "65532:65532"
    assert [name.removeprefix("CAP_") for name in host["CapDrop"]] == ["ALL"] and not host["CapAdd"]
    assert host["ReadonlyRootfs"] is True
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert any(option.startswith("seccomp=") for option in host["SecurityOpt"])
    assert host["Tmpfs"] == {"/tmp": "size=16m,noexec,nosuid,nodev"}
    assert host["Memory"] == 512 * 1024 * 1024 and host["PidsLimit"] == 256


async def test_out_of_scope_target_is_refused_with_its_rule_and_audited(appliance: ApplianceContainer) -> None:
    arguments = {"target": OUT_OF_SCOPE, "ports": "80"}
    async with appliance.client() as client:
        dry = await client.call_tool("nmap_scan", {**arguments, "dry_run": True})
        assert dry.is_error, "the dry run was allowed: the real call is not sent"
        real = await client.call_tool("nmap_scan", arguments)
    for result in (dry, real):
        assert result.structured_content is not None
        refusal = result.structured_content
        assert refusal["rule"] == "target_out_of_scope", refusal
        assert refusal["error_type"] and refusal["message"] and refusal["recovery_suggestion"]
    _stdout, stderr = appliance.get_logs()
    records = audit_lines(stderr.decode())
    refused = [r["rule"] for r in records if r["verdict"] == "refused" and r.get("tool") == "nmap_scan"]
    assert refused == ["target_out_of_scope"] * 2, records
    assert [r for r in records if r.get("event") == "start"] == []


def test_a_wrong_token_is_refused(appliance: ApplianceContainer) -> None:
    # The generated token is what lets the module's client in (the tests above); another is not.
    headers = {
        **appliance.headers,
        "Authorization": "Bearer not-the-token-" + "x" * 16,
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}'
    request = urllib.request.Request(appliance.url, data=body, headers=headers, method="POST")  # noqa: S310
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)  # noqa: S310 - the test's own container
    refused.value.close()
    assert refused.value.code == 401


async def test_tls_appliance_serves_https_and_the_client_trusts_its_ca(images: tuple[str, str], tmp_path: Path) -> None:
    certs = create_certs(tmp_path)
    tls = TlsFiles(cert=certs.cert, key=certs.key, ca=certs.ca)
    with (
        Network(docker_network_kw={"internal": True}) as net,
        LabTargetContainer(network=net) as web,
        ApplianceContainer(policy=lab_policy(web.address), network=net, tls=tls) as appliance,
    ):
        # The readiness wait already went over https (the sidecar speaks TLS only then).
        assert appliance.url.startswith("https://")
        async with appliance.client() as client:
            result = await client.call_tool("nmap_scan", {"target": web.address, "ports": "8080"})
    assert not result.is_error, result.content
    assert open_ports(result.structured_content) == {8080}


async def test_raw_mode_runs_a_syn_scan_with_net_raw_alone(images: tuple[str, str]) -> None:
    with (
        Network(docker_network_kw={"internal": True}) as net,
        LabTargetContainer(network=net) as web,
        ApplianceContainer(
            policy=lab_policy(web.address), network=net, mode="raw", seccomp_profile=SECCOMP_PROFILE
        ) as appliance,
    ):
        wrapped = appliance.get_wrapped_container()
        # Engines differ in whether they store "CAP_" in front.
        added = {name.removeprefix("CAP_") for name in wrapped.attrs["HostConfig"]["CapAdd"]}
        assert added == {"NET_RAW", "SETGID", "SETPCAP", "SETUID"}
        async with appliance.client() as client:
            result = await client.call_tool("nmap_scan", {"target": web.address, "ports": "8080", "scan_type": "syn"})
    # The appliance's self-check refuses to start when the server holds more than NET_RAW, so a
    # ready raw appliance that ran a SYN scan is one that dropped the rest.
    assert not result.is_error, result.content
    assert "-sS" in result.structured_content["argv"]
    assert open_ports(result.structured_content) == {8080}


def test_an_appliance_that_refuses_to_start_fails_at_once_with_its_logs(
    images: tuple[str, str], docker_client: docker.DockerClient
) -> None:
    # A token the appliance refuses (under 16 characters): it exits 2 at start, naming the rule.
    with Network(docker_network_kw={"internal": True}) as net:
        appliance = ApplianceContainer(policy=lab_policy("10.255.255.254"), token="short", network=net)
        with pytest.raises(ContainerNotReadyError, match="exited with code 2") as failed:
            appliance.start()
        # The failed start removed its container (an exited one would still be listed here).
        assert docker_client.containers.list(all=True, filters={"network": net.name}) == []
    assert '"rule": "tokens_invalid"' in str(failed.value)
