"""The HTTP routes of runs: submit, follow, list, stream, cancel, retry; and Prophecy's
trigger API."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response

from service.errors import BadRequest, NotFound, ServiceError, ValidationFailed
from service.runs.manager import RunManager
from service.runs.model import Run
from service.runs.records import render
from service.sdk.requests import InvokeRequestData, RequestModels
from service.sdk.serialize import dumps
from service.server.responses import JSONBody, error_response
from service.status import ACTIVE, RUN_STATUSES, RunStatus

MAX_PAGE = 500
DEFAULT_PAGE = 50
# The name of a run's route, for its `status_url`.
RUN_ROUTE = "run"
# The longest Idempotency-Key accepted (the store's column).
MAX_KEY_LENGTH = 255
# A run id as `runner.new_run_id` makes them: a version 4 UUID, lowercase. A path id of
# another shape names no run (404), and never reaches the store.
RUN_ID_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
RUN_ID_LENGTH = 36
_RUN_ID = re.compile(RUN_ID_PATTERN)
# Event ids are the store's 32-bit INTEGER column.
MAX_EVENT_ID = 2**31 - 1
_INTEGER = re.compile("-?[0-9]+")
# Prophecy's run statuses: RUNNING until the end, then SUCCEEDED or ERROR.
_PROPHECY_STATUS: dict[RunStatus, str] = {
    s: "RUNNING" if s in ACTIVE else "SUCCEEDED" if s == "succeeded" else "ERROR"
    for s in RUN_STATUSES
}


class RunsAPI:
    def __init__(
        self, runs: RunManager, models: RequestModels, check_accepting: Callable[[], object]
    ) -> None:
        self.runs = runs
        self.models = models
        # Raises 503 while starting or draining, as for /invoke.
        self.check_accepting = check_accepting

    async def submit(self, request: Request) -> Response:
        self.check_accepting()
        data, webhook_url = self.models.parse_submit(await request.body())
        key = _idempotency_key(request)
        row, created = await self.runs.submit(data, webhook_url=webhook_url, idempotency_key=key)
        return _queued(request, row, created)

    async def get(self, request: Request) -> Response:
        run_id = _run_id(request)
        return JSONBody(render(await self.runs.require(run_id)))

    async def list(self, request: Request) -> Response:
        query = request.query_params
        unknown = sorted(set(query) - {"status", "limit", "cursor"})
        if unknown:
            raise _query_error(unknown[0], "unknown query parameter", "extra_forbidden")
        status = query.get("status")
        if status is not None and status not in RUN_STATUSES:
            raise _query_error("status", f"must be one of {', '.join(RUN_STATUSES)}", "enum")
        limit = _int_param(
            query.get("limit"), ["query", "limit"], default=DEFAULT_PAGE, high=MAX_PAGE, low=1
        )
        # An empty cursor is no cursor this server gave out: 422, as any other.
        found, next_cursor = await self.runs.list_runs(status, limit, query.get("cursor"))
        return JSONBody({"runs": found, "next_cursor": next_cursor})

    async def cancel(self, request: Request) -> Response:
        row, done = await self.runs.cancel(_run_id(request))
        return JSONBody(render(row), status_code=200 if done else 202)

    async def retry(self, request: Request) -> Response:
        self.check_accepting()
        query = request.query_params
        unknown = sorted(set(query) - {"from_step"})
        if unknown:
            raise _query_error(unknown[0], "unknown query parameter", "extra_forbidden")
        run_id = _run_id(request)
        key = _idempotency_key(request)
        row, created = await self.runs.retry(run_id, query.get("from_step"), key)
        return _queued(request, row, created, retry_of=run_id)

    async def events(self, request: Request) -> Response:
        run_id = _run_id(request)
        # The header, as EventSource sends it on a reconnect; else the query (for clients
        # that cannot set headers). Present means an event id: an empty one is refused.
        # Each one given is checked, even the one the header overrides.
        query = request.query_params.get("last_event_id")
        after = _int_param(query, ["query", "last_event_id"], default=0, high=MAX_EVENT_ID)
        header = request.headers.get("last-event-id")
        if header is not None:
            after = _int_param(header, ["header", "Last-Event-ID"], default=0, high=MAX_EVENT_ID)
        run = await self.runs.require(run_id)  # a 404 before the stream starts

        async def stream() -> AsyncIterator[ServerSentEvent]:
            async for event in self.runs.events(run, after):
                yield ServerSentEvent(
                    data=dumps(event.data).decode(), event=event.kind, id=str(event.event_id)
                )

        return EventSourceResponse(stream(), ping=15, headers={"Cache-Control": "no-store"})

    # -- Prophecy's Trigger Pipeline API --------------------------------------------

    async def prophecy_trigger(self, request: Request) -> Response:
        try:
            self.check_accepting()
            trigger = self.models.parse_prophecy(await request.body())
            pipeline = self.runs.deployment.pipeline_name
            if trigger.pipelineName not in (pipeline, self.runs.deployment.name):
                raise NotFound(
                    f"pipeline '{trigger.pipelineName}' is not served here: this deployment "
                    f"serves '{pipeline}'"
                )
            data = InvokeRequestData(
                parameters=trigger.parameters.model_dump(by_alias=True),
                step_parameters={},
                until=trigger.processName,
                timeout=None,
            )
            client = {
                "system": "prophecy",
                **trigger.model_dump(include={"fabricId", "projectId", "branch", "version"},
                                     exclude_none=True),
            }  # fmt: skip
            row, _ = await self.runs.submit(data, client=client)
        except ServiceError as exc:
            return _prophecy_error(exc)
        request.state.run_id = row.run_id
        return JSONBody({"success": True, "runId": row.run_id, "msg": f"pipeline run {row.status}"})

    async def prophecy_status(self, request: Request) -> Response:
        try:
            row = await self.runs.require(_run_id(request))
        except ServiceError as exc:
            return _prophecy_error(exc)
        answer: dict[str, Any] = {
            "success": True,
            "runId": row.run_id,
            "createdAt": _prophecy_time(row.created_at),
            "updatedAt": _prophecy_time(row.updated_at or row.created_at),
            "pipelineName": row.pipeline_name,
            "runStatus": _PROPHECY_STATUS[row.status],
        }
        client = row.request.get("client") or {}
        for name in ("projectId", "fabricId"):
            if name in client:
                answer[name] = str(client[name])
        if answer["runStatus"] == "ERROR":
            error = row.error or {}
            answer["errorMessage"] = error.get("message") or f"the run {row.status}"
        return JSONBody(answer)


def _prophecy_time(ts: float) -> str:
    # Prophecy's form: ISO 8601 with microseconds, UTC, no offset.
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def _prophecy_error(exc: ServiceError) -> Response:
    # Prophecy's clients read `success` and `msg`; ours read `error`.
    return error_response(exc, msg=exc.message)


def _run_id(request: Request) -> str:
    """The path's run id, checked before any store call: another shape names no run."""
    run_id: str = request.path_params["run_id"]
    if not _RUN_ID.fullmatch(run_id):
        raise NotFound(
            "no such run: a run id is a UUID this server gave out",
            errors=[{"loc": ["path", "run_id"], "msg": "not a run id", "type": "run_id"}],
        )
    request.scope["state"]["run_id"] = run_id
    return run_id


