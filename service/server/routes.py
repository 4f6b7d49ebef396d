"""The route table: every HTTP operation of the API, declared once.

The app's Starlette routes and the OpenAPI document are both derived from it (`starlette_
routes` here, `openapi.build_openapi`), so a route cannot be served without being
documented, or documented with another path or method than it has. The errors an
operation may answer are listed with it; what each means comes from `service.errors`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import errors
from service.runs.manager import CURSOR_PATTERN
from service.server.about import About
from service.server.invoke import Invoker
from service.server.runs_routes import (
    DEFAULT_PAGE,
    MAX_EVENT_ID,
    MAX_KEY_LENGTH,
    MAX_PAGE,
    RUN_ID_LENGTH,
    RUN_ID_PATTERN,
    RUN_ROUTE,
    RunsAPI,
)
from service.status import EVENT_KINDS, RUN_STATUSES

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Reply:
    """A successful answer: its status, the component schema of its JSON body (or its own
    `content`), and what it means."""

    status: int
    model: str
    description: str
    content: dict[str, Any] | None = None


@dataclass(frozen=True)
class Operation:
    """One method on one path. `errors`: the error classes it may answer (their status and
    description come from `service.errors`; 401 applies to every path that needs a key).
    `body`: which of the pipeline's request models the body is (`RequestModels` attribute)."""

    method: str
    endpoint: Endpoint
    operation_id: str
    summary: str
    replies: tuple[Reply, ...]
    errors: tuple[type[errors.ServiceError], ...] = ()
    error_model: str = "ErrorResponse"
    body: str | None = None
    # None: required when the pipeline has a required parameter; else as given.
    body_required: bool | None = None
    # The body's example, filled from the pipeline's defaults (the pipeline's own models).
    example: bool = False
    parameters: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Path:
    path: str
    operations: tuple[Operation, ...]
    # For `request.url_for` (a run's status_url).
    name: str | None = None
    # In the OpenAPI document (the document itself and /metrics are not API operations).
    documented: bool = True


# The server's own checks, stated: anything else is refused before it reaches the store.
RUN_ID_PARAMETER = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "description": "A run id this server gave out (a UUID); any other answers 404.",
    "schema": {
        "type": "string",
        "pattern": RUN_ID_PATTERN,
        "minLength": RUN_ID_LENGTH,
        "maxLength": RUN_ID_LENGTH,
    },
}
_EVENT_ID = {"type": "integer", "minimum": 0, "maximum": MAX_EVENT_ID}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "The same key returns the same run.",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
}
_LIST_PARAMETERS = (
    {
        "name": "status",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": list(RUN_STATUSES)},
    },
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
    },
    {
        "name": "cursor",
        "in": "query",
        "required": False,
        "description": "A `next_cursor` of an earlier page; any other is a 422.",
        # An opaque token: the format names what only the server can make.
        "schema": {"type": "string", "format": "pipeserve-cursor", "pattern": CURSOR_PATTERN},
    },
)


def _from_step_parameter(step_names: Sequence[str]) -> dict[str, Any]:
    return {
        "name": "from_step",
        "in": "query",
        "required": False,
        "description": "Run this step and every step after it again; restore the checkpoints "
        "of the others. Without it, every step with a checkpoint is restored.",
        "schema": {"type": "string", "enum": list(step_names)},
    }


_EVENTS_PARAMETERS = (
    RUN_ID_PARAMETER,
    {
        "name": "Last-Event-ID",
        "in": "header",
        "required": False,
        "description": "Only the events after this one (as EventSource resends it on a reconnect).",
        "schema": _EVENT_ID,
    },
    {
        "name": "last_event_id",
        "in": "query",
        "required": False,
        "description": "As `Last-Event-ID`, for clients that cannot set a header; the header wins.",
        "schema": _EVENT_ID,
    },
)
# One event of a run's stream (OpenAPI 3.1: the schema of a stream describes each event).
_SSE_EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"type": "string", "enum": list(EVENT_KINDS)},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
    "required": ["id", "event", "data"],
}


