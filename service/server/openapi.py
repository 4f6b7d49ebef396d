"""The OpenAPI document, built once from the same pydantic models that validate requests."""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service import __version__
from service.runs.manager import CURSOR_PATTERN
from service.server.runs_routes import (
    MAX_EVENT_ID,
    MAX_KEY_LENGTH,
    MAX_PAGE,
    RUN_ID_LENGTH,
    RUN_ID_PATTERN,
)
from service.server.schema import (
    EdgeJsonSchema,
    ErrorResponse,
    HealthResponse,
    InvokeFailure,
    InvokeResponse,
    PipelineInfo,
    ProphecyRunStatus,
    ProphecyTriggered,
    RequestModels,
    RunAccepted,
    RunList,
    RunRecord,
    RunStatus,
)

_REF = "#/components/schemas/{model}"

_ERRORS = {
    400: "Malformed JSON or a bad request.",
    401: "A missing or wrong auth key (when auth is on).",
    404: "Not found.",
    409: "The run has already ended.",
    413: "The body is too large.",
    422: "The request does not fit the schema; `error.errors` lists each field.",
    429: "The run queue is full; retry after `Retry-After` seconds.",
    503: "At capacity, starting or shutting down; retry after `Retry-After` seconds.",
    504: "The invocation passed its deadline.",
}


def _json(model: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model=model)}}},
    }


def _errors(*codes: int, model: str = "ErrorResponse") -> dict[str, Any]:
    return {str(code): _json(model, _ERRORS[code]) for code in (401, *codes)}


def _body(ref: str, required: bool = False, example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": {"$ref": ref}}
    if example is not None:
        media["example"] = example
    return {"required": required, "content": {"application/json": media}}


# One event of a run's stream (OpenAPI 3.1: the schema of a stream describes each event).
_SSE_EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {
            "type": "string",
            "enum": ["queued", "step_started", "step_finished", "step_failed",
                     "succeeded", "failed", "cancelled", "timed_out"],
        },
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
    "required": ["id", "event", "data"],
}  # fmt: skip

# The server's own checks, stated: anything else is refused before it reaches the store.
_RUN_ID = {
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


# Always declared (auth turns on whenever a key exists, at run time): the docs page's
# "Authorize" then sends the key. `{}` makes it optional for a server without keys.
SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "An auth key (`pipeserve keys create`); needed while auth is on.",
    },
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyHeader": []}, {}]
PUBLIC_PATHS = ("/health", "/ready")


def _forbid_clashes(submit: dict[str, Any]) -> None:
    """Say in the schema what `parse_submit` refuses: `steps` or `parameters` given both at
    the top level and (not null) in `run_configuration`."""
    clashes = [
        {
            "required": [field, "run_configuration"],
            "properties": {
                "run_configuration": {
                    "type": "object",
                    "required": [field],
                    "properties": {field: {"type": "object"}},
                }
            },
        }
        for field in ("steps", "parameters")
    ]
    submit["not"] = {"anyOf": clashes}


