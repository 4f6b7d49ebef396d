"""Pipeline outputs to JSON, with orjson.

The JSON forms, as documented in the README:
- JSON types, dataclasses, datetimes and UUIDs: orjson's native forms;
- pydantic models: `model_dump(mode="json")`;
- numpy scalars and arrays: numbers and (nested) lists;
- pandas DataFrame: a list of row objects (`orient="records"`, ISO dates);
- pandas Series: an object of index to value (`orient="index"`, ISO dates);
anything else raises `OutputNotSerializable` naming the output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from service.errors import OutputNotSerializable

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _default(obj: Any) -> Any:
    module = type(obj).__module__
    if module.startswith("pandas"):
        name = type(obj).__name__
        # pandas writes these in C: far faster than walking rows in Python.
        if name == "DataFrame":
            return orjson.Fragment(obj.to_json(orient="records", date_format="iso"))
        if name == "Series":
            return orjson.Fragment(obj.to_json(orient="index", date_format="iso"))
        if name == "Timestamp":
            return obj.isoformat()
    if module.startswith("numpy"):
        # Arrays orjson cannot take natively (object dtype, non-contiguous): go via lists.
        tolist = getattr(obj, "tolist", None)
        if tolist is not None:
            return tolist()
    model_dump = getattr(obj, "model_dump", None)
    if model_dump is not None and module != "builtins":
        return model_dump(mode="json")
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"{type(obj).__module__}.{type(obj).__qualname__}")


def dumps(document: Any) -> bytes:
    return orjson.dumps(document, default=_default, option=_OPTIONS)


def dumps_outputs(outputs: Mapping[str, Any]) -> bytes:
    """Serialize a run's outputs; if that fails, name the output at fault."""
    try:
        return dumps(outputs)
    except TypeError:
        _raise_for_culprit(outputs)
        raise


def dumps_response(document: Mapping[str, Any], outputs: Mapping[str, Any] | None) -> bytes:
    """Serialize a response; if it fails, find and name the output at fault."""
    try:
        return dumps(document)
    except TypeError:
        _raise_for_culprit(outputs or {})
        raise


def _raise_for_culprit(outputs: Mapping[str, Any]) -> None:
    for name, value in outputs.items():
        try:
            dumps(value)
        except TypeError as exc:
            raise OutputNotSerializable(
                f"output '{name}' cannot be serialized to JSON: {exc}", output=name
            ) from None
