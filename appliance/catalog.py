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

import functools
from collections.abc import Mapping
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


# Both schemas are built once per model (pydantic's schema generation is most of a tool list's
# cost, and the list is rebuilt at start and on each reload); callers must not change them.
@functools.cache
def input_schema(model: type[BaseModel]) -> dict[str, Any]:
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


@functools.cache
def output_schema(model: type[BaseModel]) -> dict[str, Any]:
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
