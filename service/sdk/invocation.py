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
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.sdk.pipeline import Pipeline
from service.status import RunStatus, StepEventKind, StepStatus

logger = logging.getLogger("pipeserve.runner")


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """What a run's record shows of a step's checkpoint: never its bytes."""

    formats: tuple[str, ...]
    bytes: int


@dataclass(slots=True)
class StepRecord:
    status: StepStatus = "pending"
    started_at: float | None = None
    duration: float | None = None
    # How many times the step's function was called: more than 1 after retries.
    tries: int = 0
    # A restored step: the attempt of its run whose checkpoint it was restored from.
    restored_from: int | None = None
    checkpoint: CheckpointInfo | None = None


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
    # A `step_retrying` event: the try that failed, and the wait before the next.
    tries: int | None = None
    delay: float | None = None


StepListener = Callable[[StepEvent], None]


class Checkpointer(Protocol):
    """Stores a finished step's outputs, with its `step_finished` event, before any step
    that consumes them starts (a batch run's, to resume from). `consumed`: a step of the
    run takes them; if none does, nothing waits for them, and they go with the next write."""

    def save(
        self, event: StepEvent, record: StepRecord, values: tuple[Any, ...], consumed: bool
    ) -> None:
        """From the worker thread that ran a sync step: returns once it is stored."""

    async def save_async(
        self, event: StepEvent, record: StepRecord, values: tuple[Any, ...], consumed: bool
    ) -> None:
        """From the event loop, for an async step."""


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
    # What `StepContext.cancelled()` reads and a retry's wait ends on; made only for a
    # pipeline with a step that takes a StepContext or retries (a threading.Event costs
    # more to make than a one-step run).
    cancel_event: threading.Event | None = None
    # `time.monotonic()` past which no retry starts: the run's deadline, if it has one.
    deadline: float | None = None
    checkpointer: Checkpointer | None = None
    # The plan's steps a resumed run restored from checkpoints, their values already set.
    restored: set[int] = field(default_factory=set)

    def restore(
        self, index: int, name: str, values: tuple[Any, ...], attempt: int, info: CheckpointInfo
    ) -> None:
        """Take a step's outputs from a checkpoint: the runner will not run the step."""
        if name not in self.records:
            return  # not in this run's plan (`until`)
        self.values[index] = values
        self.restored.add(index)
        record = self.records[name]
        record.status = "restored"
        record.restored_from = attempt
        record.checkpoint = info

    def settle_restored(self, upstream: Sequence[Sequence[int]], names: Sequence[str]) -> int:
        """Keep only the restored steps whose upstream steps are all restored too; the
        others run again. A step that runs again may give other outputs: a restored step
        computed from its old ones would mix two executions. Returns how many are kept."""
        kept: set[int] = set()
        for i in self.plan.members:  # in topological order
            if i in self.restored and all(u in kept for u in upstream[i]):
                kept.add(i)
        for i in self.restored - kept:
            self.values[i] = None
            self.records[names[i]] = StepRecord()
        self.restored = kept
        return len(kept)

    def retry_wait(self, delay: float) -> bool:
        """Wait before a sync step's retry; False if the run was cancelled meanwhile.
        (A pipeline with a retrying step always has a `cancel_event`.)"""
        assert self.cancel_event is not None
        self.cancel_event.wait(delay)
        return not self.cancel_requested

    def may_retry(self, delay: float) -> bool:
        """Whether a retry after `delay` starts before the run's deadline and any cancel."""
        if self.cancel_requested:
            return False
        return self.deadline is None or time.monotonic() + delay < self.deadline

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
