"""One invocation of a pipeline: its plan, its values and the records of its steps.

Each invocation owns its state, so any number of them run at once in one process and
never see each other's values.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from service.sdk.pipeline import Pipeline
from service.status import RunStatus, StepEventKind, StepStatus

logger = logging.getLogger("pipeserve.runner")


@dataclass(slots=True)
class StepRecord:
    status: StepStatus = "pending"
    started_at: float | None = None
    duration: float | None = None


@dataclass(frozen=True, slots=True)
class StepError:
    step: str
    type: str
    message: str
    traceback: str


@dataclass(frozen=True, slots=True)
class StepEvent:
    """A step's progress, for run recording and live streams; may come from a worker thread."""

    run_id: str
    kind: StepEventKind
    step: str
    at: float
    duration: float | None = None
    error: StepError | None = None


StepListener = Callable[[StepEvent], None]


def new_run_id() -> str:
    """A random (version 4) UUID as text, made without a UUID object: a third of the cost."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


@dataclass(frozen=True, slots=True)
class Plan:
    """The steps one request runs (all, or those an `until` step needs), precomputed."""

    members: tuple[int, ...]
    roots: tuple[int, ...]
    remaining: tuple[int, ...]
    downstream: tuple[tuple[int, ...], ...]
    outputs: tuple[tuple[str, int, int], ...]


def make_plan(pipeline: Pipeline, until: str | None) -> Plan:
    """The plan of a request: every step, or those `until`'s step needs."""
    nodes = pipeline.steps
    if until is None:
        members = set(range(len(nodes)))
        outputs = tuple(
            (name, src.step_index, src.output_index) for name, src in pipeline.outputs.items()
        )
    else:
        target = pipeline.steps_by_name[until].index
        members = {target}
        stack = [target]
        while stack:
            for u in nodes[stack.pop()].upstream:
                if u not in members:
                    members.add(u)
                    stack.append(u)
        outputs = tuple((name, target, i) for i, name in enumerate(nodes[target].step.output_names))
    downstream: list[list[int]] = [[] for _ in nodes]
    remaining = [0] * len(nodes)
    for i in members:
        for u in nodes[i].upstream:
            downstream[u].append(i)
            remaining[i] += 1
    ordered = tuple(sorted(members))
    return Plan(
        members=ordered,
        roots=tuple(i for i in ordered if remaining[i] == 0),
        remaining=tuple(remaining),
        downstream=tuple(tuple(sorted(d)) for d in downstream),
        outputs=outputs,
    )


@dataclass(eq=False)
class Invocation:
    """The state of one run: private to it, so runs never see each other's values."""

    run_id: str
    parameters: dict[str, Any]
    step_parameters: dict[str, dict[str, Any]]
    plan: Plan
    listener: StepListener | None = None
    records: dict[str, StepRecord] = field(default_factory=dict)
    values: list[tuple[Any, ...] | None] = field(default_factory=list)
    error: StepError | None = None
    status: RunStatus = "queued"
    outputs: dict[str, Any] | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    execution_time: float = 0.0
    thread_futures: list[Future[Any]] = field(default_factory=list)
    # Read by the runner between steps, from any thread: a plain flag suffices for that.
    cancel_requested: bool = False
    # What `StepContext.cancelled()` reads; made only for a pipeline with a step that takes
    # a StepContext (a threading.Event costs more to make than a one-step run).
    cancel_event: threading.Event | None = None

    def cancel(self) -> None:
        """Cooperative: no further step starts; the caller cancels the awaiting task."""
        self.cancel_requested = True
        if self.cancel_event is not None:
            self.cancel_event.set()

    async def wait_threads(self) -> None:
        """Return once no worker thread runs a step of this invocation any more."""
        for cf in self.thread_futures:
            if not cf.done():
                try:
                    await asyncio.wrap_future(cf)
                except BaseException:  # only its end matters here
                    pass

    def threads_running(self) -> bool:
        return any(not cf.done() for cf in self.thread_futures)

    def release_when_threads_end(
        self,
        slots: asyncio.Semaphore,
        spawn: Callable[[Coroutine[Any, Any, None]], object],
    ) -> None:
        """Free the concurrency slot this run held once no thread runs a step of it.

        Even after a deadline or a cancel: a sync step cannot be stopped, and releasing
        its slot early would let the real concurrency grow without bound.
        """
        if not self.threads_running():
            slots.release()
            return

        async def release_later() -> None:
            try:
                await self.wait_threads()
            finally:
                slots.release()

        spawn(release_later())

    def step_started(self, name: str) -> StepRecord:
        record = self.records[name]
        record.status = "running"
        record.started_at = time.time()
        if self.listener is not None:
            self.listener(StepEvent(self.run_id, "step_started", name, record.started_at))
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("step started", extra={"run_id": self.run_id, "step": name})
        return record

    def step_failed(self, name: str, record: StepRecord, t0: float, exc: BaseException) -> bool:
        """Record a step's failure (the run's first is its error); False: the step failed."""
        record.duration = time.perf_counter() - t0
        record.status = "failed"
        error = StepError(
            step=name,
            type=type(exc).__name__,
            message=str(exc),
            traceback="".join(traceback.format_exception(exc)),
        )
        if self.error is None:
            self.error = error
        logger.error(
            "step failed: %s: %s",
            error.type,
            error.message,
            exc_info=exc,
            extra={"run_id": self.run_id, "step": name},
        )
        if self.listener is not None:
            self.listener(
                StepEvent(self.run_id, "step_failed", name, time.time(), record.duration, error)
            )
        return False
