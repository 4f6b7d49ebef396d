"""The runner in-process: isolation between invocations, scheduling, failures."""

from __future__ import annotations

import asyncio
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from service import StepContext, pipeline, run_pipeline, step
from service.sdk.requests import InvokeRequestData
from service.sdk.runner import Runner, StepEvent


@step
def tag(context: StepContext, value: int = 0) -> Annotated[dict[str, Any], "tagged"]:
    return {"value": value, "run_id": context.run_id, "state": context.state}


@pipeline
def tagged(value: int = 0) -> Any:
    return tag(value=value)


def test_run_pipeline_passes_state_and_parameters() -> None:
    inv = run_pipeline(tagged, {"value": 3}, state="shared")
    assert inv.status == "succeeded"
    assert inv.outputs == {"tagged": {"value": 3, "run_id": inv.run_id, "state": "shared"}}


def test_concurrent_invocations_in_one_loop_never_mix_values() -> None:
    async def main() -> list[Any]:
        with ThreadPoolExecutor(8) as executor:
            runner = Runner(tagged, executor, state="s")
            invocations = [
                runner.invocation(InvokeRequestData({"value": i}, {}, None, None))
                for i in range(200)
            ]
            await asyncio.gather(*(runner.run(inv) for inv in invocations))
            return [(inv.run_id, inv.outputs) for inv in invocations]

    for i, (run_id, outputs) in enumerate(asyncio.run(main())):
        assert outputs == {"tagged": {"value": i, "run_id": run_id, "state": "s"}}


@step
def inc(x: int) -> int:
    return x + 1


@step
def thread_name(x: int) -> tuple[Annotated[int, "x"], Annotated[str, "thread"]]:
    return x, threading.current_thread().name


def test_a_sync_chain_runs_in_one_worker_thread() -> None:
    @pipeline
    def chain(x: int = 0) -> Any:
        for _ in range(50):
            x = inc(x)
        return thread_name(x)

    inv = run_pipeline(chain, {"x": 0})
    assert inv.outputs is not None and inv.outputs["x"] == 50
    assert inv.outputs["thread"].startswith("pipeserve-step")
    assert len(inv.records) == 51
    assert all(r.status == "completed" for r in inv.records.values())


@step
async def fail_async() -> int:
    raise KeyError("missing")


@step
async def slow_async(seconds: float = 5.0) -> int:
    await asyncio.sleep(seconds)
    return 1


def test_a_failure_cancels_async_siblings_and_stops_the_run() -> None:
    @pipeline
    def p() -> Any:
        return {"a": fail_async(), "b": slow_async()}

    inv = run_pipeline(p)
    assert inv.status == "failed"
    assert inv.error is not None and inv.error.step == "fail_async"
    assert inv.error.type == "KeyError"
    assert inv.records["slow_async"].status == "cancelled"


def test_listener_sees_each_step_event() -> None:
    events: list[StepEvent] = []

    async def main() -> None:
        with ThreadPoolExecutor(2) as executor:
            runner = Runner(tagged, executor)
            inv = runner.invocation(
                InvokeRequestData({"value": 1}, {}, None, None), listener=events.append
            )
            await runner.run(inv)

    asyncio.run(main())
    assert [(e.kind, e.step) for e in events] == [("step_started", "tag"), ("step_finished", "tag")]
    assert events[1].duration is not None


def test_outside_cancellation_stops_further_steps() -> None:
    # Events, not sleeps: on a loaded machine a timer can fire after a short step ends.
    started = threading.Event()
    release = threading.Event()

    @step
    def blocked() -> int:
        started.set()
        release.wait(30)
        return 1

    @pipeline
    def p() -> Any:
        return inc(blocked())

    async def main() -> Any:
        with ThreadPoolExecutor(2) as executor:
            runner = Runner(p, executor)
            inv = runner.invocation(InvokeRequestData({}, {}, None, None))
            task = asyncio.create_task(runner.run(inv))
            assert await asyncio.to_thread(started.wait, 30)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            assert inv.threads_running()
            release.set()
            await inv.wait_threads()
            assert not inv.threads_running()
            return inv

    inv = asyncio.run(main())
    assert inv.records["blocked"].status == "completed"
    assert inv.records["inc"].status == "pending"


@step
def watch_for_cancel(context: StepContext, seconds: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if context.cancelled():
            return True
        time.sleep(0.005)
    return False


@pipeline
def watched() -> Any:
    return watch_for_cancel()


def test_a_running_step_sees_its_invocation_cancelled() -> None:
    async def main() -> Any:
        with ThreadPoolExecutor(2) as executor:
            runner = Runner(watched, executor)
            inv = runner.invocation(InvokeRequestData({}, {}, None, None))
            task = asyncio.ensure_future(runner.run(inv))
            while inv.records["watch_for_cancel"].status != "running":
                await asyncio.sleep(0.005)
            inv.cancel()
            await task
            return inv

    inv = asyncio.run(main())
    assert inv.status == "cancelled"
    assert inv.values[0] == (True,)
    assert inv.cancel_event is not None and inv.cancel_event.is_set()


def test_a_cancelled_invocation_starts_no_step_and_its_event_is_set() -> None:
    async def main() -> Any:
        with ThreadPoolExecutor(2) as executor:
            runner = Runner(watched, executor)
            inv = runner.invocation(InvokeRequestData({}, {}, None, None))
            inv.cancel()
            return await runner.run(inv)

    inv = asyncio.run(main())
    assert inv.status == "cancelled"
    assert inv.records["watch_for_cancel"].status == "pending"
    assert inv.cancel_event is not None and inv.cancel_event.is_set()


@step
def plain_step(value: int = 0) -> int:
    return value


@pipeline
def plain() -> Any:
    return plain_step()


def test_a_pipeline_without_a_context_step_makes_no_event_but_cancels() -> None:
    async def main() -> Any:
        with ThreadPoolExecutor(2) as executor:
            runner = Runner(plain, executor)
            inv = runner.invocation(InvokeRequestData({}, {}, None, None))
            assert inv.cancel_event is None
            inv.cancel()
            return await runner.run(inv)

    inv = asyncio.run(main())
    assert inv.status == "cancelled"
    assert all(r.status == "pending" for r in inv.records.values())


def test_run_ids_are_random_version_4_uuids() -> None:
    ids = {run_pipeline(tagged).run_id for _ in range(50)}
    assert len(ids) == 50
    for run_id in ids:
        parsed = uuid.UUID(run_id)
        assert str(parsed) == run_id
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
