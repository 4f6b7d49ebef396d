"""The event stream of a run: its past events, then live ones until its end.

A run this process executes streams from memory as its events happen; a run another
process executes streams from the store, polled. An `/invoke` run keeps no events: its
story is told from its record.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

from service.runs.calls import StoreCalls
from service.runs.execution import ActiveRun
from service.runs.model import NewEvent, Run
from service.runs.records import invocation_events
from service.runs.store import RunStore
from service.runs.waiting import wait_events
from service.status import is_terminal

# How often a stream of a run that another process executes looks at the store.
STREAM_POLL = 0.5


class EventStreams:
    def __init__(self, store: RunStore, calls: StoreCalls, active: Mapping[str, ActiveRun]):
        self.store = store
        self.calls = calls
        # The runs this process executes (the dispatcher's).
        self.active = active

    async def follow(self, run: Run, after: int) -> AsyncIterator[NewEvent]:
        """The run's events after `after`: the past ones, then live ones until its end."""
        if run.kind == "invoke":
            for event in invocation_events(run):
                if event.event_id > after:
                    yield event
            return
        run_id = run.run_id
        last = after
        replayed = False
        while True:
            active = self.active.get(run_id)
            waiter = active.changed if active is not None else None
            if active is None or not replayed:
                stored = await self.calls.answer(self.store.events_after, run_id, last)
                for event in stored:
                    yield event
                    last = event.event_id
                # A terminal event followed by others was lease recovery's guess, which
                # the run's own end replaced: the stream ends with the last word.
                if stored and is_terminal(stored[-1].kind):
                    return
                # Ended before the stream began, and nothing after `after` (a Last-Event-ID
                # at or past its end): nothing more will come.
                if not stored and active is None and is_terminal(run.status):
                    return
                replayed = True
            if active is not None:
                for event in list(active.events):
                    if event.event_id > last:
                        yield event
                        last = event.event_id
                        if is_terminal(event.kind):
                            return
                if active.finished and active.done.is_set():
                    replayed = False  # read the store once more for the end
                    continue
            if waiter is not None:
                await wait_events([waiter], STREAM_POLL * 4)
            else:
                await asyncio.sleep(STREAM_POLL)
