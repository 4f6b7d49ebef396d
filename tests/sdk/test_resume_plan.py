"""A resumed invocation, in-process: restored steps are skipped, the rest run once each,
and a step restored on top of one that must run again runs again too."""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

from service import pipeline, step
from service.sdk.invocation import CheckpointInfo, Invocation
from service.sdk.requests import InvokeRequestData
from service.sdk.runner import Runner
from tests.durable_pipelines import retried

CALLS: Counter[str] = Counter()
INFO = CheckpointInfo(("json",), 1)


@step(checkpoint=False)
def source() -> Annotated[int, "source"]:
    CALLS["source"] += 1
    return 1


@step
def left(value: int) -> Annotated[int, "left"]:
    CALLS["left"] += 1
    return value + 10


@step
async def right(value: int) -> Annotated[int, "right"]:
    CALLS["right"] += 1
    return value + 100


@step
def join(a: int, b: int) -> Annotated[int, "joined"]:
    CALLS["join"] += 1
    return a + b


@pipeline
def diamond() -> Any:
    value = source()
    return join(left(value), right(value))


def run(pipe: Any, restored: dict[str, Any], **parameters: Any) -> Invocation:
    CALLS.clear()
    request = InvokeRequestData(parameters=parameters, step_parameters={}, until=None, timeout=None)

    async def main() -> Invocation:
        with ThreadPoolExecutor(2) as executor:
            runner = Runner(pipe, executor)
            inv = runner.invocation(request)
            for name, value in restored.items():
                inv.restore(pipe.steps_by_name[name].index, name, (value,), 1, INFO)
            nodes = pipe.steps
            inv.settle_restored([n.upstream for n in nodes], [n.name for n in nodes])
            return await runner.run(inv)

    return asyncio.run(main())


def test_restored_steps_are_skipped_and_the_rest_run_once() -> None:
    inv = run(diamond, {"source": 1, "left": 11})
    assert inv.status == "succeeded" and inv.outputs == {"joined": 112}
    assert CALLS == {"right": 1, "join": 1}
    assert [inv.records[n].status for n in ("source", "left", "right", "join")] == [
        "restored", "restored", "completed", "completed",
    ]  # fmt: skip
    assert inv.records["left"].restored_from == 1


def test_a_step_restored_after_one_that_runs_again_runs_again_too() -> None:
    # `source` has no checkpoint: it runs again, so `left`, computed from its old output,
    # is not restored either (and `join` waits for both of its inputs).
    inv = run(diamond, {"left": 999})
    assert inv.status == "succeeded" and inv.outputs == {"joined": 112}
    assert CALLS == {"source": 1, "left": 1, "right": 1, "join": 1}
    assert {r.status for r in inv.records.values()} == {"completed"}
    assert inv.restored == set()


def test_every_step_restored_runs_nothing() -> None:
    inv = run(diamond, {"source": 1, "left": 11, "right": 101, "join": 112})
    assert inv.status == "succeeded" and inv.outputs == {"joined": 112}
    assert CALLS == {}


def test_a_cancel_during_a_retry_wait_cancels_the_step(tmp_path: Path) -> None:
    request = InvokeRequestData(
        parameters={"log": str(tmp_path / "log"), "failures": 10},
        step_parameters={}, until=None, timeout=None,
    )  # fmt: skip

    async def main() -> Invocation:
        with ThreadPoolExecutor(2) as executor:
            runner = Runner(retried, executor)
            inv = runner.invocation(request)
            task = asyncio.create_task(runner.run(inv))
            await asyncio.sleep(0.1)  # the first try failed: the step waits 0.3 s
            inv.cancel()
            return await task

    inv = asyncio.run(main())
    assert inv.status == "cancelled" and inv.error is None
    assert (inv.records["flaky"].status, inv.records["flaky"].tries) == ("cancelled", 1)
