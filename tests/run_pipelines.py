"""Light pipelines (no numpy, no pandas: quick to start) for the run and store tests."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from service import StepContext, pipeline, step


@step
def first(seconds: float = 0.2) -> Annotated[float, "first"]:
    time.sleep(seconds)
    return seconds


@step
async def second(value: float, seconds: float = 0.2) -> Annotated[float, "second"]:
    await asyncio.sleep(seconds)
    return value + seconds


@step
def third(value: float, fail: bool = False) -> Annotated[dict[str, Any], "total"]:
    if fail:
        raise RuntimeError("third step refused")
    return {"total": round(value, 3)}


@pipeline
def three_steps(seconds: float = 0.2, fail: bool = False) -> Any:
    """A sync, an async and a sync step in a chain."""
    return third(second(first(seconds), seconds), fail)


@step
def block(context: StepContext, seconds: float = 2.0) -> Annotated[float, "slept"]:
    # Checks the cancel flag, as a long sync step should.
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if context.cancelled():
            break
        time.sleep(0.02)
    return seconds


@pipeline(resume=False)
def slow(seconds: float = 2.0) -> Any:
    """Neither resumed nor retried: an interrupted run fails as `interrupted`."""
    return block(seconds=seconds)


@pipeline(retry_safe=True, resume=False)
def slow_retry_safe(seconds: float = 2.0) -> Any:
    return block(seconds=seconds)


@step
async def wait_async(seconds: float = 5.0) -> Annotated[float, "waited"]:
    await asyncio.sleep(seconds)
    return seconds


@step
def never_after(value: float) -> Annotated[float, "after"]:
    return value


@pipeline
def slow_async(seconds: float = 5.0) -> Any:
    return never_after(wait_async(seconds))


# -- the request shapes of the reference documents ---------------------------------


@step
def load_data(data_url: str = "s3://example-bucket/data.csv") -> Annotated[str, "data"]:
    return data_url


@step
def train_model(data: str, model_type: str = "random_forest") -> Annotated[dict[str, str], "model"]:
    return {"data": data, "model_type": model_type}


@pipeline
def training(data_url: str = "s3://example-bucket/data.csv") -> Any:
    """ZenML's snapshot call names the steps load_data and train_model."""
    return train_model(load_data(data_url))


@step
def model_trainer(model_type: str = "svm") -> Annotated[str, "model_type"]:
    return model_type


@pipeline
def training_template() -> Any:
    """ZenML's run template call names the step model_trainer."""
    return model_trainer()


@step
def franchise_reviews(franchise_id: int) -> Annotated[dict[str, int], "reviews"]:
    return {"franchise_id": franchise_id, "reviews": franchise_id % 7}


@step
def publish(reviews: dict[str, int]) -> Annotated[str, "published"]:
    raise AssertionError("processName stops the run before this step")


@pipeline
def bakehouse(franchise_id: int = 1) -> Any:
    """Prophecy's example triggers the pipeline `bakehouse` up to `franchise_reviews`."""
    return publish(franchise_reviews(franchise_id))


@step
def keep(value: Any = None, count: int = 0, extra: Any = None) -> Annotated[Any, "kept"]:
    return {"value": value, "count": count, "extra": extra}


@pipeline
def anything(value: Any = None, count: int = 0) -> Any:
    """Parameters of any JSON value and an int, and a step's own `extra` to override."""
    return keep(value, count)
