"""The OpenAPI document, derived once from the route table (`routes`), the error
declarations (`service.errors`) and the same pydantic models that validate requests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service import __version__
from service.errors import ServiceError, Unauthorized
from service.sdk.requests import RequestModels
from service.sdk.validation import EdgeJsonSchema
from service.server.middleware import PUBLIC
from service.server.routes import Operation, Path
from service.server.schema import (
    ErrorResponse,
    HealthResponse,
    InvokeFailure,
    InvokeResponse,
    PipelineInfo,
    ProphecyRunStatus,
    ProphecyTriggered,
    RunAccepted,
    RunList,
    RunRecord,
    RunRetried,
)

_REF = "#/components/schemas/{model}"
_RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    InvokeResponse, InvokeFailure, ErrorResponse, PipelineInfo, HealthResponse,
    RunRecord, RunList, RunAccepted, RunRetried, ProphecyTriggered, ProphecyRunStatus,
)  # fmt: skip

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


def _json(model: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model=model)}}},
    }


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


class _Document:
    """The parts of one document: the component schemas and each operation."""

    def __init__(self, models: RequestModels) -> None:
        self.models = models
        used: list[tuple[type[BaseModel], Any]] = [
            (models.invoke, "validation"),
            (models.submit, "validation"),
            (models.prophecy_trigger, "validation"),
            *((model, "serialization") for model in _RESPONSE_MODELS),
        ]
        self.keys, schema = models_json_schema(
            used, ref_template=_REF, schema_generator=EdgeJsonSchema
        )
        self.components: dict[str, Any] = schema.get("$defs", {})
        _forbid_clashes(self.components[self._name(models.submit)])
        # The request example, filled from the pipeline's defaults, for "Try it out".
        self.example = self.components[self._name(models.invoke)].get("example")

    def _ref(self, model: type[BaseModel]) -> str:
        return str(self.keys[(model, "validation")]["$ref"])

    def _name(self, model: type[BaseModel]) -> str:
        return self._ref(model).rsplit("/", 1)[-1]

    def operation(self, op: Operation, public: bool) -> dict[str, Any]:
        document: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary}
        if op.parameters:
            document["parameters"] = list(op.parameters)
        if op.body is not None:
            document["requestBody"] = self._body(op)
        responses: dict[str, Any] = {}
        for reply in op.replies:
            if reply.content is not None:
                responses[str(reply.status)] = {
                    "description": reply.description,
                    "content": reply.content,
                }
            else:
                responses[str(reply.status)] = _json(reply.model, reply.description)
        if not public:
            for error in _by_status((Unauthorized, *op.errors)):
                responses[str(error.status_code)] = _json(op.error_model, error.description)
        document["responses"] = responses
        if public:
            document["security"] = []
        return document

    def _body(self, op: Operation) -> dict[str, Any]:
        model: type[BaseModel] = getattr(self.models, str(op.body))
        media: dict[str, Any] = {"schema": {"$ref": self._ref(model)}}
        # A pipeline with a required parameter needs a body; with none, `{}` is the default.
        required = self.models.has_required if op.body_required is None else op.body_required
        if op.example and self.example is not None:
            media["example"] = self.example
        return {"required": required, "content": {"application/json": media}}


def _by_status(declared: Sequence[type[ServiceError]]) -> list[type[ServiceError]]:
    """One error a status: the first declared."""
    first: dict[int, type[ServiceError]] = {}
    for error in declared:
        first.setdefault(error.status_code, error)
    return list(first.values())


def build_openapi(
    table: Sequence[Path], models: RequestModels, deployment_name: str
) -> dict[str, Any]:
    pipeline = models.pipeline
    parts = _Document(models)
    paths = {
        path.path: {
            op.method.lower(): parts.operation(op, path.path in PUBLIC) for op in path.operations
        }
        for path in table
        if path.documented
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"{deployment_name} (pipeline {pipeline.name})",
            "version": pipeline.version,
            "description": pipeline.description
            or f"The {pipeline.name} pipeline, served by pipeserve {__version__}.",
        },
        "paths": paths,
        "components": {"schemas": parts.components, "securitySchemes": SECURITY_SCHEMES},
        "security": SECURITY,
    }
