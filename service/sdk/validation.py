"""Validating JSON bodies at the edge: 400 for what is not JSON, 422 naming each field
of the wrong shape, and the edge's limits (64-bit integers, nesting depth)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pydantic
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from service.errors import MalformedJSON, ValidationFailed

# The integers a request may hold: what orjson writes, and so what the run store keeps.
INT_MIN = -(2**63)


INT_MAX = 2**64 - 1


INT_TOO_LARGE = "JSON integers must fit in 64 bits (from -2**63 to 2**64-1)"


class EdgeJsonSchema(GenerateJsonSchema):
    """JSON schemas of requests that state the edge's limits: an integer fits in 64 bits."""

    def int_schema(self, schema: core_schema.IntSchema) -> JsonSchemaValue:
        json_schema = super().int_schema(schema)
        if self.mode == "validation":
            # Set where absent or looser; an exclusive bound within them is enough.
            low = max(
                json_schema.get("minimum", INT_MIN), json_schema.get("exclusiveMinimum", INT_MIN)
            )
            high = min(
                json_schema.get("maximum", INT_MAX), json_schema.get("exclusiveMaximum", INT_MAX)
            )
            if low <= INT_MIN:
                json_schema["minimum"] = INT_MIN
            if high >= INT_MAX:
                json_schema["maximum"] = INT_MAX
        return json_schema


def validate_json(
    model: type[BaseModel], body: bytes, strict: bool = False, raw: bool = False
) -> Any:
    """Raise 400 for a body that is not JSON and 422 for one of the wrong shape (`raw`:
    pydantic's own error instead)."""
    try:
        return model.model_validate_json(body if body.strip() else b"{}", strict=strict)
    except pydantic.ValidationError as exc:
        if raw:
            raise
        raise validation_error(exc) from None


def integral_floats_only(exc: pydantic.ValidationError) -> bool:
    """True if strict mode refused only numbers like `6.0` where an integer goes."""
    return all(
        e["type"] == "int_type" and type(e["input"]) is float and e["input"].is_integer()
        for e in exc.errors(include_url=False, include_context=False)
    )


def refuse_large_ints(validated: Any) -> None:
    """422 naming each integer of a validated request that does not fit in 64 bits."""
    errors = [
        {"loc": loc, "msg": INT_TOO_LARGE, "type": "int_too_large"}
        for loc in _large_ints(validated, [])
    ]
    if errors:
        where = ".".join(str(p) for p in errors[0]["loc"]) or "body"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ValidationFailed(f"{where}: {INT_TOO_LARGE}{more}", errors=errors)


def _large_ints(value: Any, loc: list[Any]) -> Iterator[list[Any]]:
    """Where integers beyond 64 bits are in a validated value, named as the request names
    them (a field's alias, a key, an index)."""
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            yield loc
    elif isinstance(value, BaseModel):
        for name, info in type(value).model_fields.items():
            yield from _large_ints(getattr(value, name), [*loc, info.alias or name])
        for key, item in (value.__pydantic_extra__ or {}).items():
            yield from _large_ints(item, [*loc, key])
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, int) and not INT_MIN <= key <= INT_MAX:
                yield [*loc, key]
            yield from _large_ints(item, [*loc, key])
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _large_ints(item, [*loc, index])
    elif isinstance(value, (set, frozenset)):
        for item in value:
            yield from _large_ints(item, loc)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from _large_ints(getattr(value, field.name), [*loc, field.name])


def validate(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise validation_error(exc) from None


def validation_error(exc: pydantic.ValidationError) -> MalformedJSON | ValidationFailed:
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return MalformedJSON(f"the body is not valid JSON: {errors[0]['msg']}")
    details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
    first = details[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    message = f"{where}: {first['msg']}"
    if len(details) > 1:
        message += f" (and {len(details) - 1} more)"
    return ValidationFailed(message, errors=details)


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """True if the JSON text nests deeper than `limit`.

    Counting brackets in C first makes the common case free; only a body with more
    brackets than the limit is scanned (outside strings) character by character.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    in_string = False
    escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False
