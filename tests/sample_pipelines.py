"""Pipelines the tests serve, as `tests.sample_pipelines:NAME`."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import pydantic

from service import StepContext, pipeline, step


def _marker(name: str) -> Path | None:
    """Files the tests read to see what a hook did in the server process."""
    directory = os.environ.get("TEST_MARKER_DIR")
    return Path(directory) / name if directory else None


# -- echo: one step, as in the benchmarks ------------------------------------------


@step
def add_one(x: int = 0) -> Annotated[int, "y"]:
    return x + 1


@pipeline
def echo(x: int = 0) -> Any:
    return add_one(x)


# -- concurrency --------------------------------------------------------------------


@step
def sleep_sync(seconds: float = 0.2) -> Annotated[str, "thread"]:
    time.sleep(seconds)
    return threading.current_thread().name


@pipeline
def sleepy(seconds: float = 0.2) -> Any:
    return sleep_sync(seconds)


@step
async def branch(label: str, seconds: float = 0.3) -> str:
    await asyncio.sleep(seconds)
    return label


@step
def join(left: str, right: str) -> Annotated[str, "joined"]:
    return f"{left}+{right}"


@pipeline
def two_branches(seconds: float = 0.3) -> Any:
    left = branch("left", seconds, id="left")
    right = branch("right", seconds, id="right")
    return join(left, right)


# -- parameters, overrides and `until` ----------------------------------------------


Limit = Annotated[int, pydantic.Field(ge=0, le=1000)]


@step
def load(source: str, limit: Limit = 3) -> Annotated[list[int], "rows"]:
    return list(range(limit))


# Bounded, so that the outputs fit in 64 bits whatever factor a fuzzer sends.
Factor = Annotated[int, pydantic.Field(ge=-(10**6), le=10**6)]


@step
def scale(rows: list[int], factor: Factor = 2) -> Annotated[list[int], "scaled"]:
    return [r * factor for r in rows]


@step
def split(rows: list[int]) -> tuple[Annotated[list[int], "evens"], Annotated[list[int], "odds"]]:
    return [r for r in rows if r % 2 == 0], [r for r in rows if r % 2 == 1]


@step
def summarize(
    evens: list[int], odds: list[int], label: str = "sum"
) -> Annotated[dict[str, Any], "summary"]:
    return {"label": label, "total": sum(evens) + sum(odds), "count": len(evens) + len(odds)}


@pipeline
def etl(source: str, limit: Limit = 3, label: str = "sum") -> Any:
    """Load, scale, split and summarize; `source` is required."""
    rows = load(source, limit)
    scaled = scale(rows)
    evens, odds = split(scaled)
    return {"summary": summarize(evens, odds, label), "evens": evens}


# -- failures -----------------------------------------------------------------------


@step
def explode(message: str = "boom") -> int:
    raise ValueError(message)


@step
def after_explode(value: int) -> int:
    return value


@pipeline
def failing(message: str = "boom") -> Any:
    return after_explode(explode(message))


class NotJSON:
    pass


@step
def make_opaque() -> Annotated[Any, "opaque"]:
    return NotJSON()


@pipeline
def unserializable() -> Any:
    return make_opaque()


# -- output forms -------------------------------------------------------------------


class Point(pydantic.BaseModel):
    x: int
    y: int


@dataclasses.dataclass
class Box:
    width: float
    height: float


@step
def data_forms(
    n: int = 3,
) -> tuple[
    Annotated[Any, "array"],
    Annotated[Any, "scalar"],
    Annotated[Any, "frame"],
    Annotated[Any, "series"],
    Annotated[Any, "model"],
    Annotated[Any, "box"],
]:
    frame = pd.DataFrame({"a": range(n), "b": [float(i) / 2 for i in range(n)]})
    return (
        np.arange(n, dtype=np.int64),
        np.float32(1.5),
        frame,
        pd.Series([1, 2], index=["p", "q"]),
        Point(x=1, y=2),
        Box(2.0, 3.0),
    )


@pipeline
def forms(n: int = 3) -> Any:
    return data_forms(n)


# -- on_init / on_cleanup -----------------------------------------------------------


def init_counted() -> dict[str, Any]:
    marker = _marker(f"init-{os.getpid()}")
    if marker is not None:
        with marker.open("a") as f:
            f.write("init\n")
    return {"pid": os.getpid(), "model": "loaded"}


def cleanup_counted(state: dict[str, Any]) -> None:
    marker = _marker(f"cleanup-{os.getpid()}")
    if marker is not None:
        marker.write_text(f"cleanup {state['model']}\n")


@step
def read_state(context: StepContext) -> Annotated[dict[str, Any], "state"]:
    return {"pid": context.state["pid"], "model": context.state["model"], "run_id": context.run_id}


@pipeline(on_init=init_counted, on_cleanup=cleanup_counted)
def with_state() -> Any:
    return read_state()


async def init_slowly() -> str:
    await asyncio.sleep(float(os.environ.get("TEST_INIT_SECONDS", "1.5")))
    return "warm"


@step
def warm(context: StepContext) -> Annotated[str, "state"]:
    return str(context.state)


@pipeline(on_init=init_slowly)
def slow_init() -> Any:
    return warm()


def init_fails() -> None:
    raise RuntimeError("cannot load the model")


def cleanup_after_failure() -> None:
    marker = _marker("cleanup-after-failed-init")
    if marker is not None:
        marker.write_text("cleanup\n")


@pipeline(on_init=init_fails, on_cleanup=cleanup_after_failure)
def broken_init() -> Any:
    return add_one(1)


# Not resumed: an interrupted run fails as `interrupted` (the shutdown tests read that).
@pipeline(on_init=init_counted, on_cleanup=cleanup_counted, resume=False)
def slow_with_state(seconds: float = 0.3) -> Any:
    return sleep_sync(seconds)
