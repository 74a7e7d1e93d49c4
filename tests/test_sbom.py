"""scripts/make-sbom on a small root file system laid out as scripts/assemble-rootfs lays it
out: the components, their purls and licences, and the CycloneDX schema check. The image's own
SBOM is checked in tests/integration/test_sbom.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from support import REPO

MAKE_SBOM = REPO / "scripts" / "make-sbom"
DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: nmap

Files: *
Copyright: Nmap Software LLC
License: NPSL

Files: nselib/*
License: GPL-2+
"""


def make_rootfs(root: Path, *, copyright_text: str = DEP5) -> Path:
    status = root / "var/lib/dpkg/status.d"
    status.mkdir(parents=True)
    (status / "nmap").write_text(
        "Package: nmap\nStatus: install ok installed\nArchitecture: amd64\nVersion: 7.93+dfsg1-1\n"
        "Description: The Network Mapper\n multi-line description\n"
    )
    (status / "libc6").write_text("Package: libc6\nArchitecture: amd64\nVersion: 2.36-9+deb12u13\n")
    for package, text in (("nmap", copyright_text), ("libc6", "free text: GNU Lesser General Public License")):
        (root / "usr/share/doc" / package).mkdir(parents=True)
        (root / "usr/share/doc" / package / "copyright").write_text(text)
    dist = root / "opt/venv/lib/python3.11/site-packages/PyYAML-6.0.3.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: PyYAML\nVersion: 6.0.3\nLicense: MIT\nSummary: YAML\n")
    return root


def run(root: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "ignore::UserWarning", str(MAKE_SBOM), "--version", "9.9.9", str(root), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_sbom_lists_debian_and_python_components_with_purls_and_licences(tmp_path: Path) -> None:
    out = tmp_path / "sbom.cdx.json"
    done = run(make_rootfs(tmp_path / "rootfs"), out)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom = json.loads(text)
    assert bom["specVersion"] == "1.6"
    assert bom["metadata"]["component"]["name"] == "mcp-scanner-appliance"
    assert bom["metadata"]["component"]["version"] == "9.9.9"
    found = {c["name"]: c for c in bom["components"]}
    assert found["nmap"]["purl"] == "pkg:deb/debian/nmap@7.93%2Bdfsg1-1?arch=amd64&distro=debian-12"
    assert found["nmap"]["licenses"] == [{"license": {"name": "NPSL AND GPL-2+"}}]
    # A free-text copyright file: the licence from the script's table.
    assert found["libc6"]["licenses"] == [{"license": {"id": "LGPL-2.1-or-later"}}]
    assert found["PyYAML"]["purl"] == "pkg:pypi/pyyaml@6.0.3"
    assert found["PyYAML"]["licenses"] == [{"license": {"id": "MIT"}}]
    [root_dependencies] = [d for d in bom["dependencies"] if d["ref"] == "mcp-scanner-appliance"]
    assert len(root_dependencies["dependsOn"]) == 3


def test_a_package_without_a_readable_licence_fails_the_build(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path / "rootfs", copyright_text="This is free software, see the source.\n")
    done = run(root, tmp_path / "sbom.cdx.json")
    assert done.returncode != 0
    assert "no licence found for nmap" in done.stderr
    assert not (tmp_path / "sbom.cdx.json").exists()


@pytest.mark.parametrize("broken", ["", "Package: nmap\n"])
def test_a_malformed_status_paragraph_fails_the_build(tmp_path: Path, broken: str) -> None:
    root = make_rootfs(tmp_path / "rootfs")
    (root / "var/lib/dpkg/status.d/nmap").write_text(broken)
    assert run(root, tmp_path / "sbom.cdx.json").returncode != 0
