"""The write-behind buffer of the run store: what a flush every 100 ms writes at once.

It holds finished `/invoke` runs (their rows are built, outputs serialized, in one go on
the flush, not on the request), the step events of batch runs, in order, and the
checkpoints of their finished steps. A flush writes them all, with the step records of
running batch runs, in one transaction: a checkpoint with its `step_finished` event.

The buffer never wedges. When the database is out of reach (a transient failure), the
buffer keeps what it held and the next flush, after a backoff, writes it; a crash loses
at most what was buffered. When the database refuses the batch for what it holds (a
record it cannot take), the batch is written again one record at a time, and only the
records refused again are dropped, each logged and counted: one bad record never blocks
the others, and is never retried forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from service.observe.metrics import Metrics
from service.runs.calls import until_done
from service.runs.model import Checkpoint, FinishedRun, NewEvent, Run, Steps
from service.runs.records import Deployment, invocation_row
from service.runs.store import RunStore
from service.runs.store_health import first_line, is_transient
from service.sdk.requests import InvokeRequestData
from service.sdk.runner import Invocation

logger = logging.getLogger("pipeserve.runs")

FLUSH_INTERVAL = 0.1
# Past this many unwritten `/invoke` records (the store is down), the oldest are dropped.
MAX_BUFFERED = 10_000
# Past this many bytes of unwritten checkpoints (the store is down), the oldest are dropped.
MAX_BUFFERED_CHECKPOINT_BYTES = 512 * 1024 * 1024
# The longest wait between two flushes while the database stays out of reach.
MAX_BACKOFF = 5.0

# A finished `/invoke` run: its invocation, request, deadline and step records.
Entry = tuple[Invocation, InvokeRequestData, "float | None", Steps]
# Runs the blocking store call in the store's threads.
Call = Callable[..., Awaitable[Any]]


class Recorder:
    """The write-behind buffer of one process, and its flush loop."""

    def __init__(
        self,
        store: RunStore,
        deployment: Deployment,
        max_output_bytes: int,
        call: Call,
        progress: Callable[[], Mapping[str, Steps]],
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.deployment = deployment
        self.max_output_bytes = max_output_bytes
        self.metrics = metrics
        # `StoreCalls.call`: it keeps each call's outcome as the store's health.
        self._call = call
        # Step records of running batch runs that changed since the last flush.
        self._progress = progress
        self._recorded: dict[str, Entry] = {}
        self._writing: dict[str, Entry] = {}
        self._events: list[NewEvent] = []
        self._checkpoints: list[Checkpoint] = []
        self._lock = asyncio.Lock()
        self._dropped = 0

    def record(
        self,
        inv: Invocation,
        data: InvokeRequestData,
        deadline: float | None,
        steps: Steps,
    ) -> None:
        """Keep a finished `/invoke` run for the next flush: the hot path's only cost."""
        if len(self._recorded) >= MAX_BUFFERED:
            self._recorded.pop(next(iter(self._recorded)))
            self._drop("buffer_full")
        self._recorded[inv.run_id] = (inv, data, deadline, steps)

    def add_event(self, event: NewEvent) -> None:
        self._events.append(event)

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Past `MAX_BUFFERED_CHECKPOINT_BYTES` unwritten (the store is down), the oldest
        are dropped: their steps run again if the run resumes."""
        self._checkpoints.append(checkpoint)
        buffered = sum(c.size for c in self._checkpoints if c.data is not None)
        while buffered > MAX_BUFFERED_CHECKPOINT_BYTES and len(self._checkpoints) > 1:
            dropped = self._checkpoints.pop(0)
            buffered -= dropped.size if dropped.data is not None else 0
            self.metrics.checkpoints.labels("buffer_full").inc()

    def pending_run(self, run_id: str) -> Run | None:
        """An `/invoke` run not written yet, as the store will have it."""
        entry = self._recorded.get(run_id) or self._writing.get(run_id)
        return Run(**self._row(entry)) if entry is not None else None

    def _row(self, entry: Entry) -> FinishedRun:
        inv, data, deadline, steps = entry
        return invocation_row(
            inv, data, self.deployment, self.max_output_bytes, deadline, steps=steps
        )

    def _drop(self, reason: str, **extra: Any) -> None:
        self._dropped += 1
        self.metrics.records_dropped.labels(reason).inc()
        if reason != "buffer_full" or self._dropped % 1000 == 1:
            logger.error(
                "a run record could not be written and was dropped",
                extra={"reason": reason, "dropped": self._dropped, **extra},
            )

    async def run(self) -> None:
        backoff = FLUSH_INTERVAL
        while True:
            await asyncio.sleep(backoff)
            try:
                await self.flush()
                backoff = FLUSH_INTERVAL
            except Exception as exc:
                if not is_transient(exc):
                    logger.exception("writing run records failed; will retry")
                backoff = min(MAX_BACKOFF, max(backoff * 2, 0.25))

    async def flush(self) -> None:
        """Write what the buffer holds. When the database is out of reach, keep it all for
        the next flush and raise; a record the database refuses is dropped, alone."""
        async with self._lock:
            recorded, self._recorded = self._recorded, {}
            new_events, self._events = self._events, []
            saved, self._checkpoints = self._checkpoints, []
            progress = dict(self._progress())
            if not (recorded or new_events or progress or saved):
                return
            self._writing = recorded
            # Rows are built here, on the event loop, in one go: in the store's thread
            # this Python work would contend for the GIL with the requests being served.
            finished = self._prepare(recorded)
            try:
                try:
                    await self._call(
                        self.store.write_batch,
                        list(finished.values()),
                        new_events,
                        progress,
                        time.time(),
                        saved,
                    )
                    self._written(saved)
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    await self._write_one_by_one(finished, new_events, progress, saved, exc)
            except BaseException:
                kept = {run_id: recorded[run_id] for run_id in finished}
                self._recorded = {**kept, **self._recorded}
                self._events = new_events + self._events
                self._checkpoints = saved + self._checkpoints
                raise
            finally:
                self._writing = {}

    async def last_flush(self, give_up_at: float) -> None:
        """Write what the buffer holds before the process exits; through a short outage
        of the database too, but never past `give_up_at`."""
        try:
            await until_done(self.flush, give_up_at=give_up_at, max_wait=1.0)
        except Exception as exc:
            logger.error(
                "could not write the last run records at shutdown; they are lost",
                extra={"error": first_line(exc)},
            )

    def _prepare(self, recorded: Mapping[str, Entry]) -> dict[str, Any]:
        """Each record as the store writes it; a value JSON cannot carry is left out."""
        finished: dict[str, Any] = {}
        for run_id, entry in recorded.items():
            try:
                parameters, omitted = self.store.prepare_finished(self._row(entry))
            except Exception:
                logger.exception("a run record could not be built", extra={"run_id": run_id})
                self._drop("unbuildable", run_id=run_id)
                continue
            if omitted:
                self.metrics.records_dropped.labels("unserializable_fields").inc()
                logger.error(
                    "a run record holds values JSON cannot carry; stored without them",
                    extra={"run_id": run_id, "fields": omitted},
                )
            finished[run_id] = parameters
        return finished

    async def _write_one_by_one(
        self,
        finished: Mapping[str, Any],
        new_events: Sequence[NewEvent],
        progress: Mapping[str, Steps],
        saved: Sequence[Checkpoint],
        cause: Exception,
    ) -> None:
        """The database refused the batch: find the records it refuses, write the rest."""
        logger.warning(
            "the run store refused a batch of records; writing them one at a time",
            extra={"error": first_line(cause)},
        )
        events: dict[str, list[NewEvent]] = {}
        for event in new_events:
            events.setdefault(event.run_id, []).append(event)
        checkpoints: dict[str, list[Checkpoint]] = {}
        for checkpoint in saved:
            checkpoints.setdefault(checkpoint.run_id, []).append(checkpoint)
        now = time.time()
        for run_id, row in finished.items():
            await self._write_or_drop(run_id, [row], [], {}, now)
        for run_id in {**events, **checkpoints}:
            # A run's checkpoints with its events, as always; if that is refused, the
            # events alone, and the checkpoints are dropped (their steps would run again).
            ours = checkpoints.get(run_id, [])
            if not await self._write_or_drop(run_id, [], events.get(run_id, []), {}, now, ours):
                if ours and events.get(run_id):
                    await self._write_or_drop(run_id, [], events[run_id], {}, now)
        for run_id, steps in progress.items():
            await self._write_or_drop(run_id, [], [], {run_id: steps}, now)

    async def _write_or_drop(
        self,
        run_id: str,
        rows: Sequence[Any],
        events: Sequence[NewEvent],
        progress: Mapping[str, Steps],
        now: float,
        saved: Sequence[Checkpoint] = (),
    ) -> bool:
        """One part of a refused batch: written, or dropped if refused again (False)."""
        try:
            await self._call(self.store.write_batch, rows, events, progress, now, saved)
        except Exception as exc:
            if is_transient(exc):
                raise
            self._drop("refused", run_id=run_id, error=first_line(exc))
            return False
        self._written(saved)
        return True

    def _written(self, saved: Sequence[Checkpoint]) -> None:
        if saved:
            self.metrics.checkpoints.labels("written").inc(len(saved))
            self.metrics.checkpoint_bytes.inc(sum(c.size for c in saved))
