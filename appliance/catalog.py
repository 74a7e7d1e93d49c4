"""The tools as MCP publishes them: name, description, input schema, output schema, annotations.

Both schemas come from the tool's models (one source for validation, schema and docs), cut to
what a client needs:
- input: the request model's schema with `additionalProperties: false` (unknown arguments are
  refused, and the schema says so) and without pydantic's generated titles;
- output: shallow. The top level is typed; arrays of objects say only that (`items: object`).
  Clients that validate structured results against the output schema (the 1.x Python SDK
  does, per call) pay for every schema node, and the result's shape is documented in the tool
  description and README. Nullable fields are `type: [T, "null"]`, not `anyOf`.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mcp_types import Tool, ToolAnnotations
from pydantic import BaseModel

# Hints at their spec defaults are left out (readOnlyHint false, destructiveHint true,
# idempotentHint false, openWorldHint true; destructiveHint means nothing when read-only): every
# byte of tools/list is in each agent's context.
# Scanners read the network (they change nothing), the same call gives the same kind of answer,
# and what they touch is outside this process (the lab).
ANNOTATIONS = ToolAnnotations(read_only_hint=True, idempotent_hint=True)
# get_scan, list_scans, diff_scans read the appliance's own store: nothing outside is touched.
READ_JOBS = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
# cancel_scan ends a scan (its findings so far are kept); a second cancel changes nothing.
CANCEL_JOB = ToolAnnotations(idempotent_hint=True, open_world_hint=False)


def _without_titles(node: Any, *, in_properties: bool = False) -> Any:
    """Drop pydantic's generated `title` keys (a property *named* title would be kept)."""
    if isinstance(node, dict):
        return {
            key: _without_titles(value, in_properties=key == "properties")
            for key, value in node.items()
            if in_properties or key != "title"
        }
    if isinstance(node, list):
        return [_without_titles(item) for item in node]
    return node


def _nullable_as_type(prop: dict[str, Any]) -> dict[str, Any]:
    """`anyOf: [{T...}, {null}]` as `{T..., type: [T, "null"]}`; an omitted optional means null anyway,
    so a `null` default is dropped. Wider unions keep their anyOf, without the null branch."""
    options = prop.get("anyOf")
    if options is None or {"type": "null"} not in options:
        return prop
    rest = [o for o in options if o != {"type": "null"}]
    reduced = {k: v for k, v in prop.items() if k != "anyOf" and not (k == "default" and v is None)}
    if len(rest) == 1 and isinstance(rest[0].get("type"), str):
        return {**rest[0], **reduced, "type": [rest[0]["type"], "null"]}
    return {**reduced, "anyOf": rest}


# Both schemas of every tool's models, as build_input_schema and build_output_schema make them,
# shipped with the package: pydantic's schema generation was about 40 ms of each start-up, before
# the first tools/list (issue 10). tests/test_catalog.py fails when the file and the models
# disagree; `python -m appliance.catalog --write` remakes it.
SCHEMAS_PATH = Path(__file__).resolve().parent / "data" / "tool_schemas.json"


def schema_key(model: type[BaseModel], kind: str) -> str:
    return f"{model.__module__}.{model.__qualname__}:{kind}"


