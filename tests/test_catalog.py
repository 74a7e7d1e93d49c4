"""The shipped tool schemas: equal to what the models give, and the ones start-up uses."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from appliance import catalog
from appliance.tools import TOOLS


def test_shipped_schemas_are_what_the_models_give() -> None:
    expected = catalog.schemas_text(catalog.built_schemas(*catalog.tool_models()))
    shipped = catalog.SCHEMAS_PATH.read_text(encoding="utf-8")
    # Text, not dicts: tools/list shows the properties in the file's order.
    assert shipped == expected, "a tool model changed: run `.venv/bin/python -m appliance.catalog --write`"


def test_every_tool_model_is_shipped() -> None:
    requests, results = catalog.tool_models()
    shipped = catalog._shipped()
    assert {catalog.schema_key(m, "input") for m in requests} | {
        catalog.schema_key(m, "output") for m in results
    } == set(shipped)
    assert len(requests) == len(TOOLS) + 4  # the scan tools and get/cancel/list/diff_scans


def test_start_up_takes_the_shipped_schema_not_a_new_one() -> None:
    model = TOOLS["nmap_scan"].request_model
    shipped = catalog._shipped()
    assert catalog.input_schema.__wrapped__(model) is shipped[catalog.schema_key(model, "input")]
    result = TOOLS["nmap_scan"].result_model
    assert catalog.output_schema.__wrapped__(result) is shipped[catalog.schema_key(result, "output")]


class Unshipped(BaseModel):
    count: int
    name: str | None = None


def test_a_model_not_in_the_file_gets_its_schema_built() -> None:
    schema = catalog.input_schema.__wrapped__(Unshipped)
    assert schema == catalog.build_input_schema(Unshipped)
    assert schema["properties"]["name"] == {"type": ["string", "null"]}
    assert schema["additionalProperties"] is False


def test_the_command_prints_what_it_would_write(capsys: pytest.CaptureFixture[str]) -> None:
    assert catalog.main([]) == 0
    assert capsys.readouterr().out == catalog.SCHEMAS_PATH.read_text(encoding="utf-8")
