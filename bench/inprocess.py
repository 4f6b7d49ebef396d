"""In-process figures: the runner alone, without HTTP, on the event loop the server uses."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from service.sdk.pipeline import Pipeline
from service.sdk.requests import InvokeRequestData
from service.sdk.runner import Runner

from . import pipelines as bp

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop where installed, as uvicorn's `loop="auto"` picks it for the server."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro)


def request(parameters: dict[str, Any]) -> InvokeRequestData:
    return InvokeRequestData(parameters=parameters, step_parameters={}, until=None, timeout=None)


@contextmanager
def runner_for(pipeline: Pipeline, threads: int = 64) -> Iterator[Runner]:
    with ThreadPoolExecutor(threads, thread_name_prefix="pipeserve-step") as executor:
        yield Runner(pipeline, executor, None)


async def invoke(runner: Runner, parameters: dict[str, Any]) -> Any:
    inv = await runner.run(runner.invocation(request(parameters)))
    if inv.status != "succeeded":
        raise RuntimeError(f"the benchmark pipeline {inv.status}: {inv.error}")
    return inv.outputs


async def _timed(make: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    await make()
    return time.perf_counter() - t0


def per_step_us(length: int = 1000, is_async: bool = False, repeats: int = 5) -> dict[str, Any]:
    """Runner time per step on a chain of `length` trivial steps (median of `repeats` runs).

    The step itself (an addition) costs well under a microsecond, so this is the runner's
    overhead per step: scheduling, argument building, records, timing.
    """
    chain = bp.make_chain(length, is_async)

    async def main() -> list[float]:
        with runner_for(chain) as runner:
            outputs = await invoke(runner, {"x": 0})
            assert outputs == {"y": length}, outputs
            return [await _timed(lambda: invoke(runner, {"x": 0})) for _ in range(repeats)]

    times = run(main())
    median = statistics.median(times)
    return {
        "steps": length,
        "is_async": is_async,
        "repeats": repeats,
        "seconds_per_run": [round(t, 6) for t in times],
        "us_per_step": round(median / length * 1e6, 2),
    }


def fanout_concurrency(concurrent: int = 64, repeats: int = 5) -> dict[str, Any]:
    """Wall time of `concurrent` fan-out invocations at once, against that of one."""

    async def main() -> tuple[list[float], list[float]]:
        with runner_for(bp.fanout) as runner:
            await invoke(runner, {"x": 0})
            one: list[float] = []
            many: list[float] = []
            for _ in range(repeats):
                one.append(await _timed(lambda: invoke(runner, {"x": 1})))
                many.append(
                    await _timed(
                        lambda: asyncio.gather(
                            *(invoke(runner, {"x": i}) for i in range(concurrent))
                        )
                    )
                )
            return one, many

    one, many = run(main())
    ratio = statistics.median(many) / statistics.median(one)
    return {
        "concurrent": concurrent,
        "one_ms": round(statistics.median(one) * 1000, 2),
        "many_ms": round(statistics.median(many) * 1000, 2),
        "ratio": round(ratio, 3),
    }
