"""The fast YAML reader: PyYAML's safe loader's values and its errors."""

from __future__ import annotations

import pytest
import yaml

from appliance import yamlload
from appliance.config import DEFAULT_POLICY_PATH


def test_the_default_policy_reads_as_the_pure_python_loader_reads_it() -> None:
    text = DEFAULT_POLICY_PATH.read_text(encoding="utf-8")
    assert yamlload._FAST_LOADER is yaml.CSafeLoader  # PyYAML's wheel has libyaml
    assert yamlload.safe_load(text) == yaml.safe_load(text)


def test_unsafe_tags_are_refused_as_by_safe_load() -> None:
    with pytest.raises(yaml.constructor.ConstructorError):
        yamlload.safe_load("a: !!python/object/apply:os.system ['true']")


def test_an_error_quotes_the_line_as_the_pure_python_loader_does() -> None:
    text = "version: 2\nscope: [1\n"
    with pytest.raises(yaml.YAMLError) as fast:
        yamlload.safe_load(text)
    with pytest.raises(yaml.YAMLError) as slow:
        yaml.safe_load(text)
    assert str(fast.value) == str(slow.value)
    assert "^" in str(fast.value)  # the caret under the fault, which libyaml's message lacks
