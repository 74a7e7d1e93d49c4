"""The start-up privilege self-check: an appliance holding more than its mode allows
(appliance/data/policies/capabilities.yaml) refuses to start with exit status 3 and a JSON line naming
`privileges_exceed_policy`. Run with no network at all: nothing here needs one.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from dockerlab import Lab, ServiceSpec, docker_run_args, remove_container, unique_name

pytestmark = pytest.mark.integration

EXIT_PRIVILEGES = 3
RUN_TIMEOUT_SECONDS = 60

# (compose service whose settings are used, extra `docker run` flags, privilege mode)
EXCESS = {
    "privileged": ("appliance", ["--privileged"], "connect"),
    "cap-add-net-admin": ("appliance", ["--cap-add=NET_ADMIN"], "connect"),
    "raw-setup-in-connect-mode": ("appliance-raw", [], "connect"),
}


def run_appliance(lab: Lab, spec: ServiceSpec, extra: list[str], mode: str) -> subprocess.CompletedProcess[bytes]:
    """`appliance serve` over stdio with stdin at EOF: it exits at once unless the check refuses."""
    name = unique_name("selfcheck")
    env = {"APPLIANCE_TRANSPORT": "stdio", "APPLIANCE_PRIVILEGE_MODE": mode}
    try:
        return subprocess.run(
            ["docker", *docker_run_args(spec, lab, name, env, *extra, network="none")],
            input=b"",
            capture_output=True,
            timeout=RUN_TIMEOUT_SECONDS,
            check=False,
        )
    finally:
        remove_container(name)


@pytest.mark.parametrize(("service", "extra", "mode"), EXCESS.values(), ids=EXCESS.keys())
def test_excess_privileges_refuse_to_start(
    lab: Lab, services: dict[str, ServiceSpec], service: str, extra: list[str], mode: str
) -> None:
    done = run_appliance(lab, services[service], extra, mode)
    assert done.returncode == EXIT_PRIVILEGES, done.stderr.decode()[-4000:]
    refusals = []
    for line in done.stderr.decode().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("rule") == "privileges_exceed_policy":
            refusals.append(record)
    assert refusals, done.stderr.decode()[-4000:]
    assert done.stdout == b""


@pytest.mark.parametrize(("service", "mode"), [("appliance", "connect"), ("appliance-raw", "raw")])
def test_compose_settings_pass_the_check(lab: Lab, services: dict[str, ServiceSpec], service: str, mode: str) -> None:
    """The control: the same run with compose.yaml's settings alone starts and exits 0."""
    done = run_appliance(lab, services[service], [], mode)
    assert done.returncode == 0, done.stderr.decode()[-4000:]
