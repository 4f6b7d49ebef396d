"""The checkpoints of one batch run: each finished step's outputs are encoded (in the
worker thread that ran the step), then written with the step's `step_finished` event in
one transaction, before any step that consumes them starts; and, when the run resumes,
read back and restored.

A checkpoint that cannot be made (no allowed form, beyond `max_checkpoint_bytes`, the
object store failing) is skipped, logged and counted: the run goes on, and a resumed run
runs that step again. A database out of reach holds an attempt back at most one lease:
then its checkpoints stay in the write-behind buffer, written by a later flush.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from service.observe.metrics import Metrics
from service.runs.calls import StoreCalls, until_done
from service.runs.checkpoint_formats import CheckpointUnreadable, decode, encode, least_size
from service.runs.checkpoint_objects import ObjectStore
from service.runs.model import Checkpoint, Run, RunEnd
from service.runs.recorder import Recorder
from service.runs.store import RunStore, version_changed
from service.sdk.invocation import CheckpointInfo, Invocation, StepEvent, StepRecord
from service.sdk.pipeline import Pipeline
from service.settings import Settings

logger = logging.getLogger("pipeserve.runs")


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """What the settings say of checkpoints, for every run of this process."""

    max_bytes: int
    pickle: bool
    inline_bytes: int
    objects: ObjectStore | None

    @classmethod
    def of(cls, settings: Settings) -> CheckpointPolicy:
        url = settings.checkpoint_url
        return cls(
            max_bytes=settings.max_checkpoint_bytes,
            pickle=settings.checkpoint_pickle,
            inline_bytes=settings.checkpoint_inline_bytes,
            objects=ObjectStore(url) if url else None,
        )


class RunCheckpointer:
    """The `Checkpointer` of one attempt at a batch run (see `service.sdk.invocation`)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        policy: CheckpointPolicy,
        recorder: Recorder,
        metrics: Metrics,
        run_id: str,
        attempt: int,
        pipeline_version: str,
        emit: Callable[[StepEvent], None],
        current: Callable[[], bool],
        give_up_after: float,
        blocking: bool = True,
    ) -> None:
        self.loop = loop
        # False for an /invoke run's: no attempt resumes it, so no step waits for a write.
        self.blocking = blocking
        self.policy = policy
        self.recorder = recorder
        self.metrics = metrics
        self.run_id = run_id
        self.attempt = attempt
        self.pipeline_version = pipeline_version
        # The run's stream and buffer take the step events: on the loop, so in order.
        self._emit = emit
        # False once this attempt's end was decided (timed out, stopped, taken over): a
        # step that returns after that must not leave a checkpoint for the next attempt.
        self._current = current
        self._give_up_after = give_up_after
        # A database out of reach holds the attempt back once, not at every step.
        self._gave_up = False
        self._waits: set[asyncio.Task[None]] = set()

    def save(
        self, event: StepEvent, record: StepRecord, values: tuple[object, ...], consumed: bool
    ) -> None:
        try:
            checkpoint = self._encode(event.step, record, values)
            if consumed and self.blocking:
                asyncio.run_coroutine_threadsafe(self._store(event, checkpoint), self.loop).result()
            else:
                self.loop.call_soon_threadsafe(self._buffer, event, checkpoint)
        except concurrent.futures.CancelledError:
            pass  # the run was stopped: the checkpoint stays in the buffer
        except Exception:
            logger.exception("checkpointing a step failed", extra={"run_id": self.run_id})

    async def save_async(
        self, event: StepEvent, record: StepRecord, values: tuple[object, ...], consumed: bool
    ) -> None:
        try:
            checkpoint = await asyncio.to_thread(self._encode, event.step, record, values)
        except Exception:
            logger.exception("checkpointing a step failed", extra={"run_id": self.run_id})
            checkpoint = None
        if consumed and self.blocking:
            await self._store(event, checkpoint)
        else:
            self._buffer(event, checkpoint)

    def stop(self) -> None:
        """The run stops: no step waits for its checkpoint any more (on the loop)."""
        for wait in self._waits:
            wait.cancel()

    def _buffer(self, event: StepEvent, checkpoint: Checkpoint | None) -> None:
        """The event, and the checkpoint with it, for the next flush: the run's end waits
        for that flush, so a last step's checkpoint costs no transaction of its own."""
        if not self._current():
            return
        self._emit(event)
        if checkpoint is not None:
            self.recorder.add_checkpoint(checkpoint)

    def _skip(self, reason: str, step: str, **extra: object) -> None:
        self.metrics.checkpoints.labels(reason).inc()
        logger.warning(
            "step not checkpointed (%s): a resumed run runs it again",
            reason,
            extra={"run_id": self.run_id, "step": step, **extra},
        )

    def _encode(
        self, step: str, record: StepRecord, values: tuple[object, ...]
    ) -> Checkpoint | None:
        """The step's checkpoint, or None (skipped); in a worker thread."""
        policy = self.policy
        least = least_size(values)
        if least > policy.max_bytes:
            self._skip("too_large", step, bytes=least, limit=policy.max_bytes)
            return None
        encoded = encode(values, allow_pickle=policy.pickle)
        if encoded is None:
            self._skip("unencodable", step)
            return None
        if encoded.size > policy.max_bytes:
            self._skip("too_large", step, bytes=encoded.size, limit=policy.max_bytes)
            return None
        data: bytes | None = encoded.data
        location = None
        if policy.objects is not None and encoded.size > policy.inline_bytes:
            try:
                location = policy.objects.put(f"{self.run_id}/{step}.{self.attempt}", encoded.data)
            except Exception:
                logger.exception("the object store refused a checkpoint")
                self._skip("object_store_failed", step)
                return None
            data = None
        record.checkpoint = CheckpointInfo(encoded.formats, encoded.size)
        return Checkpoint(
            run_id=self.run_id,
            step=step,
            attempt=self.attempt,
            pipeline_version=self.pipeline_version,
            formats=list(encoded.formats),
            sizes=list(encoded.sizes),
            created_at=time.time(),
            data=data,
            location=location,
        )

    async def _store(self, event: StepEvent, checkpoint: Checkpoint | None) -> None:
        """The `step_finished` event, and the checkpoint with it, written; on the loop."""
        self._buffer(event, checkpoint)
        if checkpoint is None or self._gave_up or not self._current():
            return
        wait = asyncio.current_task()
        assert wait is not None
        self._waits.add(wait)
        try:
            await until_done(
                self.recorder.flush, give_up_at=time.time() + self._give_up_after, max_wait=1.0
            )
        except Exception:
            # Kept in the buffer (the database is out of reach): a later flush writes it.
            self._gave_up = True
            logger.warning(
                "a checkpoint waits for the run store; the run goes on",
                extra={"run_id": self.run_id, "step": event.step},
            )
        finally:
            self._waits.discard(wait)


