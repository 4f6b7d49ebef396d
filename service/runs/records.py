"""Run records: a new batch run and a finished invocation as the store records them, and
a stored run as the API's JSON.

The store holds epoch seconds and outputs as JSON text; the API shows ISO 8601 times and
embeds the outputs as they were serialized, without parsing them again.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from service.errors import OutputNotSerializable
from service.runs.model import FinishedRun, NewEvent, Run, RunEnd, StepInfo, Steps
from service.sdk.requests import InvokeRequestData
from service.sdk.runner import Invocation, new_run_id
from service.sdk.serialize import dumps_outputs


@dataclass(frozen=True, slots=True)
class Deployment:
    """What every run of this process is recorded under."""

    name: str
    pipeline_name: str
    pipeline_version: str


def request_hash(document: Any) -> str:
    """What tells two requests apart under one idempotency key."""
    return hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else None


def utc(ts: float) -> datetime:
    """A time for a document orjson writes: it formats datetimes as ISO 8601 itself, in C,
    several times faster than `isoformat()` (what a 20-step run's metadata pays per step)."""
    return datetime.fromtimestamp(ts, UTC)


def request_document(data: InvokeRequestData, **extra: Any) -> dict[str, Any]:
    """The validated request as it is stored, to run (again) later."""
    document: dict[str, Any] = {"parameters": data.parameters}
    if data.step_parameters:
        document["steps"] = {
            name: {"parameters": values} for name, values in data.step_parameters.items()
        }
    if data.until is not None:
        document["until"] = data.until
    if data.timeout is not None:
        document["timeout"] = data.timeout
    document.update({k: v for k, v in extra.items() if v is not None})
    return document


# The fields of a stored request that a run runs with: not its client, nor what it retries.
_RUN_FIELDS = ("parameters", "steps", "until", "timeout")


def rerun_request(run: Run) -> dict[str, Any]:
    """A stored run's request, to validate and run again (its claim, or a retry of it)."""
    return {k: v for k, v in run.request.items() if k in _RUN_FIELDS}


def queued_run(
    deployment: Deployment,
    data: InvokeRequestData,
    webhook_url: str | None,
    idempotency_key: str | None,
    client: dict[str, Any] | None,
    **extra: Any,
) -> Run:
    """A new batch run, queued now, as the run store records it; `extra`: more of its
    request to keep (a retry's `retry_of` and `from_step`)."""
    now = time.time()
    document = request_document(data, client=client, **extra)
    return Run(
        run_id=new_run_id(),
        deployment_name=deployment.name,
        pipeline_name=deployment.pipeline_name,
        pipeline_version=deployment.pipeline_version,
        kind="batch",
        status="queued",
        request=document,
        parameters_used=data.parameters,
        idempotency_key=idempotency_key,
        request_hash=request_hash({**document, "webhook_url": webhook_url}),
        webhook_url=webhook_url,
        created_at=now,
        updated_at=now,
    )


def step_records(inv: Invocation) -> Steps:
    """Each step's status, start (a datetime: see `utc`), duration and tries; a restored
    step's attempt of origin, and a checkpointed step's checkpoint (its size, no bytes)."""
    steps: Steps = {}
    for name, record in inv.records.items():
        info: StepInfo = {
            "status": record.status,
            "started_at": utc(record.started_at) if record.started_at else None,
            "duration": record.duration,
            "tries": record.tries,
        }
        if record.restored_from is not None:
            info["restored_from"] = record.restored_from
        checkpoint = record.checkpoint
        if checkpoint is not None:
            info["checkpoint"] = {"formats": list(checkpoint.formats), "bytes": checkpoint.bytes}
        steps[name] = info
    return steps


def running_step(inv: Invocation) -> str | None:
    """The step a deadline caught: still running (sync), or cancelled by it (async)."""
    return next(
        (name for name, r in inv.records.items() if r.status in ("running", "cancelled")), None
    )


def error_of(inv: Invocation, deadline: float | None = None) -> dict[str, Any] | None:
    if inv.status == "failed" and inv.error is not None:
        return {"type": inv.error.type, "message": inv.error.message, "step": inv.error.step}
    if inv.status == "timed_out":
        return {
            "type": "timeout",
            "message": f"the run passed its deadline of {deadline} seconds"
            if deadline
            else "the run passed its deadline",
            "step": running_step(inv),
        }
    return None


def encode_outputs(
    inv: Invocation, max_bytes: int
) -> tuple[str | None, bool, dict[str, Any] | None]:
    """(outputs as JSON text, omitted for size, error): an output JSON cannot carry fails the run."""
    if inv.status != "succeeded" or inv.outputs is None:
        return None, False, None
    try:
        encoded = dumps_outputs(inv.outputs)
    except OutputNotSerializable as exc:
        return None, False, exc.body()
    if len(encoded) > max_bytes:
        return None, True, None
    return encoded.decode(), False, None


def finished_values(
    inv: Invocation,
    max_output_bytes: int,
    deadline: float | None = None,
    steps: Steps | None = None,
) -> RunEnd:
    """How an invocation ended, as the store records it (`steps`: its step records, if
    made already)."""
    outputs, omitted, output_error = encode_outputs(inv, max_output_bytes)
    status = "failed" if output_error is not None else inv.status
    return {
        "status": status,
        "parameters_used": inv.parameters,
        "steps": steps if steps is not None else step_records(inv),
        "outputs": outputs,
        "outputs_omitted": omitted,
        "error": output_error or error_of(inv, deadline),
        "started_at": inv.started_at or None,
        "finished_at": inv.finished_at,
        "updated_at": inv.finished_at,
        "duration": inv.execution_time,
    }


def invocation_row(
    inv: Invocation, data: InvokeRequestData, deployment: Deployment, max_output_bytes: int,
    deadline: float | None, steps: Steps | None = None,
) -> FinishedRun:  # fmt: skip
    """A finished `/invoke` run as the run store records it."""
    end = finished_values(inv, max_output_bytes, deadline, steps)
    return {
        "run_id": inv.run_id,
        "deployment_name": deployment.name,
        "pipeline_name": deployment.pipeline_name,
        "pipeline_version": deployment.pipeline_version,
        "kind": "invoke",
        "status": end["status"],
        "request": request_document(data),
        "parameters_used": end["parameters_used"],
        "steps": end["steps"],
        "outputs": end["outputs"],
        "outputs_omitted": end["outputs_omitted"],
        "error": end["error"],
        "created_at": inv.started_at,
        "started_at": end["started_at"],
        "finished_at": end["finished_at"],
        "updated_at": end["updated_at"],
        "duration": end["duration"],
    }


def render(run: Run, *, with_outputs: bool = True) -> dict[str, Any]:
    """A stored run as the API's run record."""
    record: dict[str, Any] = {
        "run_id": run.run_id,
        "kind": run.kind,
        "deployment_name": run.deployment_name,
        "pipeline_name": run.pipeline_name,
        "pipeline_version": run.pipeline_version,
        "status": run.status,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "updated_at": iso(run.updated_at or run.created_at),
        "finished_at": iso(run.finished_at),
        "duration": run.duration,
        # An `/invoke` run ran once, and is stored without counting claims.
        "attempt": run.attempt or (1 if run.kind == "invoke" else 0),
        "interrupted_attempts": run.attempts or [],
        "parameters_used": run.parameters_used or run.request.get("parameters", {}),
        "steps": run.steps or {},
        "error": run.error,
        "cancel_requested": bool(run.cancel_requested),
        "webhook": None,
    }
    if with_outputs:
        outputs = run.outputs
        record["outputs"] = orjson.Fragment(outputs) if outputs is not None else None
        record["outputs_omitted"] = bool(run.outputs_omitted)
    if run.webhook_url:
        record["webhook"] = {
            "url": run.webhook_url,
            "status": run.webhook_status,
            "attempts": run.webhook_attempts or [],
        }
    return record


def invocation_events(run: Run) -> list[NewEvent]:
    """An `/invoke` run keeps no events (to stay cheap): tell its story from its record."""

    def epoch(value: str | datetime | None) -> float:
        # From the store an ISO string; from the write-behind buffer still a datetime.
        if value is None:
            return float(run.created_at)
        moment = datetime.fromisoformat(value) if isinstance(value, str) else value
        return moment.timestamp()

    found: list[tuple[str, dict[str, Any], float]] = []
    steps = sorted((run.steps or {}).items(), key=lambda kv: epoch(kv[1]["started_at"]))
    for name, record in steps:
        if record["started_at"] is None:
            continue
        started = epoch(record["started_at"])
        found.append(("step_started", {"step": name}, started))
        ended = started + (record["duration"] or 0.0)
        if record["status"] == "completed":
            found.append(("step_finished", {"step": name, "duration": record["duration"]}, ended))
        elif record["status"] == "failed":
            error = run.error or {}
            found.append(("step_failed", {"step": name, "duration": record["duration"],
                                          "error": error}, ended))  # fmt: skip
    end = run.finished_at or run.created_at
    final: dict[str, Any] = {"status": run.status, "duration": run.duration}
    if run.error:
        final["error"] = run.error
    found.append((run.status, final, end))
    return [
        NewEvent(run.run_id, i, kind, {"run_id": run.run_id, **data, "at": at}, at)
        for i, (kind, data, at) in enumerate(found, start=1)
    ]
