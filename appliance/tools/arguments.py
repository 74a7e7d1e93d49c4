"""The one validation of a tool call's raw arguments: a JSON object in, the tool's request model out.

Every way in (MCP `tools/call`, `appliance check`, tests) comes through `parse_arguments`, so
there is exactly one set of rules: unknown arguments are refused (never silently dropped), types
are checked as the request model declares them, and each refusal names a rule. It does not check
scope, ports or flags: the tool's planner does that with the policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import pydantic
from pydantic import BaseModel
from pydantic_core import ErrorDetails

from appliance.errors import ValidationError

# pydantic error types by the rule a caller sees; anything else is `arguments_invalid`.
RULE_BY_ERROR_TYPE = {
    "extra_forbidden": "argument_unknown",
    "missing": "argument_missing",
    "literal_error": "argument_not_a_choice",
    "enum": "argument_not_a_choice",
    "greater_than": "argument_out_of_range",
    "greater_than_equal": "argument_out_of_range",
    "less_than": "argument_out_of_range",
    "less_than_equal": "argument_out_of_range",
    "too_long": "argument_too_long",
    "too_short": "argument_too_short",
    "string_too_long": "argument_too_long",
    "string_too_short": "argument_too_short",
}
TYPE_ERROR_SUFFIXES = ("_type", "_parsing")


def _rule(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind in RULE_BY_ERROR_TYPE:
        return RULE_BY_ERROR_TYPE[kind]
    if kind.endswith(TYPE_ERROR_SUFFIXES):
        return "argument_type"
    return "arguments_invalid"


def _where(error: ErrorDetails) -> str:
    return ".".join(str(part) for part in error["loc"]) or "<arguments>"


def _recovery(rule: str, model: type[BaseModel]) -> str:
    names = ", ".join(model.model_fields)
    if rule == "argument_unknown":
        return (
            f"Remove it: this tool takes only {names}. To keep a host out of a scan, narrow the target "
            "(the operator's deny list excludes addresses for good)."
        )
    if rule == "argument_missing":
        required = ", ".join(n for n, f in model.model_fields.items() if f.is_required())
        return f"Add the required argument(s): {required}."
    return "Fix the named argument; tools/list shows each tool's input schema with types and bounds."


def parse_arguments(model: type[BaseModel], arguments: Any) -> BaseModel:
    """Validate a call's raw `arguments` into `model`; raise ValidationError naming the first rule broken.

    The message lists every problem (field names and pydantic's reason, never the values beyond
    what pydantic quotes), so a caller fixes them all in one round.
    """
    if not isinstance(arguments, Mapping):
        raise ValidationError(
            f"the arguments must be a JSON object, not {type(arguments).__name__}",
            rule="arguments_not_an_object",
            recovery_suggestion="Send the arguments as an object of name -> value.",
        )
    try:
        return model.model_validate(dict(arguments))
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        rule = _rule(errors[0])
        problems = "; ".join(f"{_where(e)}: {e['msg']}" for e in errors)
        raise ValidationError(
            f"invalid arguments: {problems}", rule=rule, recovery_suggestion=_recovery(rule, model)
        ) from exc


def _ports_text(value: Any) -> Any:
    """Accept what clients naturally send for ports: 8080, [22, 80], "22,80" (all the same list).

    The Inspector CLI sends `--tool-arg ports=8080` as a number. Booleans are not numbers here.
    Anything else passes through unchanged for the string check (and `check_ports`) to judge.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, int | str) and not isinstance(v, bool) for v in value):
        return ",".join(str(v) for v in value)
    return value


PORTS_JSON_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "maxLength": 1024},
        {"type": "integer", "minimum": 1, "maximum": 65535},
        {"type": "array", "items": {"type": ["integer", "string"]}, "minItems": 1, "maxItems": 1024},
    ]
}
# A port list as a request field: always a string once validated ("22,80,8000-8100").
PortsArgument = Annotated[
    str,
    pydantic.BeforeValidator(_ports_text),
    pydantic.StringConstraints(max_length=1024),
    pydantic.WithJsonSchema(PORTS_JSON_SCHEMA),
]


# Every scan tool takes it; the policy bounds it (limits.max_wait_seconds, rule wait_out_of_bounds).
WAIT_SECONDS: Any = pydantic.Field(
    default=None,
    ge=0,
    le=3600,
    description="Wait this long for the result (default 20); a longer scan returns status 'running' and a "
    "scan_id for get_scan.",
)


# Every scan tool takes it; a caller in several engagements of the policy must name one.
ENGAGEMENT: Any = pydantic.Field(
    default=None,
    max_length=64,
    description="The engagement this scan runs in; needed only when you are in several (the refusal lists them).",
)
