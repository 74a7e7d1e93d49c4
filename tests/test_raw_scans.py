"""Raw-socket scans (masscan, nmap SYN) for real, inside network namespaces this test creates.

Two namespaces joined by a veth pair on a /24 the test owns: the target namespace runs a
listener, the scanner namespace runs the appliance's service in raw mode. Nothing leaves them.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import wait_until, write_policy

SUBNET = "10.251.{n}.0/24"
HARNESS = textwrap.dedent(
    """
    import asyncio, io, json, sys
    from pathlib import Path
    from appliance.audit import AuditSink
    from appliance.config import Settings
    from appliance.errors import ApplianceError
    from appliance.policy.store import PolicyStore
    from appliance.service import ScanService
    from appliance.tools import TOOLS

    async def main():
        tool, arguments = sys.argv[2], json.loads(sys.argv[3])
        settings = Settings(policy_path=Path(sys.argv[1]), privilege_mode="raw")
        service = ScanService(settings, PolicyStore(settings.policy_path), AuditSink(stream=io.StringIO()))
        spec = TOOLS[tool]
        try:
            report = await service.call(spec, spec.request_model.model_validate(arguments), "raw-test")
        except ApplianceError as exc:
            print(json.dumps({"refused": exc.rule}))
            return
        print(json.dumps(report.model_dump(mode="json")))

    asyncio.run(main())
    """
)


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def lab_namespaces() -> Iterator[tuple[str, str, str]]:
    """(scanner namespace, target address, target namespace) on a private veth link."""
    n = os.getpid() % 200 + 20
    scanner, target = f"appl-scan-{n}", f"appl-target-{n}"
    prefix = SUBNET.format(n=n).rsplit(".", 1)[0]
    try:
        sh("ip", "netns", "add", scanner)
        sh("ip", "netns", "add", target)
        sh("ip", "link", "add", "vscan", "netns", scanner, "type", "veth", "peer", "name", "vtarget", "netns", target)
        # Not .1: the appliance denies the first host of its own subnets (Docker's gateway address).
        sh("ip", "-n", target, "addr", "add", f"{prefix}.3/24", "dev", "vtarget")
        sh("ip", "-n", scanner, "addr", "add", f"{prefix}.2/24", "dev", "vscan")
        for ns, dev in ((scanner, "vscan"), (target, "vtarget")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield scanner, f"{prefix}.3", target
    finally:
        for ns in (scanner, target):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)


@contextlib.contextmanager
def listener(namespace: str, address: str, port: int) -> Iterator[None]:
    code = (
        "import socket,time; s=socket.socket(); "
        f"s.bind(('{address}',{port})); s.listen(); print('up', flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        wait_until(lambda: proc.stdout.readline().strip() == b"up", timeout=10)  # type: ignore[union-attr]
        yield
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def scan(namespace: str, policy: Path, tool: str, arguments: dict[str, object]) -> dict[str, object]:
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", HARNESS, str(policy), tool, json.dumps(arguments)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    result: dict[str, object] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    with lab_namespaces() as (scanner, target_ip, target_ns), listener(target_ns, target_ip, 8080):
        # Pinned to the target's own address: nothing else in the namespace is ever in scope.
        policy = write_policy(tmp_path, {"scope": {"allow_networks": [f"{target_ip}/32"]}})
        yield scanner, target_ip, policy


def test_masscan_finds_the_open_port_with_server_derived_link_options(lab: tuple[str, str, Path]) -> None:
    scanner, target_ip, policy = lab
    report = scan(scanner, policy, "masscan_scan", {"target": target_ip, "ports": "8080,8081"})
    argv = report["argv"]
    assert isinstance(argv, list)
    assert argv[argv.index("--adapter") + 1] == "vscan"
    assert argv[argv.index("--router-ip") + 1] == target_ip
    findings = report["findings"]
    assert isinstance(findings, list)
    assert [(f["ip"], f["port"], f["status"]) for f in findings] == [(target_ip, 8080, "open")]


def test_nmap_syn_scan_in_raw_mode(lab: tuple[str, str, Path]) -> None:
    scanner, target_ip, policy = lab
    report = scan(scanner, policy, "nmap_scan", {"target": target_ip, "ports": "8080,8081", "scan_type": "syn"})
    hosts = report["hosts"]
    assert isinstance(hosts, list)
    # 8080 is listed with its reason; the closed 8081 is only counted.
    assert [(p["port"], p["state"], p["reason"]) for p in hosts[0]["ports"]] == [(8080, "open", "syn-ack")]
    assert hosts[0]["port_counts"] == {"open": 1, "closed": 1}


def test_masscan_refuses_an_onlink_block(lab: tuple[str, str, Path], tmp_path: Path) -> None:
    scanner, target_ip, _ = lab
    # The block must be in scope for the on-link rule to be the one that refuses: allow the link's
    # /24 (addresses of namespaces this test made), and ask for a dry run so nothing could start.
    subnet = target_ip.rsplit(".", 1)[0] + ".0/24"
    policy = write_policy(tmp_path, {"scope": {"allow_networks": [subnet]}}, name="onlink.yaml")
    block = target_ip.rsplit(".", 1)[0] + ".4/30"  # on-link, holds no address of ours
    assert scan(scanner, policy, "masscan_scan", {"target": block, "ports": "8080", "dry_run": True}) == {
        "refused": "masscan_onlink_block"
    }