def route_table(invoker: Invoker, about: About, runs: RunsAPI) -> tuple[Path, ...]:
    """Every route of the API, with what OpenAPI says of it."""
    e = errors
    return (
        Path("/invoke", (
            Operation(
                "POST", invoker.invoke, "invoke", "Run the pipeline and return its outputs",
                (Reply(200, "InvokeResponse", "The pipeline ran; its outputs."),
                 Reply(e.StepFailed.status_code, "InvokeFailure", e.StepFailed.description)),
                errors=(e.BadRequest, e.PayloadTooLarge, e.ValidationFailed,
                        e.ServiceUnavailable, e.DeadlineExceeded),
                body="invoke",
                example=True,
            ),
        )),
        Path("/runs", (
            Operation(
                "POST", runs.submit, "submit_run",
                "Queue a batch run; follow it at `status_url`",
                (Reply(202, "RunAccepted", "Queued, safely in the run store."),),
                errors=(e.BadRequest, e.PayloadTooLarge, e.ValidationFailed,
                        e.TooManyRequests, e.ServiceUnavailable),
                body="submit",
                example=True,
                parameters=(_IDEMPOTENCY_KEY,),
            ),
            Operation(
                "GET", runs.list, "list_runs", "Runs, newest first, a page at a time",
                (Reply(200, "RunList", "A page of runs."),),
                errors=(e.ValidationFailed, e.StoreUnavailable),
                parameters=_LIST_PARAMETERS,
            ),
        )),
        Path("/runs/{run_id}", (
            Operation(
                "GET", runs.get, "get_run", "A run: its status, steps, outputs or error",
                (Reply(200, "RunRecord", "The run."),),
                errors=(e.NotFound, e.StoreUnavailable),
                parameters=(RUN_ID_PARAMETER,),
            ),
        ), name=RUN_ROUTE),
        Path("/runs/{run_id}/events", (
            Operation(
                "GET", runs.events, "run_events",
                "The run's events as Server-Sent Events, until it ends",
                (Reply(200, "", "queued, step_started, step_retrying, step_finished, "
                       "step_failed, then one named after the final status.",
                       content={"text/event-stream": {"schema": _SSE_EVENT}}),),
                errors=(e.NotFound, e.ValidationFailed, e.StoreUnavailable),
                parameters=_EVENTS_PARAMETERS,
            ),
        )),
        Path("/runs/{run_id}/cancel", (
            Operation(
                "POST", runs.cancel, "cancel_run", "Cancel a queued or running run",
                (Reply(200, "RunRecord", "Cancelled."),
                 Reply(202, "RunRecord", "Cancelling: a sync step must finish first.")),
                errors=(e.NotFound, e.Conflict, e.StoreUnavailable),
                parameters=(RUN_ID_PARAMETER,),
            ),
        )),
        Path("/runs/{run_id}/retry", (
            Operation(
                "POST", runs.retry, "retry_run",
                "Run an ended run again, restoring its checkpoints before from_step",
                (Reply(202, "RunRetried", "Queued: the new run."),),
                errors=(e.BadRequest, e.NotFound, e.Conflict, e.VersionChanged,
                        e.ValidationFailed, e.TooManyRequests, e.ServiceUnavailable),
                parameters=(RUN_ID_PARAMETER, _from_step_parameter(runs.models.step_names),
                            _IDEMPOTENCY_KEY),
            ),
        )),
        Path("/api/trigger/pipeline", (
            Operation(
                "POST", runs.prophecy_trigger, "prophecy_trigger",
                "Prophecy's Trigger Pipeline API: queue a run",
                (Reply(200, "ProphecyTriggered", "Queued."),),
                errors=(e.BadRequest, e.NotFound, e.PayloadTooLarge, e.ValidationFailed,
                        e.TooManyRequests, e.ServiceUnavailable),
                error_model="ProphecyTriggered",
                body="prophecy_trigger",
                body_required=True,
            ),
        )),
        Path("/api/trigger/pipeline/{run_id}", (
            Operation(
                "GET", runs.prophecy_status, "prophecy_status", "Prophecy's Pipeline Run Status",
                (Reply(200, "ProphecyRunStatus", "The run's status."),),
                errors=(e.NotFound, e.StoreUnavailable),
                error_model="ProphecyRunStatus",
                parameters=(RUN_ID_PARAMETER,),
            ),
        )),
        Path("/info", (
            Operation(
                "GET", about.info, "info",
                "The deployment, its steps, edges and parameter schema",
                (Reply(200, "PipelineInfo", "About this deployment."),),
            ),
        )),
        Path("/health", (
            Operation(
                "GET", about.health, "health", "Liveness",
                (Reply(200, "HealthResponse", "The process is alive."),
                 Reply(503, "HealthResponse", "on_init failed: the process is stopping.")),
            ),
        )),
        Path("/ready", (
            Operation(
                "GET", about.ready, "ready", "Readiness: 200 once on_init has finished",
                (Reply(200, "HealthResponse", "Ready for work."),
                 Reply(503, "HealthResponse", "Not ready (starting or stopping).")),
            ),
        )),
        # Served, not documented in themselves: the document and the metrics.
        Path("/openapi.json", (
            Operation("GET", about.openapi_document, "openapi", "This document", ()),
        ), documented=False),
        Path("/metrics", (
            Operation("GET", about.metrics, "metrics", "Prometheus metrics", ()),
        ), documented=False),
    )  # fmt: skip


def starlette_routes(table: Sequence[Path]) -> list[Route]:
    """One Starlette route a path, taking each of its operations' methods: any other method
    answers 405 with `Allow` listing them."""
    return [
        Route(
            path.path,
            _by_method(path.operations),
            methods=[op.method for op in path.operations],
            name=path.name,
        )
        for path in table
    ]


def _by_method(operations: Sequence[Operation]) -> Endpoint:
    if len(operations) == 1:
        return operations[0].endpoint
    endpoints = {op.method: op.endpoint for op in operations}
    if "GET" in endpoints:
        # Starlette routes HEAD to a route that takes GET.
        endpoints.setdefault("HEAD", endpoints["GET"])

    async def endpoint(request: Request) -> Response:
        # Only the route's methods get here: Starlette answers any other with 405.
        return await endpoints[request.method](request)

    return endpoint
