"""Dispatch and execution of batch runs: each process claims queued runs as it has free
workers (`run_workers`), runs each to its end, and writes that end after the run's step
events, with its terminal event, through an outage of the database too.

A run this process executes is an `ActiveRun`: its live events feed the streams of this
process, and its step events go to the write-behind buffer, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.errors import ValidationFailed
from service.observe.metrics import Metrics
from service.runs.calls import StoreCalls, until_done
from service.runs.checkpointer import Checkpoints, RunCheckpointer
from service.runs.model import Claim, NewEvent, RunEnd, Steps
from service.runs.recorder import Recorder
from service.runs.records import finished_values, rerun_request
from service.runs.records import step_records as live_steps
from service.runs.store import (
    RunStore,
    interrupted_values,
    is_transient,
    webhook_due,
)
from service.runs.tasks import BackgroundTasks
from service.runs.waiting import wait_and_clear, wait_events
from service.sdk.pipeline import Pipeline
from service.sdk.requests import RequestModels
from service.sdk.runner import Invocation, Runner, StepEvent
from service.settings import Settings

logger = logging.getLogger("pipeserve.runs")


@dataclass(eq=False)
class ActiveRun:
    """A batch run this process executes: its live events, for streams and the store."""

    run_id: str
    webhook_url: str | None
    next_event_id: int
    # The attempt this process claimed: its own end replaces a recovery guess of it.
    attempt: int
    events: list[NewEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    invocation: Invocation | None = None
    checkpointer: RunCheckpointer | None = None
    task: asyncio.Task[Any] | None = None
    finished: bool = False
    interrupted: bool = False
    # Requeued or taken over by another process: its end here is not this run's end.
    lost: bool = False
    dirty: bool = False

    def emit(self, event: NewEvent) -> None:
        self.events.append(event)
        # Wake the streams waiting on the old event; later waiters get a fresh one.
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def stop(self, *, interrupted: bool = False) -> None:
        """Cancel cooperatively: no further step starts, async steps are cancelled."""
        self.interrupted = self.interrupted or interrupted
        if self.invocation is not None:
            self.invocation.cancel()
        if self.checkpointer is not None:
            self.checkpointer.stop()
        if self.task is not None:
            self.task.cancel()

    def live_steps(self) -> Steps | None:
        """The step records of the run while it runs here."""
        if self.invocation is None or self.finished:
            return None
        return live_steps(self.invocation)


class Dispatcher:
    """Claims queued runs while this process accepts work, and executes each."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        models: RequestModels,
        store: RunStore,
        calls: StoreCalls,
        recorder: Recorder,
        metrics: Metrics,
        tasks: BackgroundTasks,
        owner: str,
        webhook_due: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.models = models
        self.store = store
        self.calls = calls
        self.recorder = recorder
        self.metrics = metrics
        self.tasks = tasks
        # The lease owner of the runs this process executes.
        self.owner = owner
        # Told when a run ends with a webhook to deliver.
        self.webhook_due = webhook_due
        self.runner: Runner | None = None
        self.active: dict[str, ActiveRun] = {}
        self.checkpoints = Checkpoints(settings, pipeline, store, calls, recorder, metrics)
        self._slots = asyncio.Semaphore(settings.run_workers)
        self._work = asyncio.Event()
        self.accepting = True

    def wake(self) -> None:
        """A run was queued (or requeued): look for it now, not at the next poll."""
        self._work.set()

    def stop_accepting(self) -> None:
        self.accepting = False
        self._work.set()

    async def drain(self, deadline: float) -> None:
        """Let running runs finish until `deadline` (epoch seconds), then interrupt the rest."""
        self.stop_accepting()
        running = [a for a in self.active.values() if not a.finished]
        if running:
            await wait_events([a.done for a in running], max(0.0, deadline - time.time()))
        for active in self.active.values():
            if not active.done.is_set():
                logger.warning("interrupting run at shutdown", extra={"run_id": active.run_id})
                active.stop(interrupted=True)
        await wait_events([a.done for a in running], 10.0)

    def changed_steps(self) -> dict[str, Steps]:
        """The step records of running runs that changed since the last call (the flush)."""
        changed: dict[str, Steps] = {}
        for run_id, active in self.active.items():
            if active.dirty and active.invocation is not None and not active.finished:
                active.dirty = False
                changed[run_id] = live_steps(active.invocation)
        return changed

    async def run(self) -> None:
        """The dispatch loop: a claim for each free worker, until the drain."""
        settings = self.settings
        while self.accepting:
            await self._slots.acquire()
            claim = None
            try:
                if self.accepting:
                    claim = await self.calls.call(
                        self.store.claim_next, self.owner, time.time(), settings.run_lease
                    )
            except Exception as exc:
                if not is_transient(exc):
                    logger.exception("claiming a queued run failed; will retry")
            if claim is None:
                self._slots.release()
                await wait_and_clear(self._work, settings.poll_interval)
                continue
            self.tasks.spawn(self._execute(claim))

    async def _execute(self, claim: Claim) -> None:
        """Run a claimed run to its end; the worker slot is freed when its threads end."""
        run = claim.run
        active = ActiveRun(run.run_id, run.webhook_url, claim.next_event_id, attempt=run.attempt)
        self.active[run.run_id] = active
        inv: Invocation | None = None
        try:
            try:
                data = self.models.parse_invoke_object(rerun_request(run))
            except ValidationFailed as exc:
                # Stored under an older version of the pipeline, whose parameters differ.
                await self._end(active, _failed_values(exc.body()))
                return
            assert self.runner is not None
            loop = asyncio.get_running_loop()
            inv = self.runner.invocation(
                data, run_id=run.run_id, listener=functools.partial(self._listener, loop, active)
            )
            active.invocation = inv
            if self.pipeline.resume:
                # Checkpoint this attempt's steps; restore those earlier ones finished.
                emit = functools.partial(self._on_step_event, active)
                active.checkpointer = self.checkpoints.attach(
                    inv, run, loop, emit, lambda: not (active.finished or active.lost)
                )
                refused = await self.checkpoints.restore(inv, run)
                if refused is not None:
                    await self._end(active, refused)
                    return
            deadline = data.timeout or self.settings.run_timeout
            await self._run(active, inv, deadline)
            if active.interrupted:
                await self._interrupt(active, inv)
            else:
                max_bytes = self.settings.max_recorded_output_bytes
                await self._end(active, finished_values(inv, max_bytes, deadline), inv)
        except Exception as exc:
            logger.exception("a batch run could not be recorded", extra={"run_id": run.run_id})
            if not active.finished:
                # Never left `running` with no heartbeat: no process would recover it.
                error = {"type": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
                with contextlib.suppress(Exception):
                    await self._end(active, _failed_values(error), inv)
        finally:
            active.finished = True
            active.done.set()
            self.active.pop(run.run_id, None)
            if inv is not None:
                # As for /invoke: `run_workers` stays true while a sync step outlives its run.
                inv.release_when_threads_end(self._slots, self.tasks.spawn)
            else:
                self._slots.release()

    async def _run(self, active: ActiveRun, inv: Invocation, deadline: float) -> None:
        """The pipeline, until it ends, its deadline passes, or a cancel stops it."""
        assert self.runner is not None
        inner = active.task = asyncio.create_task(self.runner.run(inv, deadline))
        try:
            async with asyncio.timeout(deadline):
                await inner
        except TimeoutError:
            inv.status = "timed_out"
            inv.finished_at = time.time()
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            inv.status = "cancelled"
            inv.finished_at = inv.finished_at or time.time()

    def _listener(
        self, loop: asyncio.AbstractEventLoop, active: ActiveRun, event: StepEvent
    ) -> None:
        # Called from worker threads too: hand the event to the loop, in order.
        loop.call_soon_threadsafe(self._on_step_event, active, event)

    def _on_step_event(self, active: ActiveRun, event: StepEvent) -> None:
        if active.finished:
            return  # a sync step that outlived its run's deadline
        data: dict[str, Any] = {"run_id": active.run_id, "step": event.step, "at": event.at}
        if event.duration is not None:
            data["duration"] = event.duration
        if event.error is not None:
            data["error"] = {"type": event.error.type, "message": event.error.message}
        if event.tries is not None:
            data["tries"] = event.tries
            data["delay"] = event.delay
        self._emit(active, event.kind, data, event.at)
        active.dirty = True

    def _emit(self, active: ActiveRun, kind: str, data: dict[str, Any], at: float) -> NewEvent:
        new = NewEvent(active.run_id, active.next_event_id, kind, data, at)
        active.next_event_id += 1
        self.recorder.add_event(new)
        active.emit(new)
        return new

    async def _end(self, active: ActiveRun, values: RunEnd, inv: Invocation | None = None) -> None:
        """Write the run's end after its step events, with its terminal event."""
        active.finished = True
        now = time.time()
        status = values["status"]
        if active.webhook_url:
            values = {**values, **webhook_due(now, True)}
        data: dict[str, Any] = {"run_id": active.run_id, "status": status, "at": now,
                                "duration": values.get("duration")}  # fmt: skip
        if values.get("error"):
            data["error"] = values["error"]
        terminal = NewEvent(active.run_id, active.next_event_id, status, data, now)
        if active.lost and status == "cancelled":
            # Stopped here because another process has the run now: not the run's end.
            logger.warning(
                "run was taken over by another process: stopped here",
                extra={"run_id": active.run_id},
            )
            return
        # The step events first, then the end; through an outage of the database too.
        await until_done(self.recorder.flush)
        written = await self.calls.until_written(
            self.store.finish, active.run_id, self.owner, values, terminal, active.attempt
        )
        if not written:
            logger.warning(
                "run was taken over by another process: its result here is dropped",
                extra={"run_id": active.run_id},
            )
            return
        active.emit(terminal)
        steps = inv.records if inv is not None else {}
        self.metrics.observe_run(status, values.get("duration") or 0.0, steps)
        if active.webhook_url:
            self.webhook_due()

    async def _interrupt(self, active: ActiveRun, inv: Invocation) -> None:
        """Shutdown caught the run unfinished: requeue it to resume (or re-run, if safe),
        unless it was interrupted `max_attempts` times; else fail it."""
        await until_done(self.recorder.flush)
        pipeline = self.pipeline
        if pipeline.resume or pipeline.retry_safe:
            outcome = await self.calls.until_written(
                self.store.release, active.run_id, self.owner, time.time(), pipeline.max_attempts
            )
            if outcome == "failed":
                self.metrics.count_run("failed")
                self.webhook_due()
            return
        values = interrupted_values(time.time(), inv.started_at, live_steps(inv), webhook=False)
        await self._end(active, values, inv)


def _failed_values(error: dict[str, Any]) -> RunEnd:
    """The end of a run that could not start: its stored request no longer validates."""
    now = time.time()
    return {
        "status": "failed",
        "error": error,
        "finished_at": now,
        "updated_at": now,
        "duration": 0.0,
        "steps": {},
    }
