"""`POST /invoke`: run the pipeline in-process, within a concurrency slot and a deadline.

The hot path: no store I/O here (the run's record goes to the recorder's write-behind
buffer), one JSON parse, one JSON serialization.
"""

from __future__ import annotations

import asyncio
import time
from asyncio import timeout
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service.errors import DeadlineExceeded, ServiceUnavailable, StepFailed
from service.runs.records import running_step, step_records, utc
from service.sdk.invocation import Invocation, StepError
from service.sdk.requests import InvokeRequestData
from service.sdk.serialize import dumps_response
from service.server.lifecycle import PipelineService
from service.server.responses import JSONBody


class Invoker:
    """The `/invoke` endpoint of one app."""

    def __init__(self, service: PipelineService) -> None:
        self.service = service
        self.settings = service.settings
        self.metrics = service.metrics
        # Never reassigned: held here, one attribute hop less per request.
        self.models = service.models
        self.slots = service.slots
        self.checkpoint = service.runs.checkpoint_invocation

    async def _acquire_slot(self) -> None:
        slots = self.slots
        if not slots.locked():
            await slots.acquire()
            return
        self.metrics.queue_depth.inc()
        try:
            await asyncio.wait_for(slots.acquire(), self.settings.queue_timeout)
        except TimeoutError:
            raise ServiceUnavailable(
                f"at capacity: {self.settings.max_concurrency} invocations are running",
                retry_after=max(1, round(self.settings.queue_timeout)),
            ) from None
        finally:
            self.metrics.queue_depth.dec()

    def parse_body(self, body: bytes) -> InvokeRequestData:
        # The models hold the body to max_json_depth, max_timeout and 64-bit integers.
        return self.models.parse_invoke(body)

    async def invoke(self, request: Request) -> Response:
        service = self.service
        runner = service.accepting()
        data = self.parse_body(await request.body())
        # The models hold a requested timeout to max_timeout already (a 422 otherwise).
        deadline = self.settings.timeout if data.timeout is None else data.timeout
        inv = runner.invocation(data)
        if self.checkpoint is not None:
            self.checkpoint(inv)
        # The scope's state dict itself: `request.state` builds a State object per request.
        request.scope["state"]["run_id"] = inv.run_id
        await self._acquire_slot()
        try:
            async with timeout(deadline) as clock:
                service.clocks.add(clock)
                try:
                    await runner.run(inv, deadline)
                finally:
                    service.clocks.discard(clock)
        except TimeoutError:
            if service.abandoned:
                _abandon(inv)
            else:
                inv.status = "timed_out"
            inv.finished_at = time.time()
        finally:
            inv.release_when_threads_end(self.slots, service.spawn)
            self.metrics.observe_run(inv.status, inv.execution_time, inv.records)
        # Built once: the answer's metadata, and the steps of the run's record.
        metadata = self.metadata(inv)
        service.runs.record(inv, data, deadline, metadata["steps"])
        if inv.status == "timed_out":
            raise DeadlineExceeded(
                f"the invocation passed its deadline of {deadline} seconds",
                step=running_step(inv),
                metadata=metadata,
            )
        if inv.status == "failed":
            if inv.error is not None and inv.error.type == "interrupted":
                raise ServiceUnavailable(inv.error.message, retry_after=1, metadata=metadata)
            raise self._step_failure(inv, metadata)
        document = {
            "success": True,
            "outputs": inv.outputs,
            "execution_time": inv.execution_time,
            "metadata": metadata,
            "error": None,
        }
        return JSONBody(dumps_response(document, inv.outputs))

    def _step_failure(self, inv: Invocation, metadata: dict[str, Any]) -> StepFailed:
        error = inv.error
        assert error is not None
        failure = StepFailed(
            f"step '{error.step}' failed: {error.type}: {error.message}",
            step=error.step,
        )
        failure.error_type = error.type
        if self.settings.debug:
            failure.details["traceback"] = error.traceback
        failure.details["metadata"] = metadata
        failure.details["execution_time"] = inv.execution_time
        return failure

    def metadata(self, inv: Invocation) -> dict[str, Any]:
        service = self.service
        pipeline = service.pipeline
        # Datetimes, not strings: orjson writes them as ISO 8601 (see records.utc).
        s = utc(inv.started_at)
        return {
            "deployment_name": service.deployment_name,
            "deployment_id": service.deployment_id,
            "pipeline_name": pipeline.name,
            "pipeline_version": pipeline.version,
            "run_id": inv.run_id,
            # ZenML's run name: the pipeline's and the start time (strftime costs more).
            "run_name": f"{pipeline.name}-{s.year:04}_{s.month:02}_{s.day:02}-"
            f"{s.hour:02}_{s.minute:02}_{s.second:02}_{s.microsecond:06}",
            "status": inv.status,
            "parameters_used": inv.parameters,
            "started_at": s,
            "finished_at": utc(inv.finished_at or time.time()),
            "steps": step_records(inv),
        }


def _abandon(inv: Invocation) -> None:
    """Shutdown's grace period ended the invocation: failed, as a batch run would be."""
    inv.cancel()
    step = running_step(inv) or ""
    inv.status = "failed"
    inv.error = StepError(
        step, "interrupted", "the server shut down before the invocation finished", ""
    )
