"""Runs: batch runs submitted to a queue in the run store, and records of `/invoke` runs.

A batch run is in the store before its submitter hears 202. Each process claims queued
runs as it has free workers (`run_workers`), holding a lease on each that a heartbeat
renews; a process that dies stops renewing, and once the lease expires any process fails
the run as `interrupted`, or requeues it when the pipeline is `retry_safe`. So a run is
never lost, and never left `running` forever, with one process or many sharing PostgreSQL.

`/invoke` runs are written behind: the request only puts the finished invocation in a
buffer, and a flush every 100 ms writes the buffer in one transaction (serializing the
outputs there, not on the request). A crash loses at most the last 100 ms of `/invoke`
records, never a batch run. The same process serves such a run from its buffer at once.

Step events of batch runs take the same buffer, in order; a run's end is written only
after its step events, with its terminal event in the same transaction.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import math
import os
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from service.errors import (
    Conflict,
    IdempotencyKeyReused,
    NotFound,
    ServiceUnavailable,
    StoreUnavailable,
    TooManyRequests,
    ValidationFailed,
)
from service.observe.metrics import Metrics
from service.runs.recorder import Recorder
from service.runs.records import (
    Deployment,
    finished_values,
    invocation_events,
    render,
    request_document,
)
from service.runs.records import step_records as live_steps
from service.runs.store import (
    PRUNE_BATCH,
    TERMINAL,
    NewEvent,
    QueueFull,
    RunStore,
    StoreHealth,
    interrupted_values,
    is_transient,
    redact,
    request_hash,
    webhook_due,
)
from service.runs.webhooks import WebhookSender, backoff
from service.sdk.pipeline import Pipeline
from service.sdk.runner import Invocation, Runner, StepEvent, new_run_id
from service.sdk.serialize import dumps
from service.server.schema import InvokeRequestData, RequestModels
from service.settings import Settings

logger = logging.getLogger("pipeserve.runs")

T = TypeVar("T")

# How often a stream of a run that another process executes looks at the store.
STREAM_POLL = 0.5
# How long a cancel request waits for the run to stop before answering 202.
CANCEL_WAIT = 5.0
# A request's store call is tried this many times, this long apart, before a 503.
STORE_RETRIES = (0.1, 0.3, 0.6)
# What a 503 for an unreachable store asks the client to wait.
STORE_RETRY_AFTER = 5
# How long shutdown keeps trying to write the buffer to a database out of reach.
LAST_FLUSH_SECONDS = 3.0
# The longest wait between two tries of a batch run's final write.
MAX_FINAL_WRITE_BACKOFF = 5.0
# Store calls at once on PostgreSQL (SQLite: one, see `RunManager`).
STORE_THREADS = 4
# Between two pruning transactions: the store calls queued behind one run before the next.
PRUNE_PAUSE = 0.05
# The request fields a stored run is validated and run with again.
_REQUEST_FIELDS = ("parameters", "steps", "until", "timeout")


@dataclass(eq=False)
class ActiveRun:
    """A batch run this process executes: its live events, for streams and the store."""

    run_id: str
    webhook_url: str | None
    next_event_id: int
    # The attempt this process claimed: its own end replaces a recovery guess of it.
    attempt: int | None = None
    events: list[NewEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    invocation: Invocation | None = None
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
        if self.task is not None:
            self.task.cancel()


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
        self.pipeline = pipeline
        self.deployment = deployment
        self.models = models
        self.metrics = metrics
        self.store = RunStore(database_url, deployment.name)
        self.health = StoreHealth(on_change=lambda down: metrics.store_up.set(0 if down else 1))
        # Unique per process: the lease owner of the runs this process executes.
        self.owner = f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.runner: Runner | None = None
        self.active: dict[str, ActiveRun] = {}
        # SQLite takes one writer at a time; with one thread, its only connection keeps its
        # page cache (another connection's write empties it) and its memory in one malloc
        # arena. Four threads, each with a connection, made SQLite's pages churn through
        # four arenas, which kept ~15 MiB of free holes after 10 minutes (the soak).
        threads = 1 if self.store.is_sqlite else STORE_THREADS
        self._db = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pipeserve-store")
        self.recorder = Recorder(
            self.store,
            deployment,
            settings.max_recorded_output_bytes,
            self._call,
            self._changed_steps,
            metrics,
            self.health,
        )
        # What /invoke calls with each finished run: the hot path's only cost of recording.
        self.record = self.recorder.record if settings.record_invocations else _not_recorded
        self._slots = asyncio.Semaphore(settings.run_workers)
        self._work = asyncio.Event()
        self._maintenance = asyncio.Event()
        self._accepting = True
        self._loops: list[asyncio.Task[Any]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        secret = settings.webhook_secret
        self._webhooks = (
            WebhookSender(secret.get_secret_value(), settings.webhook_timeout)
            if secret is not None
            else None
        )

    # -- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        """Migrate the store and start the loops that need no pipeline state."""
        await self._call(self.store.migrate)
        logger.info("run store open", extra={"database": redact(self.store.url)})
        self._loops += [
            self._spawn(self.recorder.run()),
            self._spawn(self._maintenance_loop()),
            self._spawn(self._heartbeat_loop()),
            self._spawn(self._retention_loop()),
        ]

    def attach(self, runner: Runner) -> None:
        """`on_init` is done: start claiming queued runs."""
        self.runner = runner
        self._loops.append(self._spawn(self._dispatch_loop()))

    def begin_drain(self) -> None:
        self._accepting = False
        self._work.set()

    async def close(self, deadline: float) -> None:
        """Stop: let running runs finish until `deadline` (epoch seconds), then interrupt
        the rest; queued runs stay queued in the store for another process."""
        self.begin_drain()
        running = [a for a in self.active.values() if not a.finished]
        if running:
            await _wait_events([a.done for a in running], max(0.0, deadline - time.time()))
        for active in self.active.values():
            if not active.done.is_set():
                logger.warning("interrupting run at shutdown", extra={"run_id": active.run_id})
                active.stop(interrupted=True)
        await _wait_events([a.done for a in running], 10.0)
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self._last_flush(time.time() + LAST_FLUSH_SECONDS)
        if self._webhooks is not None:
            await self._webhooks.close()
        await self._call(self.store.close)
        self._db.shutdown(wait=False)

    async def _last_flush(self, give_up_at: float) -> None:
        """Write what the buffer holds before the process exits; through a short outage
        of the database too, but never past `give_up_at`."""
        wait = 0.1
        while True:
            try:
                await self.flush()
                return
            except Exception as exc:
                if not is_transient(exc) or time.time() + wait > give_up_at:
                    logger.error(
                        "could not write the last run records at shutdown; they are lost",
                        extra={"error": str(exc).splitlines()[0] if str(exc) else repr(exc)},
                    )
                    return
                await asyncio.sleep(wait)
                wait = min(1.0, wait * 2)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _call(self, func: Callable[..., T], *args: Any) -> T:
        """A blocking store call, in the store's threads; its outcome is the store's health."""
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._db, functools.partial(func, *args))
        except Exception as exc:
            if is_transient(exc):
                self.health.failed(exc)
            raise
        self.health.ok()
        return result

    async def _store(self, func: Callable[..., T], *args: Any) -> T:
        """A store call a request waits on: a database out of reach is tried again a few
        times, then answered 503 with `Retry-After`, never 500."""
        for wait in (*STORE_RETRIES, None):
            try:
                return await self._call(func, *args)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if wait is None:
                    raise StoreUnavailable(
                        "the run store is out of reach; retry later (/invoke still serves)",
                        retry_after=STORE_RETRY_AFTER,
                    ) from None
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _until_written(self, func: Callable[..., T], *args: Any) -> T:
        """A write that must not be lost (a batch run's end): tried again, with backoff,
        for as long as the database stays out of reach and this process lives."""
        return await self._until_done(functools.partial(self._call, func, *args))

    async def _until_done(self, attempt: Callable[[], Awaitable[T]]) -> T:
        wait = 0.1
        while True:
            try:
                return await attempt()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                await asyncio.sleep(wait)
                wait = min(MAX_FINAL_WRITE_BACKOFF, wait * 2)

    # -- /invoke records ------------------------------------------------------------

    async def flush(self) -> None:
        await self.recorder.flush()

    def _changed_steps(self) -> dict[str, dict[str, Any]]:
        changed: dict[str, dict[str, Any]] = {}
        for run_id, active in self.active.items():
            if active.dirty and active.invocation is not None and not active.finished:
                active.dirty = False
                changed[run_id] = live_steps(active.invocation)
        return changed

    # -- submit ---------------------------------------------------------------------

    async def submit(
        self,
        data: InvokeRequestData,
        *,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        client: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Queue a run; it is in the store when this returns. Returns (run row, created)."""
        if not self._accepting:
            raise ServiceUnavailable("the server is shutting down", retry_after=1)
        if webhook_url is not None and self._webhooks is None:
            raise ValidationFailed(
                "webhook_url: webhooks are signed, and this server has no secret to sign "
                "them with: set PIPESERVE_WEBHOOK_SECRET",
                errors=[{"loc": ["webhook_url"], "msg": "no webhook secret is set",
                         "type": "webhook_secret_missing"}],
            )  # fmt: skip
        now = time.time()
        run_id = new_run_id()
        document = request_document(data, client=client)
        row = {
            "run_id": run_id,
            "deployment_name": self.deployment.name,
            "pipeline_name": self.deployment.pipeline_name,
            "pipeline_version": self.deployment.pipeline_version,
            "kind": "batch",
            "status": "queued",
            "request": document,
            "parameters_used": data.parameters,
            "idempotency_key": idempotency_key,
            "request_hash": request_hash({**document, "webhook_url": webhook_url}),
            "webhook_url": webhook_url,
            "created_at": now,
            "updated_at": now,
        }
        first = NewEvent(
            run_id, 1, "queued", {"run_id": run_id, "status": "queued", "at": now}, now
        )
        try:
            stored, created = await self._store(
                self.store.submit, row, first, self.settings.max_queued_runs
            )
        except QueueFull as exc:
            raise TooManyRequests(
                f"the run queue is full: {exc.queued} runs wait; retry later",
                retry_after=max(1, round(self.settings.poll_interval * 5)),
            ) from None
        if not created and stored["request_hash"] != row["request_hash"]:
            raise IdempotencyKeyReused(
                f"this Idempotency-Key was used for another request: run {stored['run_id']} has it",
                run_id=stored["run_id"],
            )
        if created:
            self._work.set()
        return stored, created

    # -- execution ------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while self._accepting:
            await self._slots.acquire()
            row = None
            try:
                if self._accepting:
                    row = await self._call(
                        self.store.claim_next, self.owner, time.time(), self.settings.run_lease
                    )
            except Exception as exc:
                if not is_transient(exc):
                    logger.exception("claiming a queued run failed; will retry")
            if row is None:
                self._slots.release()
                await _wait_and_clear(self._work, self.settings.poll_interval)
                continue
            self._spawn(self._execute(row))

    async def _execute(self, row: dict[str, Any]) -> None:
        """Run a claimed run to its end; the worker slot is freed when its threads end."""
        run_id = row["run_id"]
        active = ActiveRun(
            run_id, row.get("webhook_url"), row["next_event_id"], attempt=row.get("attempt")
        )
        self.active[run_id] = active
        inv: Invocation | None = None
        try:
            stored_request = {k: v for k, v in row["request"].items() if k in _REQUEST_FIELDS}
            try:
                data = self.models.parse_invoke_object(stored_request)
            except ValidationFailed as exc:
                # Stored under an older version of the pipeline, whose parameters differ.
                await self._end(active, _failed_values(row, exc.body()))
                return
            assert self.runner is not None
            loop = asyncio.get_running_loop()
            inv = self.runner.invocation(
                data, run_id=run_id, listener=functools.partial(self._listener, loop, active)
            )
            active.invocation = inv
            deadline = data.timeout or self.settings.run_timeout
            inner = active.task = asyncio.create_task(self.runner.run(inv))
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
            if active.interrupted:
                await self._interrupt(active, inv)
            else:
                await self._end(
                    active,
                    finished_values(inv, self.settings.max_recorded_output_bytes, deadline),
                    inv,
                )
        except Exception:
            logger.exception("a batch run could not be recorded", extra={"run_id": run_id})
        finally:
            active.finished = True
            active.done.set()
            self.active.pop(run_id, None)
            if inv is not None:
                # As for /invoke: `run_workers` stays true while a sync step outlives its run.
                inv.release_when_threads_end(self._slots, self._spawn)
            else:
                self._slots.release()

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
        self._emit(active, event.kind, data, event.at)
        active.dirty = True

    def _emit(self, active: ActiveRun, kind: str, data: dict[str, Any], at: float) -> NewEvent:
        new = NewEvent(active.run_id, active.next_event_id, kind, data, at)
        active.next_event_id += 1
        self.recorder.add_event(new)
        active.emit(new)
        return new

    async def _end(
        self, active: ActiveRun, values: dict[str, Any], inv: Invocation | None = None
    ) -> None:
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
        await self._until_done(self.recorder.flush)
        written = await self._until_written(
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
            self._maintenance.set()

    async def _interrupt(self, active: ActiveRun, inv: Invocation) -> None:
        """Shutdown caught the run unfinished: requeue it if safe, else fail it."""
        await self._until_done(self.recorder.flush)
        if self.pipeline.retry_safe:
            await self._until_written(self.store.release, active.run_id, self.owner, time.time())
            return
        values = interrupted_values(time.time(), inv.started_at, live_steps(inv), webhook=False)
        await self._end(active, values, inv)

    # -- leases, recovery, webhooks, retention ----------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.run_lease / 3)
            # Finished runs too, while their end waits to be written (the database is out).
            mine = list(self.active)
            if not mine:
                continue
            try:
                cancel, lost = await self._call(
                    self.store.renew_leases, self.owner, mine, time.time(), self.settings.run_lease
                )
            except Exception as exc:
                if not is_transient(exc):
                    logger.exception("renewing run leases failed; will retry")
                continue
            for run_id in cancel | lost:
                active = self.active.get(run_id)
                if active is not None and not active.finished:
                    if run_id in lost:
                        logger.warning(
                            "lost the lease of a run (this process stalled); stopping it here",
                            extra={"run_id": run_id},
                        )
                        active.lost = True
                    active.stop()

    async def _retention_loop(self) -> None:
        while True:
            try:
                pruned = await self._prune(time.time())
            except Exception as exc:
                pruned = 0
                if not is_transient(exc):
                    logger.exception("pruning finished runs failed; will retry")
            if pruned:
                logger.info("pruned finished runs", extra={"pruned": pruned})
            await asyncio.sleep(self.settings.retention_interval)

    async def _prune(self, now: float) -> int:
        """Delete what retention says, a batch a transaction, pausing between batches so
        that the flush and submits never wait behind the whole of it."""
        finished_before = now - self.settings.retention_days * 86400
        cutoff = await self._call(self.store.prune_cutoff, self.settings.retention_max_runs)
        pruned = 0
        while True:
            deleted = await self._call(self.store.prune, finished_before, cutoff)
            pruned += deleted
            if deleted < PRUNE_BATCH:
                return pruned
            await asyncio.sleep(PRUNE_PAUSE)

    async def _maintenance_loop(self) -> None:
        while True:
            try:
                await self._maintain()
            except Exception as exc:
                if not is_transient(exc):
                    logger.exception("run store maintenance failed; will retry")
            await _wait_and_clear(self._maintenance, self.settings.poll_interval)

    async def _maintain(self) -> None:
        now = time.time()
        requeued, failed = await self._call(
            self.store.recover_expired, now, self.pipeline.retry_safe, self.owner
        )
        for run_id in requeued:
            logger.warning("requeued a run whose process died", extra={"run_id": run_id})
        for run_id in failed:
            logger.warning("failed a run whose process died", extra={"run_id": run_id})
            self.metrics.count_run("failed")
        if requeued:
            self._work.set()
        if self._webhooks is not None:
            hold = self.settings.webhook_timeout * 2 + 5
            for row in await self._call(self.store.claim_webhooks, now, hold):
                self._spawn(self._deliver(row))

    async def _deliver(self, row: dict[str, Any]) -> None:
        assert self._webhooks is not None
        attempts = list(row.get("webhook_attempts") or [])
        attempt = len(attempts) + 1
        outcome = await self._webhooks.send(
            row["webhook_url"],
            dumps(render(row)),
            event=f"run.{row['status']}",
            delivery=f"{row['run_id']}.{attempt}",
            attempt=attempt,
        )
        attempts.append(outcome.as_record())
        next_at: float | None = None
        if outcome.delivered:
            status = "delivered"
        elif attempt >= self.settings.webhook_max_attempts:
            status = "failed"
            logger.warning(
                "webhook delivery failed for good",
                extra={"run_id": row["run_id"], "attempts": attempt, "error": outcome.error},
            )
        else:
            status = "pending"
            wait = backoff(attempt)
            next_at = time.time() + wait
            asyncio.get_running_loop().call_later(wait, self._maintenance.set)
        await self._call(self.store.record_webhook, row["run_id"], attempts, status, next_at)

    # -- reading --------------------------------------------------------------------

    async def get(self, run_id: str) -> dict[str, Any] | None:
        pending = self.recorder.pending_row(run_id)
        if pending is not None:
            return pending
        row = await self._store(self.store.get, run_id)
        active = self.active.get(run_id)
        if row is not None and active is not None and active.invocation is not None:
            if row["status"] == "running" and not active.finished:
                row["steps"] = live_steps(active.invocation)
        return row

    async def require(self, run_id: str) -> dict[str, Any]:
        row = await self.get(run_id)
        if row is None:
            raise NotFound(f"no run '{run_id}' in deployment '{self.deployment.name}'")
        return row

    async def list_runs(
        self, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        before = decode_cursor(cursor) if cursor is not None else None
        # This process's own records first, so that the page has them; if the database
        # is out, the read below answers 503.
        with contextlib.suppress(Exception):
            await self.flush()
        rows = await self._store(self.store.list_runs, status, limit + 1, before)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["seq"]) if more else None
        return [render(r, with_outputs=False) for r in rows], next_cursor

    async def cancel(self, run_id: str) -> tuple[dict[str, Any], bool]:
        """Cancel a run. Returns (run, done): not done while a sync step must still finish."""
        row = await self.require(run_id)
        if row["status"] in TERMINAL:
            raise Conflict(f"run '{run_id}' has already ended: it {row['status']}",
                           status=row["status"])  # fmt: skip
        if row["status"] == "queued":
            webhook = bool(row.get("webhook_url")) and self._webhooks is not None
            if await self._store(self.store.cancel_queued, run_id, time.time(), webhook):
                if webhook:
                    self._maintenance.set()
                return await self.require(run_id), True
        # Recorded first: the process running it, this one or another, acts on it.
        await self._store(self.store.request_cancel, run_id, time.time())
        active = self.active.get(run_id)
        if active is not None:
            active.stop()
            await _wait_events([active.done], CANCEL_WAIT)
        else:
            # Another process runs it: it sees the request at its next heartbeat.
            wait_until = time.time() + self.settings.run_lease / 3 + CANCEL_WAIT
            while time.time() < wait_until:
                row = await self.require(run_id)
                if row["status"] in TERMINAL:
                    break
                await asyncio.sleep(0.2)
        row = await self.require(run_id)
        return row, row["status"] in TERMINAL

    async def events(self, run_id: str, after: int) -> AsyncIterator[NewEvent]:
        """The run's events after `after`: the past ones, then live ones until its end."""
        row = await self.require(run_id)
        if row["kind"] == "invoke":
            for event in invocation_events(row):
                if event.event_id > after:
                    yield event
            return
        last = after
        replayed = False
        while True:
            active = self.active.get(run_id)
            waiter = active.changed if active is not None else None
            if active is None or not replayed:
                stored = await self._store(self.store.events_after, run_id, last)
                for event in stored:
                    yield event
                    last = event.event_id
                # A terminal event followed by others was lease recovery's guess, which
                # the run's own end replaced: the stream ends with the last word.
                if stored and stored[-1].kind in TERMINAL:
                    return
                # Ended before the stream began, and nothing after `after` (a Last-Event-ID
                # at or past its end): nothing more will come.
                if not stored and active is None and row["status"] in TERMINAL:
                    return
                replayed = True
            if active is not None:
                for event in list(active.events):
                    if event.event_id > last:
                        yield event
                        last = event.event_id
                        if event.kind in TERMINAL:
                            return
                if active.finished and active.done.is_set():
                    replayed = False  # read the store once more for the end
                    continue
            if waiter is not None:
                await _wait_events([waiter], STREAM_POLL * 4)
            else:
                await asyncio.sleep(STREAM_POLL)


def _not_recorded(*args: Any) -> None:
    """`record` with `--no-record-invocations`."""


def encode_cursor(created_at: float, seq: int) -> str:
    """Opaque to clients: where the next page starts."""
    return base64.urlsafe_b64encode(f"{created_at!r}:{seq}".encode()).decode().rstrip("=")


# What encode_cursor makes: unpadded URL-safe base64 of `<created_at>:<seq>`.
CURSOR_PATTERN = "^[A-Za-z0-9_-]{1,128}$"
_CURSOR = re.compile(CURSOR_PATTERN)
_SEQ_MAX = 2**63 - 1  # the store's BIGINT


def decode_cursor(cursor: str) -> tuple[float, int]:
    """A cursor's place; 422 `cursor` for one this server did not give out: the values
    bound to SQL are a finite float and a sequence number from 0 to 2**63-1."""
    try:
        if not _CURSOR.fullmatch(cursor):
            raise ValueError(cursor)
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_text, seq_text = text.split(":")
        created, seq = float(created_text), int(seq_text)
        if not math.isfinite(created) or not 0 <= seq <= _SEQ_MAX:
            raise ValueError(text)
        return created, seq
    except ValueError:
        raise ValidationFailed(
            "cursor: not a cursor this server gave out",
            errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "cursor"}],
        ) from None


def _failed_values(row: dict[str, Any], error: dict[str, Any]) -> dict[str, Any]:
    now = time.time()
    return {
        "status": "failed",
        "error": error,
        "finished_at": now,
        "updated_at": now,
        "duration": 0.0,
        "steps": {},
    }


async def _wait_and_clear(event: asyncio.Event, timeout: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        pass
    event.clear()


async def _wait_events(waiting: list[asyncio.Event], timeout: float) -> None:
    pending = [e for e in waiting if not e.is_set()]
    if not pending:
        return
    tasks = [asyncio.ensure_future(e.wait()) for e in pending]
    try:
        await asyncio.wait(tasks, timeout=timeout)
    finally:
        for task in tasks:
            task.cancel()
