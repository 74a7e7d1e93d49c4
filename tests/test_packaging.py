"""The built wheel on its own: installed outside the repository, its defaults must work.

A wheel is built from this tree and installed (without dependencies) into a fresh venv that sees
no system site-packages; the locked dependencies come from the test's own venv through a path
line, which adds the folder without running its .pth files, so the editable install of the
work tree stays out. The commands then run from a folder that holds no policy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from support import REPO

# Building a wheel of this tree (setuptools, no isolation) and installing it takes a few seconds.
BUILD_TIMEOUT_SECONDS = 180
CLI_TIMEOUT_SECONDS = 60
POLICY_FILES = ("appliance/data/policies/scope.yaml", "appliance/data/policies/capabilities.yaml")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy of what the wheel is made of: setuptools writes build/ and *.egg-info
    # beside the sources, which must not land in the work tree.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "appliance", source / "appliance", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), "."],
        cwd=source,
        env={"PATH": "/usr/bin:/bin", "PIP_NO_CACHE_DIR": "1", "PIP_CONFIG_FILE": "/dev/null"},
        capture_output=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=True,
    )
    [built] = out.glob("mcp_scanner_appliance-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; returns its bin/ folder."""
    root = tmp_path_factory.mktemp("venv")
    venv.create(root, with_pip=False, system_site_packages=False)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(root), "platbase": str(root)}))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        capture_output=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=True,
        env={"PATH": "/usr/bin:/bin", "PIP_CONFIG_FILE": "/dev/null"},
    )
    deps = Path(sysconfig.get_path("purelib"))
    (site / "locked-deps.pth").write_text(f"{deps}\n")
    return root / "bin"


def python(bin_dir: Path, cwd: Path, *args: str) -> tuple[int, str, str]:
    """Run the fresh venv's python with ARGS from `cwd`, with no APPLIANCE_* variables."""
    done = subprocess.run(
        [str(bin_dir / "python"), *args],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def cli(bin_dir: Path, cwd: Path, *args: str) -> tuple[int, str, str]:
    """`appliance ARGS` of the fresh venv (as `python -m appliance`)."""
    return python(bin_dir, cwd, "-m", "appliance", *args)


def test_wheel_ships_the_default_policies(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in POLICY_FILES:
            assert name in names
            assert archive.read(name) == (REPO / name).read_bytes()


def test_installed_package_is_the_wheel_not_the_work_tree(installed: Path, tmp_path: Path) -> None:
    code, out, err = python(installed, tmp_path, "-c", "import appliance; print(appliance.__file__)")
    assert code == 0, err
    location = Path(out.strip())
    assert location.is_relative_to(installed.parent), location
    assert not location.is_relative_to(REPO)


def test_installed_config_show_defaults_to_shipped_policies(installed: Path, tmp_path: Path) -> None:
    code, out, err = cli(installed, tmp_path, "config", "show")
    assert code == 0, err
    settings = json.loads(out)
    for key in ("policy_path", "capability_policy_path"):
        path = Path(settings[key])
        assert path.is_file(), f"{key} {path} does not exist"
        assert path.is_relative_to(installed.parent) and not path.is_relative_to(REPO)


def test_installed_policy_validate_accepts_the_default_from_another_folder(installed: Path, tmp_path: Path) -> None:
    _, out, _ = cli(installed, tmp_path, "config", "show")
    default = json.loads(out)["policy_path"]
    code, out, err = cli(installed, tmp_path, "policy", "validate", default)
    assert code == 0, err
    assert json.loads(out)["valid"] is True


def test_installed_check_is_not_refused_by_a_missing_policy(installed: Path, tmp_path: Path) -> None:
    # `check` loads the default policy as `serve` does; before the policies were package data it
    # failed here with a missing file. A dry run: nothing is scanned.
    code, out, err = cli(installed, tmp_path, "check", "nmap_scan", "--args-json", '{"target": "192.168.56.10"}')
    assert code == 0, err
    body = json.loads(out)
    assert body["verdict"] == "allowed" and body["argv"][-1] == "192.168.56.10"
