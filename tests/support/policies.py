"""Scope policies for tests: the shipped default with overrides merged in, written to a tmp dir."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from appliance.config import DEFAULT_POLICY_PATH

REPO = Path(__file__).resolve().parents[2]
# The policy `appliance serve` uses when none is named: the package's own data file.
DEFAULT_POLICY: dict[str, Any] = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
# Tests scan only listeners they start on 127.0.0.1, so their policy opens loopback.
LOOPBACK_POLICY: dict[str, Any] = {"scope": {"insecure_allow_loopback": True}}


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` merged in, recursively for nested mappings; neither is changed."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def write_policy(directory: Path, *overrides: dict[str, Any], name: str = "scope.yaml") -> Path:
    """The shipped default policy with `overrides` merged in, written to `directory`."""
    data = DEFAULT_POLICY
    for extra in overrides:
        data = merge(data, extra)
    path = directory / name
    path.write_text(yaml.safe_dump(data))
    return path
