"""The pipelines the benchmarks serve, as `bench.pipelines:NAME`.

Each has a twin in `bench/floor.py` that does the same work in a bare Starlette endpoint.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import pydantic

from service import Pipeline, pipeline, step

FAN_OUT = 8
NAP_SECONDS = 0.05
CHAIN_LENGTH = 20


# -- (a) echo: one step returning its input + 1 ----------------------------------------


@step(name="add_one")
def add_one(x: int) -> Annotated[int, "y"]:
    return x + 1


@step(name="add_one")
async def add_one_async(x: int) -> Annotated[int, "y"]:
    return x + 1


@pipeline(name="echo")
def echo_def(x: int = 0) -> Any:
    return add_one(x)


@pipeline(name="echo")
def echo_async(x: int = 0) -> Any:
    return add_one_async(x)


# -- (b) a chain of trivial steps -------------------------------------------------------


def make_chain(length: int, is_async: bool = False) -> Pipeline:
    """`length` calls of add_one, each fed by the one before; its output is "y"."""
    link = add_one_async if is_async else add_one

    def chain(x: int = 0) -> Any:
        value: Any = x
        for _ in range(length):
            value = link(value)
        return value

    return pipeline(name=f"chain{length}")(chain)


chain20 = make_chain(CHAIN_LENGTH)


# -- (c) a fan-out of async steps that each wait ---------------------------------------


@step
async def nap(x: int, seconds: float = NAP_SECONDS) -> Annotated[int, "y"]:
    await asyncio.sleep(seconds)
    return x + 1


@pipeline
def fanout(x: int = 0) -> Any:
    return {f"y{i}": nap(x, id=f"nap_{i}") for i in range(1, FAN_OUT + 1)}


# -- an etl-like request, for the validation micro-benchmark ----------------------------

Limit = Annotated[int, pydantic.Field(ge=0, le=100_000)]


@step
def load(source: str, limit: Limit = 100) -> Annotated[list[int], "rows"]:
    return [i - limit // 2 for i in range(limit)]


@step
def clean(rows: list[int], drop_negative: bool = True) -> Annotated[list[int], "clean"]:
    return [r for r in rows if r >= 0] if drop_negative else rows


@step
def aggregate(rows: list[int], label: str = "total") -> Annotated[dict[str, Any], "summary"]:
    return {"label": label, "total": sum(rows), "count": len(rows)}


@pipeline
def etl(source: str, limit: Limit = 100, label: str = "total") -> Any:
    return aggregate(clean(load(source, limit)), label)


@pipeline(name="etl", resume=False)
def etl_unchecked(source: str, limit: Limit = 100, label: str = "total") -> Any:
    """etl without checkpoints: the baseline of `bench.checkpoints`."""
    return aggregate(clean(load(source, limit)), label)


ETL_BODY = (
    b'{"parameters": {"source": "s3://bucket/data.csv", "limit": 500, "label": "sum"}, '
    b'"steps": {"clean": {"parameters": {"drop_negative": false}}}, "timeout": 30}'
)
