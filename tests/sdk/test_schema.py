"""Request validation in-process: what the runner gets for a request's parameters."""

from __future__ import annotations

import warnings
from typing import Annotated, Any, Optional

import pydantic
import pytest

from service import pipeline, run_pipeline, step
from service.errors import ValidationFailed
from service.sdk.requests import RequestModels


class Point(pydantic.BaseModel):
    x: int
    y: int


@step
def take(value: Any) -> Any:
    return value


@pipeline
def plain(
    rows: list[list[float]],
    label: str = "sum",
    limit: Annotated[int, pydantic.Field(ge=0)] = 3,
    tag: Optional[str] = None,
    extra: dict[str, Any] | None = None,
) -> Any:
    return take(rows)


@pipeline
def with_models(point: Point, points: list[Point] = [], label: str = "p") -> Any:  # noqa: B006
    return take(point)


def test_plain_parameters_arrive_validated_with_defaults() -> None:
    data = RequestModels(plain).parse_invoke(
        b'{"parameters": {"rows": [[1, 2.5]], "extra": {"k": [1, {"a": null}]}}}'
    )
    assert data.parameters == {
        "rows": [[1.0, 2.5]],
        "label": "sum",
        "limit": 3,
        "tag": None,
        "extra": {"k": [1, {"a": None}]},
    }
    assert type(data.parameters["rows"][0][0]) is float


def test_model_parameters_arrive_as_dicts_from_json_and_from_objects() -> None:
    models = RequestModels(with_models)
    expected = {"point": {"x": 1, "y": 2}, "points": [{"x": 3, "y": 4}], "label": "p"}
    data = models.parse_invoke(
        b'{"parameters": {"point": {"x": 1, "y": 2}, "points": [{"x": 3, "y": 4}]}}'
    )
    assert data.parameters == expected
    data = models.parse_invoke_object(
        {"parameters": {"point": Point(x=1, y=2), "points": [{"x": 3, "y": 4}]}}
    )
    assert data.parameters == expected


@step
def validate(copy: int = 1) -> Annotated[int, "checked"]:
    return copy


@step
def model_dump(checked: int, _scale: int = 2) -> Annotated[int, "dumped"]:
    return checked * _scale


@pipeline
def shadowing(json: int = 2) -> Any:
    """Names pydantic's BaseModel has for itself, as a user may well pick them."""
    return model_dump(validate(json))


def test_names_that_basemodel_has_are_parameters_and_steps_like_any() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydantic warns of a field shadowing BaseModel's
        models = RequestModels(shadowing)
    body = (
        b'{"parameters": {"json": 5}, "steps": {"validate": {"parameters": {"copy": 3}},'
        b' "model_dump": {"parameters": {"_scale": 10}}}}'
    )
    data = models.parse_invoke(body)
    assert data.parameters == {"json": 5}
    assert data.step_parameters == {"validate": {"copy": 3}, "model_dump": {"_scale": 10}}
    assert models.parse_invoke(b"{}").parameters == {"json": 2}
    with pytest.raises(ValidationFailed) as caught:
        models.parse_invoke(b'{"parameters": {"json": "x"}}')
    assert caught.value.details["errors"][0]["loc"] == ["parameters", "json"]
    schema = models.invoke.model_json_schema()
    assert "json" in schema["$defs"]["ShadowingParameters"]["properties"]
    assert run_pipeline(shadowing, {"json": 4}).outputs == {"dumped": 8}