@functools.cache
def _shipped() -> dict[str, dict[str, Any]]:
    """The shipped schemas; none when the file is missing (a source tree mid-change): then each
    schema is built from its model, which gives the same result, only slower."""
    try:
        shipped: dict[str, dict[str, Any]] = json.loads(SCHEMAS_PATH.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return shipped


# Both schemas are made once per model (the list is rebuilt at start and on each reload);
# callers must not change them.
@functools.cache
def input_schema(model: type[BaseModel]) -> dict[str, Any]:
    return _shipped().get(schema_key(model, "input")) or build_input_schema(model)


@functools.cache
def output_schema(model: type[BaseModel]) -> dict[str, Any]:
    return _shipped().get(schema_key(model, "output")) or build_output_schema(model)


def build_input_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema: dict[str, Any] = _without_titles(model.model_json_schema())
    schema["properties"] = {name: _nullable_as_type(prop) for name, prop in schema["properties"].items()}
    schema["additionalProperties"] = False
    return schema


def _shallow(node: Mapping[str, Any]) -> dict[str, Any]:
    """One property of an output schema, reduced to its type (and enum, which is small and useful)."""
    if "$ref" in node:
        return {"type": "object"}
    if "anyOf" in node:
        types: list[str] = []
        enum: list[Any] | None = None
        for option in node["anyOf"]:
            reduced = _shallow(option)
            kind = reduced.get("type", "object")
            types.extend(kind if isinstance(kind, list) else [kind])
            enum = reduced.get("enum", enum)
        shallow: dict[str, Any] = {"type": types[0] if len(types) == 1 else types}
        if enum is not None:
            shallow["enum"] = [*enum, None] if "null" in types else enum
        return shallow
    shallow = {key: node[key] for key in ("type", "enum", "const") if key in node}
    if node.get("type") == "array":
        items = node.get("items", {})
        shallow["items"] = {"type": "object"} if "$ref" in items else _shallow(items)
    return shallow


# Result fields the output schema leaves out (the results still carry them; README "Results"
# documents every field): the budget of the whole tools/list (10 KB for seven tools) goes to
# what an agent decides with. An output schema without additionalProperties: false allows them.
OUTPUT_SCHEMA_OMITS = frozenset(
    {
        "verdict",
        "exit_code",
        "duration_seconds",
        "partial_reason",
        "result_schema_version",
        "resource_uri",
        "argv",
        "dry_run",  # status says `dry_run`
        "request_id",
        "scanned_address",
    }
)


def build_output_schema(model: type[BaseModel]) -> dict[str, Any]:
    full = model.model_json_schema(mode="serialization")
    properties = {name: _shallow(prop) for name, prop in full["properties"].items() if name not in OUTPUT_SCHEMA_OMITS}
    # A status is one of the job states (README: Scan jobs), a mode one of gobuster's: the lists
    # would cost 120 bytes per tool.
    for name in ("status", "mode"):
        if name in properties:
            properties[name] = {"type": properties[name]["type"]}
    required = [name for name in full.get("required", []) if name in properties]
    return {"type": "object", "properties": properties, "required": required}


def tool_definition(
    name: str,
    description: str,
    request_model: type[BaseModel],
    result_model: type[BaseModel] | None,
    annotations: ToolAnnotations = ANNOTATIONS,
) -> Tool:
    """`result_model` None: no output schema (a tool whose result has another tool's shape)."""
    return Tool(
        name=name,
        description=description,
        input_schema=input_schema(request_model),
        output_schema=None if result_model is None else output_schema(result_model),
        annotations=annotations,
    )


def without_argument(tool: Tool, name: str) -> Tool:
    """`tool` whose input schema does not show argument `name` (the cached schema stays as it is)."""
    schema = tool.input_schema
    properties = {key: value for key, value in schema["properties"].items() if key != name}
    required = [key for key in schema.get("required", []) if key != name]
    trimmed = {**schema, "properties": properties, **({"required": required} if "required" in schema else {})}
    return tool.model_copy(update={"input_schema": trimmed})


def tool_models() -> tuple[list[type[BaseModel]], list[type[BaseModel]]]:
    """Every tool's request models and result models (scan tools, then job tools)."""
    from appliance.server import JOB_TOOLS  # the server imports this module
    from appliance.tools import TOOLS

    requests = [spec.request_model for spec in TOOLS.values()] + [t.request_model for t in JOB_TOOLS.values()]
    results: list[type[BaseModel]] = [spec.result_model for spec in TOOLS.values()]
    results += [t.result_model for t in JOB_TOOLS.values() if t.result_model is not None]
    return requests, results


def built_schemas(requests: Iterable[type[BaseModel]], results: Iterable[type[BaseModel]]) -> dict[str, Any]:
    """What SCHEMAS_PATH must hold for these models."""
    built = {schema_key(m, "input"): build_input_schema(m) for m in requests}
    built.update({schema_key(m, "output"): build_output_schema(m) for m in results})
    return dict(sorted(built.items()))


def schemas_text(schemas: Mapping[str, Any]) -> str:
    """The file's text: keys in the schemas' own order (tools/list shows properties in it)."""
    return json.dumps(schemas, indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.catalog", description="Remake the shipped tool schemas.")
    parser.add_argument("--write", action="store_true", help=f"write {SCHEMAS_PATH} (default: print)")
    args = parser.parse_args(argv)
    text = schemas_text(built_schemas(*tool_models()))
    if args.write:
        SCHEMAS_PATH.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