def _query_error(name: str, message: str, kind: str) -> ValidationFailed:
    return _param_error(["query", name], message, kind)


def _param_error(loc: list[str], message: str, kind: str) -> ValidationFailed:
    return ValidationFailed(
        f"{loc[-1]}: {message}", errors=[{"loc": loc, "msg": message, "type": kind}]
    )


def _int_param(value: str | None, loc: list[str], *, default: int, high: int, low: int = 0) -> int:
    """A decimal integer (ASCII digits, an optional minus) from `low` to `high`; given but
    empty, or of another form, is a 422 naming it."""
    if value is None:
        return default
    if not _INTEGER.fullmatch(value):
        raise _param_error(loc, "must be an integer", "int_parsing")
    # More digits than any bound has: out of range, without converting them.
    number = int(value) if len(value) <= 20 else high + 1
    if not low <= number <= high:
        raise _param_error(loc, f"must be from {low} to {high}", "range")
    return number


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= MAX_KEY_LENGTH:
        message = f"must be 1 to {MAX_KEY_LENGTH} characters long"
        raise BadRequest(
            f"Idempotency-Key {message}",
            errors=[{"loc": ["header", "Idempotency-Key"], "msg": message,
                     "type": "string_length"}],
        )  # fmt: skip
    return key


def _queued(request: Request, row: Run, created: bool, **extra: str) -> Response:
    """202: the run is queued (or was, under this Idempotency-Key), at its `status_url`."""
    request.state.run_id = row.run_id
    status_url = str(request.url_for(RUN_ROUTE, run_id=row.run_id))
    headers = {"Location": status_url}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return JSONBody(
        {"run_id": row.run_id, "status": row.status, "status_url": status_url, **extra},
        status_code=202,
        headers=headers,
    )