def restore(
    inv: Invocation, pipeline: Pipeline, found: list[Checkpoint], policy: CheckpointPolicy
) -> int:
    """Load a run's checkpoints into its invocation (blocking: a worker thread's); returns
    how many steps were restored. One that does not load is left to run again, and so
    is every step after it."""
    for checkpoint in found:
        node = pipeline.steps_by_name.get(checkpoint.step)
        if node is None or not node.step.checkpoint:
            continue
        try:
            if "pickle" in checkpoint.formats and not policy.pickle:
                raise CheckpointUnreadable("it is a pickle, and checkpoint_pickle is off")
            data = checkpoint.data
            objects = policy.objects
            if data is None:
                if objects is None or checkpoint.location is None:
                    raise CheckpointUnreadable("stored in an object store this server lacks")
                data = objects.get(checkpoint.location)
            values = decode(checkpoint.formats, checkpoint.sizes, data)
            if len(values) != len(node.step.output_names):
                raise CheckpointUnreadable("its values do not match the step's outputs")
        except Exception as exc:
            logger.warning(
                "a checkpoint could not be restored; its step runs again: %s",
                exc,
                extra={"run_id": inv.run_id, "step": checkpoint.step},
            )
            continue
        info = CheckpointInfo(tuple(checkpoint.formats), checkpoint.size)
        inv.restore(node.index, checkpoint.step, values, checkpoint.attempt, info)
    nodes = pipeline.steps
    return inv.settle_restored([n.upstream for n in nodes], [n.name for n in nodes])


class Checkpoints:
    """The checkpoints of this process's batch runs: what the settings allow, and
    resuming a run from what its earlier attempts (or the run it retries) stored."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        store: RunStore,
        calls: StoreCalls,
        recorder: Recorder,
        metrics: Metrics,
    ) -> None:
        self.policy = CheckpointPolicy.of(settings)
        self.pipeline = pipeline
        self.store = store
        self.calls = calls
        self.recorder = recorder
        self.metrics = metrics
        # How long a step waits for its checkpoint to be written (the database is out).
        self._give_up_after = settings.run_lease

    def attach(
        self,
        inv: Invocation,
        run: Run,
        loop: asyncio.AbstractEventLoop,
        emit: Callable[[StepEvent], None],
        current: Callable[[], bool],
    ) -> RunCheckpointer:
        """Checkpoint the steps this attempt at `run` finishes."""
        checkpointer = inv.checkpointer = RunCheckpointer(
            loop, self.policy, self.recorder, self.metrics, run.run_id, run.attempt,
            self.pipeline.version, emit, current, self._give_up_after,
        )  # fmt: skip
        return checkpointer

    def attach_to_invocation(self, inv: Invocation) -> None:
        """Checkpoint an `/invoke` run's steps, written behind with its record: for a
        retry of it (`checkpoint_invocations`). Nothing waits for them."""
        if not self.pipeline.resume:
            return
        inv.checkpointer = RunCheckpointer(
            asyncio.get_running_loop(), self.policy, self.recorder, self.metrics, inv.run_id,
            1, self.pipeline.version, _no_stream, _always, 0.0, blocking=False,
        )  # fmt: skip

    async def restore(self, inv: Invocation, run: Run) -> RunEnd | None:
        """Restore the steps earlier attempts finished. Returns how the run ends instead,
        when another version of the pipeline made its checkpoints (`version_changed`)."""
        if run.attempt <= 1 and not run.request.get("retry_of"):
            return None
        found = await self.calls.until_written(self.store.checkpoints, run.run_id)
        version = self.pipeline.version
        others = sorted({c.pipeline_version for c in found} - {version})
        if others:
            if self.pipeline.on_version_change == "fail":
                return version_changed(others, version, time.time())
            logger.warning(
                "the run's checkpoints are of another version of the pipeline: it starts over",
                extra={"run_id": run.run_id, "versions": others, "version": version},
            )
            orphaned = await self.calls.until_written(self.store.forget_checkpoints, run.run_id)
            if orphaned and self.policy.objects is not None:
                await asyncio.to_thread(self.policy.objects.delete, orphaned)
            return None
        if found:
            restored = await asyncio.to_thread(restore, inv, self.pipeline, found, self.policy)
            self.metrics.checkpoints.labels("restored").inc(restored)
            logger.info(
                "resuming the run from its checkpoints",
                extra={"run_id": run.run_id, "attempt": run.attempt, "restored": restored},
            )
        return None


def _no_stream(event: StepEvent) -> None:
    """An `/invoke` run has no event stream (to stay cheap)."""


def _always() -> bool:
    return True
