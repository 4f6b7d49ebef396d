"""Calling one step of an invocation: its arguments (from upstream outputs, parameters,
per-request overrides and its StepContext), its retries, its result taken as its
outputs, and their checkpoint. The runner (`runner`) decides which step runs when.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from service.sdk.invocation import Checkpointer, Invocation, StepError, StepEvent, StepRecord
from service.sdk.pipeline import Constant, FromParameter, FromStep, Pipeline
from service.sdk.step import StepContext

logger = logging.getLogger("pipeserve.runner")

_FROM_STEP, _FROM_PARAMETER, _CONSTANT = 0, 1, 2


class StepCalls:
    """How each step of one pipeline is called; `state` is what `on_init` returned."""

    def __init__(self, pipeline: Pipeline, state: Any) -> None:
        self.nodes = pipeline.steps
        self.state = state
        self.pipeline_name = pipeline.name
        self.arg_plans = [
            tuple(self._arg_plan(name, source) for name, source in node.arguments.items())
            for node in pipeline.steps
        ]

    @staticmethod
    def _arg_plan(name: str, source: Any) -> tuple[str, int, Any, int]:
        if isinstance(source, FromStep):
            return (name, _FROM_STEP, source.step_index, source.output_index)
        if isinstance(source, FromParameter):
            return (name, _FROM_PARAMETER, source.name, 0)
        assert isinstance(source, Constant)
        return (name, _CONSTANT, source.value, 0)

    def kwargs(self, inv: Invocation, i: int) -> dict[str, Any]:
        node = self.nodes[i]
        overrides = inv.step_parameters.get(node.name)
        values = inv.values
        kwargs: dict[str, Any] = {}
        for name, kind, a, b in self.arg_plans[i]:
            if overrides is not None and name in overrides:
                kwargs[name] = overrides[name]
            elif kind == _FROM_STEP:
                kwargs[name] = values[a][b]
            elif kind == _FROM_PARAMETER:
                kwargs[name] = inv.parameters[a]
            else:
                kwargs[name] = a
        context_parameter = node.step.context_parameter
        if context_parameter is not None:
            cancel_event = inv.cancel_event
            assert cancel_event is not None  # made for every pipeline with such a step
            kwargs[context_parameter] = StepContext(
                state=self.state,
                run_id=inv.run_id,
                step_name=node.name,
                pipeline_name=self.pipeline_name,
                parameters=inv.parameters,
                _cancel_event=cancel_event,
            )
        return kwargs

    def _accept(self, inv: Invocation, i: int, record: StepRecord, t0: float, result: Any) -> bool:
        """Take a step's result as its outputs; False if it does not match the outputs the
        step declares (the step failed)."""
        node = self.nodes[i]
        record.duration = time.perf_counter() - t0
        n_outputs = len(node.step.output_names)
        if n_outputs == 1:
            inv.values[i] = (result,)
        elif isinstance(result, tuple) and len(result) == n_outputs:
            inv.values[i] = result
        else:
            got = len(result) if isinstance(result, tuple) else 1
            inv.step_failed(
                node.name,
                record,
                t0,
                TypeError(
                    f"step '{node.name}' returned {got} value(s) but declares "
                    f"{n_outputs} outputs {list(node.step.output_names)}"
                ),
            )
            return False
        record.status = "completed"
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "step finished",
                extra={"run_id": inv.run_id, "step": node.name, "duration": record.duration},
            )
        return True

    def _announce(self, inv: Invocation, i: int, record: StepRecord) -> Checkpointer | None:
        """Tell the listener the step finished, unless a checkpointer (returned) must: it
        writes the event with the checkpoint. An `/invoke` run has neither: nothing is made."""
        checkpointer = inv.checkpointer if self.nodes[i].step.checkpoint else None
        if checkpointer is None and inv.listener is not None:
            inv.listener(self._finished_event(inv, i, record))
        return checkpointer

    def _finished_event(self, inv: Invocation, i: int, record: StepRecord) -> StepEvent:
        name = self.nodes[i].name
        return StepEvent(inv.run_id, "step_finished", name, time.time(), record.duration)

    def _retry_delay(
        self, inv: Invocation, i: int, record: StepRecord, exc: Exception
    ) -> float | None:
        """The wait before the step runs again, or None: it fails now."""
        node = self.nodes[i]
        policy = node.step.retry
        if not policy.retries_on(exc, record.tries):
            return None
        delay = policy.delay(record.tries)
        if not inv.may_retry(delay):
            return None
        logger.warning(
            "step raised %s (try %d of %d); retrying in %.3fs",
            type(exc).__name__,
            record.tries,
            policy.retries + 1,
            delay,
            extra={"run_id": inv.run_id, "step": node.name},
        )
        if inv.listener is not None:
            error = StepError(node.name, type(exc).__name__, str(exc), "")
            at = time.time()
            inv.listener(
                StepEvent(inv.run_id, "step_retrying", node.name, at, None, error,
                          tries=record.tries, delay=delay)
            )  # fmt: skip
        return delay

    def run_sync(self, inv: Invocation, i: int) -> bool:
        if inv.cancel_requested:
            return False
        node = self.nodes[i]
        record = inv.step_started(node.name)
        t0 = time.perf_counter()
        while True:
            record.tries += 1
            try:
                result = node.step.func(**self.kwargs(inv, i))
                break
            except Exception as exc:
                delay = self._retry_delay(inv, i, record, exc)
                if delay is None:
                    return inv.step_failed(node.name, record, t0, exc)
                if not inv.retry_wait(delay):
                    # Cancelled while waiting: the run's end is the cancel, not this error.
                    record.status = "cancelled"
                    record.duration = time.perf_counter() - t0
                    return False
        if not self._accept(inv, i, record, t0, result):
            return False
        checkpointer = self._announce(inv, i, record)
        if checkpointer is not None:
            event = self._finished_event(inv, i, record)
            checkpointer.save(event, record, inv.values[i] or (), bool(inv.plan.downstream[i]))
        return True

    async def run_async(self, inv: Invocation, i: int) -> bool:
        node = self.nodes[i]
        record = inv.step_started(node.name)
        t0 = time.perf_counter()
        try:
            while True:
                record.tries += 1
                try:
                    result = await node.step.func(**self.kwargs(inv, i))
                    break
                except Exception as exc:
                    delay = self._retry_delay(inv, i, record, exc)
                    if delay is None:
                        return inv.step_failed(node.name, record, t0, exc)
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            record.status = "cancelled"
            record.duration = time.perf_counter() - t0
            raise
        if not self._accept(inv, i, record, t0, result):
            return False
        checkpointer = self._announce(inv, i, record)
        if checkpointer is not None:
            event = self._finished_event(inv, i, record)
            await checkpointer.save_async(
                event, record, inv.values[i] or (), bool(inv.plan.downstream[i])
            )
        return True
