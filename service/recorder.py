"""The write-behind buffer of the run store: what a flush every 100 ms writes at once.

It holds finished `/invoke` runs (their rows are built, outputs serialized, in the store's
thread, not on the request) and the step events of batch runs, in order. A flush writes
both, with the step records of running batch runs, in one transaction; when it fails, the
buffer keeps what it held for the next one. A crash loses at most one interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .records import Deployment, invocation_row
from .runner import Invocation
from .schema import InvokeRequestData
from .store import NewEvent, RunStore

logger = logging.getLogger("pipeserve.runs")

FLUSH_INTERVAL = 0.1
# Past this many unwritten `/invoke` records (the store is down), the oldest are dropped.
MAX_BUFFERED = 10_000

# A finished `/invoke` run: its invocation, request, deadline and step records.
Entry = tuple[Invocation, InvokeRequestData, "float | None", "dict[str, dict[str, Any]]"]
# Runs the blocking store call in the store's threads.
Call = Callable[..., Awaitable[Any]]


class Recorder:
    def __init__(
        self,
        store: RunStore,
        deployment: Deployment,
        max_output_bytes: int,
        call: Call,
        progress: Callable[[], Mapping[str, dict[str, Any]]],
    ) -> None:
        self.store = store
        self.deployment = deployment
        self.max_output_bytes = max_output_bytes
        self._call = call
        # Step records of running batch runs that changed since the last flush.
        self._progress = progress
        self._recorded: dict[str, Entry] = {}
        self._writing: dict[str, Entry] = {}
        self._events: list[NewEvent] = []
        self._lock = asyncio.Lock()
        self._dropped = 0

    def record(
        self,
        inv: Invocation,
        data: InvokeRequestData,
        deadline: float | None,
        steps: dict[str, dict[str, Any]],
    ) -> None:
        """Keep a finished `/invoke` run for the next flush: the hot path's only cost."""
        if len(self._recorded) >= MAX_BUFFERED:
            self._recorded.pop(next(iter(self._recorded)))
            self._dropped += 1
            if self._dropped % 1000 == 1:
                logger.error(
                    "the run store is not keeping up: /invoke records dropped",
                    extra={"dropped": self._dropped},
                )
        self._recorded[inv.run_id] = (inv, data, deadline, steps)

    def add_event(self, event: NewEvent) -> None:
        self._events.append(event)

    def pending_row(self, run_id: str) -> dict[str, Any] | None:
        """An `/invoke` run not written yet, as the store will have it."""
        entry = self._recorded.get(run_id) or self._writing.get(run_id)
        return self._row(entry) if entry is not None else None

    def _row(self, entry: Entry) -> dict[str, Any]:
        inv, data, deadline, steps = entry
        return invocation_row(
            inv, data, self.deployment, self.max_output_bytes, deadline, steps=steps
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                await self.flush()
            except Exception:
                logger.exception("writing run records failed; will retry")
                await asyncio.sleep(1.0)

    async def flush(self) -> None:
        """Write what the buffer holds, in one transaction; on failure keep it for a retry."""
        async with self._lock:
            recorded, self._recorded = self._recorded, {}
            new_events, self._events = self._events, []
            progress = dict(self._progress())
            if not (recorded or new_events or progress):
                return
            self._writing = recorded
            try:
                # Rows are built here, on the event loop, in one go: in the store's thread
                # this Python work would contend for the GIL with the requests being served.
                rows = [self._row(entry) for entry in recorded.values()]
                await self._call(self.store.write_batch, rows, new_events, progress, time.time())
            except BaseException:
                self._recorded = {**recorded, **self._recorded}
                self._events = new_events + self._events
                raise
            finally:
                self._writing = {}
