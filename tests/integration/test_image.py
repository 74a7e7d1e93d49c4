"""The images themselves: size, what they must not contain, and their configuration (CIS 4.x).

The file system is read from `docker export` of a created (never started) container.
"""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path
from typing import Any

import docker
import pytest
from dockerlab import APP_UID, IMAGE, LAB_IMAGE

pytestmark = pytest.mark.integration

# The figure to stay under (Docker's own size, 1 MB = 10**6 bytes); the image is about 125 MB.
MAX_IMAGE_BYTES = 130 * 10**6
MAX_LAB_IMAGE_BYTES = 10 * 10**6
EXPORT_TIMEOUT_SECONDS = 120
# Programs that would turn a foothold into a toolbox: shells, package managers, pip.
FORBIDDEN_PATHS = [
    "bin/sh",
    "usr/bin/sh",
    "usr/bin/bash",
    "usr/bin/dash",
    "usr/bin/busybox",
    "usr/bin/apt",
    "usr/bin/apt-get",
    "usr/bin/dpkg",
    "usr/bin/pip",
    "usr/bin/pip3",
    "opt/venv/bin/pip",
    "opt/venv/bin/pip3",
]
REQUIRED_LABELS = [
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.version",
    "org.opencontainers.image.licenses",
]
FILE_CAPABILITY_XATTR = "SCHILY.xattr.security.capability"
DATA_DIR = "/var/lib/appliance"


def export_members(docker_client: docker.DockerClient, image: str, folder: Path) -> list[tarfile.TarInfo]:
    container = docker_client.containers.create(image)
    try:
        archive = folder / "rootfs.tar"
        subprocess.run(
            ["docker", "export", "-o", str(archive), container.id], check=True, timeout=EXPORT_TIMEOUT_SECONDS
        )
        with tarfile.open(archive) as tar:
            return tar.getmembers()
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def rootfs(
    docker_client: docker.DockerClient, images: Any, tmp_path_factory: pytest.TempPathFactory
) -> list[tarfile.TarInfo]:
    return export_members(docker_client, IMAGE, tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def image_attrs(docker_client: docker.DockerClient, images: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = docker_client.images.get(IMAGE).attrs
    return attrs


def test_image_size(image_attrs: dict[str, Any], record: Any) -> None:
    size = image_attrs["Size"]
    record(f"{IMAGE}: {size} bytes ({size / 10**6:.1f} MB; limit {MAX_IMAGE_BYTES / 10**6:.0f} MB)")
    assert size <= MAX_IMAGE_BYTES


def test_image_has_no_shell_package_manager_or_pip(rootfs: list[tarfile.TarInfo]) -> None:
    names = {member.name.removeprefix("./").rstrip("/") for member in rootfs}
    assert names & set(FORBIDDEN_PATHS) == set()
    assert not [n for n in names if "/site-packages/pip/" in n or n.endswith("/site-packages/pip")]
    assert not [n for n in names if n.startswith("var/lib/dpkg/info/")], "dpkg's database is not shipped"


def test_image_has_no_setuid_or_setgid_files(rootfs: list[tarfile.TarInfo]) -> None:
    """CIS 4.8: nothing in the image can raise privileges through its file mode."""
    flagged = [m.name for m in rootfs if m.isfile() and m.mode & 0o6000]
    assert flagged == []


def test_image_has_no_file_capabilities(rootfs: list[tarfile.TarInfo]) -> None:
    flagged = [m.name for m in rootfs if FILE_CAPABILITY_XATTR in m.pax_headers]
    assert flagged == []


def test_image_runs_as_nonroot(image_attrs: dict[str, Any]) -> None:
    """CIS 4.1."""
    assert image_attrs["Config"]["User"] == f"{APP_UID}:{APP_UID}"


def test_image_ships_the_data_dir_owned_by_the_appliance_user(
    rootfs: list[tarfile.TarInfo], image_attrs: dict[str, Any]
) -> None:
    """The job store's folder: an empty named volume mounted there copies this owner and mode, so
    UID 65532 can write it while the root file system is read-only."""
    (data_dir,) = [m for m in rootfs if m.name.removeprefix("./").rstrip("/") == DATA_DIR.lstrip("/")]
    assert (data_dir.isdir(), data_dir.uid, data_dir.gid, data_dir.mode & 0o7777) == (True, APP_UID, APP_UID, 0o700)
    assert f"APPLIANCE_DATA_DIR={DATA_DIR}" in image_attrs["Config"]["Env"]


def test_image_has_healthcheck(image_attrs: dict[str, Any]) -> None:
    """CIS 4.6: exec form (there is no shell to run a CMD-SHELL check)."""
    test = image_attrs["Config"]["Healthcheck"]["Test"]
    assert test[0] == "CMD"
    assert test[1:] == ["/opt/venv/bin/appliance", "health", "--probe"]


def test_image_has_labels(image_attrs: dict[str, Any]) -> None:
    labels = image_attrs["Config"]["Labels"] or {}
    assert {name: bool(labels.get(name)) for name in REQUIRED_LABELS} == dict.fromkeys(REQUIRED_LABELS, True)


@pytest.mark.parametrize("image", [IMAGE, LAB_IMAGE])
def test_image_was_built_with_copy_not_add(docker_client: docker.DockerClient, images: Any, image: str) -> None:
    """CIS 4.9: no layer came from ADD (which fetches URLs and unpacks archives)."""
    history = docker_client.images.get(image).history()
    assert [
        h["CreatedBy"] for h in history if h["CreatedBy"].lstrip().startswith(("ADD ", "/bin/sh -c #(nop) ADD"))
    ] == []


def test_lab_image_is_small_nonroot_and_healthchecked(
    docker_client: docker.DockerClient, images: Any, record: Any
) -> None:
    attrs = docker_client.images.get(LAB_IMAGE).attrs
    record(f"{LAB_IMAGE}: {attrs['Size']} bytes ({attrs['Size'] / 10**6:.1f} MB)")
    assert attrs["Size"] <= MAX_LAB_IMAGE_BYTES
    assert attrs["Config"]["User"] == f"{APP_UID}:{APP_UID}"
    assert attrs["Config"]["Healthcheck"]["Test"][0] == "CMD"


def test_image_ships_the_time_zones_engagement_windows_name(rootfs: list[tarfile.TarInfo]) -> None:
    """Python's zoneinfo reads /usr/share/zoneinfo (package tzdata); the copies it never reads stay out."""
    names = {m.name.removeprefix("./") for m in rootfs}
    assert {"usr/share/zoneinfo/Europe/Berlin", "usr/share/zoneinfo/UTC", "usr/share/zoneinfo/tzdata.zi"} <= names
    assert "var/lib/dpkg/status.d/tzdata" in names
    assert not any(n.startswith(("usr/share/zoneinfo/right/", "usr/share/zoneinfo/posix/")) for n in names)
