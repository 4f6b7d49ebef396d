"""Pipeline parameters from the command line (`--name=value`), typed by the JSON schema.

The schema is the deployment's `/info` `parameters_schema`. A value for a string parameter
is taken as written; any other is read as JSON (`3`, `0.5`, `true`, `[1, 2]`, `{"a": 1}`).
What does not fit is sent as written, so the server's 422 says what is wrong with it.
"""

from __future__ import annotations

import json
from typing import Any

from service.errors import PipeserveError


class ParameterError(PipeserveError):
    """The arguments are not `--name=value` pairs; the message is for the user."""


def _types(schema: dict[str, Any], definitions: dict[str, Any], depth: int = 0) -> set[str]:
    """The JSON types a value of `schema` may have; empty means any."""
    if depth > 8:
        return set()
    if "$ref" in schema:
        target = definitions.get(schema["$ref"].rsplit("/", 1)[-1], {})
        return _types(target, definitions, depth + 1)
    found: set[str] = set()
    kind = schema.get("type")
    if isinstance(kind, str):
        found.add(kind)
    elif isinstance(kind, list):
        found.update(kind)
    for member in [*schema.get("anyOf", []), *schema.get("oneOf", []), *schema.get("allOf", [])]:
        found |= _types(member, definitions, depth + 1)
    found.update(_json_type(value) for value in schema.get("enum", []))
    if "const" in schema:
        found.add(_json_type(schema["const"]))
    return found


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _fits(value: Any, types: set[str]) -> bool:
    kind = _json_type(value)
    return kind in types or (kind == "integer" and "number" in types)


def coerce(raw: str, schema: dict[str, Any], definitions: dict[str, Any]) -> Any:
    """The value of `raw` for a parameter of `schema`."""
    types = _types(schema, definitions)
    if types == {"string"}:
        return raw
    text = raw.lower() if raw in ("True", "False", "None") else raw
    if text == "none":
        text = "null"
    try:
        parsed = json.loads(text)
    except ValueError:
        return raw
    if not types or _fits(parsed, types) or "string" not in types:
        return parsed
    return raw


def parse_parameters(args: list[str], schema: dict[str, Any]) -> dict[str, Any]:
    """`--name=value`, `--name value` or a bare `--flag` (true) into typed parameters.

    `--model-type` finds `model_type` when no parameter is named `model-type`.
    """
    properties: dict[str, Any] = schema.get("properties", {})
    definitions: dict[str, Any] = {**schema.get("$defs", {}), **schema.get("definitions", {})}
    parameters: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ParameterError(f"'{arg}' is not a parameter: write --name=value")
        name, sep, raw = arg[2:].partition("=")
        if not sep:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                raw = args[i + 1]
                i += 1
            else:
                raw = "true"
        if name not in properties and name.replace("-", "_") in properties:
            name = name.replace("-", "_")
        if name in parameters:
            raise ParameterError(f"parameter '{name}' is given twice")
        # An unknown name goes to the server as it is: its 422 lists the parameters it takes.
        parameters[name] = coerce(raw, properties.get(name, {}), definitions)
        i += 1
    return parameters


def describe_type(schema: dict[str, Any], definitions: dict[str, Any]) -> str:
    """A short type for people: `integer`, `string | null`, `array`."""
    types = _types(schema, definitions)
    order = ["string", "integer", "number", "boolean", "array", "object", "null"]
    ranked = sorted(types, key=lambda t: order.index(t) if t in order else len(order))
    return " | ".join(ranked) if ranked else "any"
