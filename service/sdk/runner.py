"""The runner: executes one invocation of a pipeline, with no process-global state.

Each invocation owns its values, records and cancel flag, so any number of them run at
once in one process. Async steps run on the event loop, sync steps on the worker
threads of the executor given to the runner; independent branches run concurrently.
When a single sync step is all that can run, the thread that ran it goes straight on
to its sole sync successor: a chain of sync steps costs one thread hop, not one a step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Executor
from typing import Any

from service.sdk.calling import StepCalls
from service.sdk.invocation import (
    Invocation,
    Plan,
    StepError,
    StepEvent,
    StepListener,
    StepRecord,
    make_plan,
    new_run_id,
)
from service.sdk.pipeline import Pipeline
from service.sdk.requests import InvokeRequestData

__all__ = [
    "Invocation",
    "Runner",
    "StepError",
    "StepEvent",
    "StepListener",
    "StepRecord",
    "new_run_id",
    "run_pipeline",
]

logger = logging.getLogger("pipeserve.runner")


class Runner:
    """Runs invocations of one pipeline; `state` is what `on_init` returned."""

    def __init__(self, pipeline: Pipeline, executor: Executor, state: Any = None) -> None:
        self.pipeline = pipeline
        self.executor = executor
        self.state = state
        self._nodes = pipeline.steps
        self._retries = any(n.step.retry.retries for n in pipeline.steps)
        self._needs_cancel_event = self._retries or any(
            n.step.context_parameter is not None for n in pipeline.steps
        )
        self._calls = StepCalls(pipeline, state)
        # Plans for `until` are made on first use: a cache, not shared mutable state.
        self._plans: dict[str | None, Plan] = {None: make_plan(pipeline, None)}

    def invocation(
        self,
        request: InvokeRequestData,
        run_id: str | None = None,
        listener: StepListener | None = None,
    ) -> Invocation:
        plan = self._plans.get(request.until)
        if plan is None:
            plan = self._plans[request.until] = make_plan(self.pipeline, request.until)
        return Invocation(
            run_id=run_id or new_run_id(),
            parameters=request.parameters,
            step_parameters=request.step_parameters,
            plan=plan,
            listener=listener,
            records={self._nodes[i].name: StepRecord() for i in plan.members},
            values=[None] * len(self._nodes),
            cancel_event=threading.Event() if self._needs_cancel_event else None,
        )

    async def run(self, inv: Invocation, deadline: float | None = None) -> Invocation:
        """Run to the end; on outside cancellation (a timeout), stop starting steps and
        re-raise. `deadline`: the caller's timeout in seconds, past which no retry starts."""
        if deadline is not None and self._retries:
            inv.deadline = time.monotonic() + deadline
        inv.status = "running"
        inv.started_at = time.time()
        t0 = time.perf_counter()
        try:
            await self._execute(inv)
        finally:
            inv.execution_time = time.perf_counter() - t0
            inv.finished_at = time.time()
        if inv.error is not None:
            inv.status = "failed"
        elif inv.cancel_requested:
            inv.status = "cancelled"
        else:
            inv.status = "succeeded"
            values = inv.values
            inv.outputs = {
                name: values[i][o]  # type: ignore[index]
                for name, i, o in inv.plan.outputs
            }
        return inv

    async def _execute(self, inv: Invocation) -> None:
        plan = inv.plan
        remaining = list(plan.remaining)
        ready = list(plan.roots)
        if inv.restored:
            ready = self._resume_from(inv, remaining)
        running: dict[asyncio.Future[Any], int] = {}
        nodes = self._nodes
        try:
            while True:
                if inv.error is None and not inv.cancel_requested:
                    if not running and len(ready) == 1:
                        # Alone: run it here, without a task; a sync one chains in its thread.
                        i = ready.pop()
                        if nodes[i].step.is_async:
                            if await self._calls.run_async(inv, i):
                                ready.extend(self._release(i, remaining, plan))
                        else:
                            chain = self.executor.submit(self._run_sync_chain, inv, i, remaining)
                            inv.thread_futures.append(chain)
                            newly: list[int] = await asyncio.wrap_future(chain)
                            ready.extend(newly)
                        continue
                    while ready:
                        i = ready.pop()
                        fut: asyncio.Future[Any]
                        if nodes[i].step.is_async:
                            fut = asyncio.ensure_future(self._calls.run_async(inv, i))
                        else:
                            single = self.executor.submit(self._calls.run_sync, inv, i)
                            inv.thread_futures.append(single)
                            fut = asyncio.wrap_future(single)
                        running[fut] = i
                if not running:
                    return
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    i = running.pop(fut)
                    if fut.result():
                        ready.extend(self._release(i, remaining, plan))
                if inv.error is not None and running:
                    # A step failed: answer now. Async siblings are cancelled; a sync one
                    # cannot be interrupted, and `wait_threads` tells when it is over.
                    inv.cancel()
                    await self._abandon(running)
                    return
        except asyncio.CancelledError:
            inv.cancel()
            await self._abandon(running)
            raise

    @staticmethod
    def _resume_from(inv: Invocation, remaining: list[int]) -> list[int]:
        """The steps to start a resumed run with: those whose every input is restored."""
        restored = inv.restored
        for r in restored:
            for d in inv.plan.downstream[r]:
                remaining[d] -= 1
        return [i for i in inv.plan.members if i not in restored and remaining[i] == 0]

    @staticmethod
    async def _abandon(running: dict[asyncio.Future[Any], int]) -> None:
        for fut in running:
            fut.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    @staticmethod
    def _release(i: int, remaining: list[int], plan: Plan) -> list[int]:
        newly: list[int] = []
        for d in plan.downstream[i]:
            remaining[d] -= 1
            if remaining[d] == 0:
                newly.append(d)
        return newly

    def _run_sync_chain(self, inv: Invocation, i: int, remaining: list[int]) -> list[int]:
        # Runs in a worker thread while the event loop side awaits only this call, so the
        # thread alone touches `remaining` until it returns.
        nodes = self._nodes
        while True:
            if not self._calls.run_sync(inv, i):
                return []
            newly = self._release(i, remaining, inv.plan)
            if len(newly) != 1 or nodes[newly[0]].step.is_async or inv.cancel_requested:
                return newly
            i = newly[0]


def run_pipeline(
    pipeline: Pipeline,
    parameters: dict[str, Any] | None = None,
    *,
    steps: dict[str, dict[str, Any]] | None = None,
    until: str | None = None,
    state: Any = None,
) -> Invocation:
    """Run a pipeline once in this process, without a server: for tests and notebooks.

    Request validation is the server's: here values are passed as they are.
    """
    from concurrent.futures import ThreadPoolExecutor

    request = InvokeRequestData(
        parameters={**pipeline.parameter_defaults(), **(parameters or {})},
        step_parameters={
            name: dict(config.get("parameters", {})) for name, config in (steps or {}).items()
        },
        until=until,
        timeout=None,
    )

    async def main() -> Invocation:
        with ThreadPoolExecutor(thread_name_prefix="pipeserve-step") as executor:
            runner = Runner(pipeline, executor, state)
            return await runner.run(runner.invocation(request))

    return asyncio.run(main())
