"""Runs: batch runs submitted to a queue in the run store, and records of `/invoke` runs.

`RunManager` is what the server holds: it submits, reads, lists, cancels and streams
runs, and starts and stops the parts that move runs along, each a module of its own:

- `execution`: claiming queued runs as workers free up, and running each to its end;
- `leases`: the heartbeat of this process's runs, and the recovery of dead processes' runs;
- `outbox`: delivering the webhooks of ended runs;
- `stream`: the event stream of a run, live or from the store;
- `retention`: deleting old finished runs;
- `recorder`: the write-behind buffer of `/invoke` runs and step events.

A batch run is in the store before its submitter hears 202. `/invoke` runs are written
behind: the request only puts the finished invocation in a buffer, and a flush every
100 ms writes the buffer in one transaction. A crash loses at most the last 100 ms of
`/invoke` records, never a batch run. The same process serves such a run from its buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from service.errors import (
    Conflict,
    IdempotencyKeyReused,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    ValidationFailed,
)
from service.observe.metrics import Metrics
from service.runs.calls import StoreCalls
from service.runs.cursor import CURSOR_PATTERN, decode_cursor, encode_cursor
from service.runs.execution import Dispatcher
from service.runs.leases import LeaseKeeper
from service.runs.model import NewEvent, Run
from service.runs.outbox import WebhookOutbox
from service.runs.recorder import Recorder
from service.runs.records import Deployment, queued_run, render, rerun_request
from service.runs.reruns import check_ended, check_from_step, reused_steps
from service.runs.retention import Retention
from service.runs.store import (
    QueueFull,
    RunStore,
    StoreHealth,
    redact,
)
from service.runs.stream import EventStreams
from service.runs.tasks import BackgroundTasks
from service.runs.waiting import wait_events
from service.runs.webhooks import WebhookSender
from service.sdk.pipeline import Pipeline
from service.sdk.requests import InvokeRequestData, RequestModels
from service.sdk.runner import Runner
from service.settings import Settings
from service.status import is_terminal

__all__ = ["CURSOR_PATTERN", "RunManager", "decode_cursor", "encode_cursor"]

logger = logging.getLogger("pipeserve.runs")

# How long a cancel request waits for the run to stop before answering 202.
CANCEL_WAIT = 5.0
# How long shutdown keeps trying to write the buffer to a database out of reach.
LAST_FLUSH_SECONDS = 3.0


class RunManager:
    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        deployment: Deployment,
        models: RequestModels,
        metrics: Metrics,
        database_url: str,
    ) -> None:
        self.settings = settings
        self.deployment = deployment
        self.store = RunStore(database_url, deployment.name)
        self.health = StoreHealth(on_change=lambda down: metrics.store_up.set(0 if down else 1))
        self._calls = StoreCalls(self.store.is_sqlite, self.health)
        self._tasks = BackgroundTasks()
        self._loops: list[asyncio.Task[Any]] = []
        # Unique per process: the lease owner of the runs this process executes.
        owner = f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        secret = settings.webhook_secret
        self._outbox = (
            WebhookOutbox(
                settings,
                WebhookSender(secret.get_secret_value(), settings.webhook_timeout),
                self.store,
                self._calls,
                self._tasks,
            )
            if secret is not None
            else None
        )
        self.recorder = Recorder(
            self.store,
            deployment,
            settings.max_recorded_output_bytes,
            self._calls.call,
            lambda: self._dispatch.changed_steps(),
            metrics,
        )
        # What /invoke calls with each finished run: the hot path's only cost of recording.
        self.record = self.recorder.record if settings.record_invocations else _not_recorded
        self._dispatch = Dispatcher(
            settings, pipeline, models, self.store, self._calls, self.recorder, metrics,
            self._tasks, owner, self._webhook_due,
        )  # fmt: skip
        self._leases = LeaseKeeper(
            settings, self.store, self._calls, metrics, owner, self._dispatch.active,
            pipeline.resume or pipeline.retry_safe, pipeline.max_attempts,
            requeued=self._dispatch.wake, failed=self._webhook_due,
        )  # fmt: skip
        self._streams = EventStreams(self.store, self._calls, self._dispatch.active)
        # What /invoke calls with each new invocation, if its steps are checkpointed: by
        # default None, and /invoke pays nothing for checkpoints.
        self.checkpoint_invocation = (
            self._dispatch.checkpoints.attach_to_invocation
            if settings.checkpoint_invocations and settings.record_invocations
            else None
        )
        self._retention = Retention(
            settings, self.store, self._calls, self._dispatch.checkpoints.policy.objects
        )

    def _webhook_due(self) -> None:
        if self._outbox is not None:
            self._outbox.wake()

    # -- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        """Migrate the store and start the loops that need no pipeline state."""
        await self._calls.call(self.store.migrate)
        logger.info("run store open", extra={"database": redact(self.store.url)})
        loops = [self.recorder.run(), self._leases.recovery(), self._leases.heartbeat(),
                 self._retention.run()]  # fmt: skip
        if self._outbox is not None:
            loops.append(self._outbox.run())
        self._loops += [self._tasks.spawn(loop) for loop in loops]

    def attach(self, runner: Runner) -> None:
        """`on_init` is done: start claiming queued runs."""
        self._dispatch.runner = runner
        self._loops.append(self._tasks.spawn(self._dispatch.run()))

    def begin_drain(self) -> None:
        self._dispatch.stop_accepting()

    async def close(self, deadline: float) -> None:
        """Stop: let running runs finish until `deadline` (epoch seconds), then interrupt
        the rest; queued runs stay queued in the store for another process."""
        await self._dispatch.drain(deadline)
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.recorder.last_flush(time.time() + LAST_FLUSH_SECONDS)
        if self._outbox is not None:
            await self._outbox.close()
        await self._calls.call(self.store.close)
        self._calls.shutdown()

    # -- submit and cancel ------------------------------------------------------------

    async def submit(
        self,
        data: InvokeRequestData,
        *,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        client: dict[str, Any] | None = None,
    ) -> tuple[Run, bool]:
        """Queue a run; it is in the store when this returns. Returns (run, created)."""
        if not self._dispatch.accepting:
            raise ServiceUnavailable("the server is shutting down", retry_after=1)
        if webhook_url is not None and self._outbox is None:
            raise ValidationFailed(
                "webhook_url: webhooks are signed, and this server has no secret to sign "
                "them with: set PIPESERVE_WEBHOOK_SECRET",
                errors=[{"loc": ["webhook_url"], "msg": "no webhook secret is set",
                         "type": "webhook_secret_missing"}],
            )  # fmt: skip
        run = queued_run(self.deployment, data, webhook_url, idempotency_key, client)
        return await self._queue(run)

    async def retry(
        self, run_id: str, from_step: str | None = None, idempotency_key: str | None = None
    ) -> tuple[Run, bool]:
        """Queue a new run with the request of run `run_id`, which has ended: it restores
        the checkpoints of that run (those before `from_step`, with one) and runs the rest.
        Returns (run, created), as `submit`."""
        if not self._dispatch.accepting:
            raise ServiceUnavailable("the server is shutting down", retry_after=1)
        pipeline = self._dispatch.pipeline
        check_from_step(pipeline, from_step)
        original = await self.require(run_id)
        check_ended(original)
        # 422 if it no longer fits this version's parameters.
        data = self._dispatch.models.parse_invoke_object(rerun_request(original))
        # An `/invoke` run's checkpoints may still be in the write-behind buffer.
        with contextlib.suppress(Exception):
            await self.recorder.flush()
        found = await self._calls.answer(self.store.checkpoint_summaries, run_id)
        reused = reused_steps(pipeline, run_id, from_step, found)
        run = queued_run(
            self.deployment, data, original.webhook_url, idempotency_key,
            original.request.get("client"), retry_of=run_id, from_step=from_step,
        )  # fmt: skip
        return await self._queue(run, (run_id, reused))

    async def _queue(
        self, run: Run, reuse: tuple[str, list[str]] | None = None
    ) -> tuple[Run, bool]:
        first = NewEvent(
            run.run_id, 1, "queued", {"run_id": run.run_id, "status": "queued",
                                      "at": run.created_at}, run.created_at,
        )  # fmt: skip
        try:
            stored, created = await self._calls.answer(
                self.store.submit, run, first, self.settings.max_queued_runs, reuse
            )
        except QueueFull as exc:
            raise TooManyRequests(
                f"the run queue is full: {exc.queued} runs wait; retry later",
                retry_after=max(1, round(self.settings.poll_interval * 5)),
            ) from None
        if not created and stored.request_hash != run.request_hash:
            raise IdempotencyKeyReused(
                f"this Idempotency-Key was used for another request: run {stored.run_id} has it",
                run_id=stored.run_id,
            )
        if created:
            self._dispatch.wake()
        return stored, created

    async def cancel(self, run_id: str) -> tuple[Run, bool]:
        """Cancel a run. Returns (run, done): not done while a sync step must still finish."""
        run = await self.require(run_id)
        if is_terminal(run.status):
            raise Conflict(f"run '{run_id}' has already ended: it {run.status}", status=run.status)
        if run.status == "queued":
            webhook = bool(run.webhook_url) and self._outbox is not None
            if await self._calls.answer(self.store.cancel_queued, run_id, time.time(), webhook):
                if webhook:
                    self._webhook_due()
                return await self.require(run_id), True
        # Recorded first: the process running it, this one or another, acts on it.
        await self._calls.answer(self.store.request_cancel, run_id, time.time())
        active = self._dispatch.active.get(run_id)
        if active is not None:
            active.stop()
            await wait_events([active.done], CANCEL_WAIT)
        else:
            # Another process runs it: it sees the request at its next heartbeat.
            wait_until = time.time() + self.settings.run_lease / 3 + CANCEL_WAIT
            while time.time() < wait_until:
                run = await self.require(run_id)
                if is_terminal(run.status):
                    break
                await asyncio.sleep(0.2)
        run = await self.require(run_id)
        return run, is_terminal(run.status)

    # -- reading --------------------------------------------------------------------

    async def get(self, run_id: str) -> Run | None:
        pending = self.recorder.pending_run(run_id)
        if pending is not None:
            return pending
        run = await self._calls.answer(self.store.get, run_id)
        active = self._dispatch.active.get(run_id)
        if run is not None and active is not None and run.status == "running":
            steps = active.live_steps()
            if steps is not None:
                run = dataclasses.replace(run, steps=steps)
        return run

    async def require(self, run_id: str) -> Run:
        run = await self.get(run_id)
        if run is None:
            raise NotFound(f"no run '{run_id}' in deployment '{self.deployment.name}'")
        return run

    async def list_runs(
        self, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of runs as the API's records, and the cursor of the next page."""
        before = decode_cursor(cursor) if cursor is not None else None
        # This process's own records first, so that the page has them; if the database
        # is out, the read below answers 503.
        with contextlib.suppress(Exception):
            await self.recorder.flush()
        found = await self._calls.answer(self.store.list_runs, status, limit + 1, before)
        next_cursor = None
        if len(found) > limit:
            found = found[:limit]
            last = found[-1]
            assert last.seq is not None  # read from the store
            next_cursor = encode_cursor(last.created_at, last.seq)
        return [render(r, with_outputs=False) for r in found], next_cursor

    async def events(self, run: Run, after: int) -> AsyncIterator[NewEvent]:
        """The run's events after `after`: the past ones, then live ones until its end.
        `run` as `require` read it (the caller's 404 comes before the stream starts)."""
        async for event in self._streams.follow(run, after):
            yield event


def _not_recorded(*args: Any) -> None:
    """`record` with `--no-record-invocations`."""