def build_openapi(models: RequestModels, deployment_name: str) -> dict[str, Any]:
    pipeline = models.pipeline
    models_used: list[tuple[type[BaseModel], Any]] = [
        (models.invoke, "validation"),
        (models.submit, "validation"),
        (models.prophecy_trigger, "validation"),
        *(
            (model, "serialization")
            for model in (
                InvokeResponse, InvokeFailure, ErrorResponse, PipelineInfo, HealthResponse,
                RunRecord, RunList, RunAccepted, ProphecyTriggered, ProphecyRunStatus,
            )
        ),
    ]  # fmt: skip
    keys, schema = models_json_schema(
        models_used, ref_template=_REF, schema_generator=EdgeJsonSchema
    )

    def ref(model: type[BaseModel]) -> str:
        return str(keys[(model, "validation")]["$ref"])

    components = schema.get("$defs", {})
    # The request example, filled from the pipeline's defaults, for the docs' "Try it out".
    example = components[ref(models.invoke).rsplit("/", 1)[-1]].get("example")
    _forbid_clashes(components[ref(models.submit).rsplit("/", 1)[-1]])
    # A pipeline with a required parameter needs a body; with none, `{}` is the default.
    body_required = models.has_required

    paths: dict[str, Any] = {
        "/invoke": {
            "post": {
                "operationId": "invoke",
                "summary": "Run the pipeline and return its outputs",
                "requestBody": _body(ref(models.invoke), body_required, example),
                "responses": {
                    "200": _json("InvokeResponse", "The pipeline ran; its outputs."),
                    "500": _json("InvokeFailure", "A step raised."),
                    **_errors(400, 413, 422, 503, 504),
                },
            }
        },
        "/runs": {
            "post": {
                "operationId": "submit_run",
                "summary": "Queue a batch run; follow it at `status_url`",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "The same key returns the same run.",
                        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
                    }
                ],
                "requestBody": _body(ref(models.submit), body_required, example),
                "responses": {
                    "202": _json("RunAccepted", "Queued, safely in the run store."),
                    **_errors(400, 413, 422, 429, 503),
                },
            },
            "get": {
                "operationId": "list_runs",
                "summary": "Runs, newest first, a page at a time",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "string",
                            "enum": list(get_args(RunStatus)),
                        },
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_PAGE,
                            "default": 50,
                        },
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "description": "A `next_cursor` of an earlier page; any other is a 422.",
                        # An opaque token: the format names what only the server can make.
                        "schema": {
                            "type": "string",
                            "format": "pipeserve-cursor",
                            "pattern": CURSOR_PATTERN,
                        },
                    },
                ],
                "responses": {"200": _json("RunList", "A page of runs."), **_errors(422)},
            },
        },
        "/runs/{run_id}": {
            "get": {
                "operationId": "get_run",
                "summary": "A run: its status, steps, outputs or error",
                "parameters": [_RUN_ID],
                "responses": {"200": _json("RunRecord", "The run."), **_errors(404)},
            }
        },
        "/runs/{run_id}/events": {
            "get": {
                "operationId": "run_events",
                "summary": "The run's events as Server-Sent Events, until it ends",
                "parameters": [
                    _RUN_ID,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "Only the events after this one (as EventSource resends "
                        "it on a reconnect).",
                        "schema": _EVENT_ID,
                    },
                    {
                        "name": "last_event_id",
                        "in": "query",
                        "required": False,
                        "description": "As `Last-Event-ID`, for clients that cannot set a "
                        "header; the header wins.",
                        "schema": _EVENT_ID,
                    },
                ],
                "responses": {
                    "200": {
                        "description": "queued, step_started, step_finished, step_failed, "
                        "then one named after the final status.",
                        "content": {"text/event-stream": {"schema": _SSE_EVENT}},
                    },
                    **_errors(404, 422),
                },
            }
        },
        "/runs/{run_id}/cancel": {
            "post": {
                "operationId": "cancel_run",
                "summary": "Cancel a queued or running run",
                "parameters": [_RUN_ID],
                "responses": {
                    "200": _json("RunRecord", "Cancelled."),
                    "202": _json("RunRecord", "Cancelling: a sync step must finish first."),
                    **_errors(404, 409),
                },
            }
        },
        "/api/trigger/pipeline": {
            "post": {
                "operationId": "prophecy_trigger",
                "summary": "Prophecy's Trigger Pipeline API: queue a run",
                "requestBody": _body(ref(models.prophecy_trigger), required=True),
                "responses": {
                    "200": _json("ProphecyTriggered", "Queued."),
                    **_errors(400, 404, 413, 422, 429, 503, model="ProphecyTriggered"),
                },
            }
        },
        "/api/trigger/pipeline/{run_id}": {
            "get": {
                "operationId": "prophecy_status",
                "summary": "Prophecy's Pipeline Run Status",
                "parameters": [_RUN_ID],
                "responses": {
                    "200": _json("ProphecyRunStatus", "The run's status."),
                    **_errors(404, model="ProphecyRunStatus"),
                },
            }
        },
        "/info": {
            "get": {
                "operationId": "info",
                "summary": "The deployment, its steps, edges and parameter schema",
                "responses": {"200": _json("PipelineInfo", "About this deployment.")},
            }
        },
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness",
                "responses": {
                    "200": _json("HealthResponse", "The process is alive."),
                    "503": _json("HealthResponse", "on_init failed: the process is stopping."),
                },
            }
        },
        "/ready": {
            "get": {
                "operationId": "ready",
                "summary": "Readiness: 200 once on_init has finished",
                "responses": {
                    "200": _json("HealthResponse", "Ready for work."),
                    "503": _json("HealthResponse", "Not ready (starting or stopping)."),
                },
            }
        },
    }
    for path in PUBLIC_PATHS:
        for operation in paths[path].values():
            operation["security"] = []
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"{deployment_name} (pipeline {pipeline.name})",
            "version": pipeline.version,
            "description": pipeline.description
            or f"The {pipeline.name} pipeline, served by pipeserve {__version__}.",
        },
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": SECURITY_SCHEMES},
        "security": SECURITY,
    }
