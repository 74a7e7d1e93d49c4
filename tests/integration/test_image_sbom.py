"""The image's SBOM: where its label says, valid CycloneDX 1.6, and listing exactly the Debian
packages and Python distributions the image ships (read from `docker export`)."""

from __future__ import annotations

import email.parser
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import docker
import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from dockerlab import IMAGE

pytestmark = pytest.mark.integration

SBOM_LABEL = "io.github.mcp-scanner-appliance.sbom"
STATUS_DIR = "var/lib/dpkg/status.d/"
SITE = "opt/venv/lib/python3.11/site-packages/"
EXPORT_TIMEOUT_SECONDS = 120


@pytest.fixture(scope="module")
def exported(docker_client: docker.DockerClient, images: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    container = docker_client.containers.create(IMAGE)
    archive = tmp_path_factory.mktemp("sbom") / "rootfs.tar"
    try:
        subprocess.run(
            ["docker", "export", "-o", str(archive), container.id], check=True, timeout=EXPORT_TIMEOUT_SECONDS
        )
    finally:
        container.remove(force=True)
    return archive


def read(tar: tarfile.TarFile, name: str) -> str:
    member = tar.extractfile(name)
    assert member is not None, name
    return member.read().decode()


def test_sbom_is_valid_cyclonedx_and_lists_what_ships(docker_client: docker.DockerClient, exported: Path) -> None:
    path = docker_client.images.get(IMAGE).attrs["Config"]["Labels"][SBOM_LABEL]
    with tarfile.open(exported) as tar:
        text = read(tar, path.lstrip("/"))
        names = tar.getnames()
        debian = {
            read(tar, n).split("Package: ", 1)[1].split("\n", 1)[0]
            for n in names
            if n.startswith(STATUS_DIR) and n != STATUS_DIR.rstrip("/")
        }
        python = set()
        for n in names:
            if n.startswith(SITE) and n.endswith(".dist-info/METADATA"):
                python.add(email.parser.Parser().parsestr(read(tar, n), headersonly=True)["Name"])
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom = json.loads(text)
    assert {c["name"] for c in bom["components"] if c["purl"].startswith("pkg:deb/debian/")} == debian
    assert {c["name"] for c in bom["components"] if c["purl"].startswith("pkg:pypi/")} == python
    assert {"nmap", "masscan", "gobuster", "python3.11-minimal", "ca-certificates"} <= debian
    assert {"mcp", "mcp-scanner-appliance", "pydantic"} <= {n.lower() for n in python}
    # Every component says what licence it is under, with its version.
    assert all(c.get("licenses") and c.get("version") for c in bom["components"])
