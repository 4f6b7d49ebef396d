"""The one error tree of pipeserve, and the one error body every answer carries.

`PipeserveError` is the root of every exception pipeserve raises. `ServiceError` and its
subclasses are the errors answered over HTTP: each declares, once, its `status_code`, its
`error_type` (the body's `error.type`) and a `description` (one line: what the answer
means to a caller). The server's handlers, the OpenAPI document and the Python client all
read these declarations, so a status or a meaning is written here only.

Enumerating the declarations (e.g. for the OpenAPI document's responses):

    for cls in errors.declared():      # every declaration, bases before refinements
        cls.status_code, cls.error_type, cls.description
    errors.for_status(422).description  # what a status means: its general declaration
    errors.by_type("malformed_json")    # the declaration of a body's `error.type`
    issubclass(cls, errors.RetryLater)  # answered with `Retry-After`: send it again later

A class declares when it sets its own `error_type` (and then must set `description`); a
subclass that sets neither answers as its base does. This module imports nothing from
outside the standard library: the Python client imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class PipeserveError(Exception):
    """The root of every error pipeserve raises."""


class PipelineDefinitionError(PipeserveError):
    """A pipeline or step cannot be loaded: raised at load time, never per request."""


# error_type -> its declaration, in definition order (a base is defined before its
# refinements, so the first declaration of a status is its general meaning).
_DECLARED: dict[str, type[ServiceError]] = {}


def _declare(cls: type[ServiceError]) -> None:
    if "description" not in vars(cls):
        raise TypeError(f"{cls.__qualname__} declares an error_type without a description")
    if cls.error_type in _DECLARED:
        clash = _DECLARED[cls.error_type].__qualname__
        raise TypeError(f"{cls.__qualname__}: error_type {cls.error_type!r} is {clash}'s")
    _DECLARED[cls.error_type] = cls


class ServiceError(PipeserveError):
    """An error answered to the client as `{"success": false, "error": {...}}`."""

    status_code: int = 500
    error_type: str = "internal_error"
    description: str = "An unexpected error in the server."

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers: dict[str, str] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "error_type" in vars(cls):
            _declare(cls)

    def body(self) -> dict[str, Any]:
        """The body's `error` object (see `error_body` for the whole body)."""
        return {"type": self.error_type, "message": self.message, **self.details}


_declare(ServiceError)


def declared() -> tuple[type[ServiceError], ...]:
    """Every declared error, `ServiceError` first, each base before its refinements."""
    return tuple(_DECLARED.values())


def by_type(error_type: str) -> type[ServiceError] | None:
    """The declaration of a body's `error.type`; None for a type not declared here (a
    step's failure is typed by the step's exception class)."""
    return _DECLARED.get(error_type)


def for_status(status_code: int) -> type[ServiceError] | None:
    """The general declaration of a status (e.g. `BadRequest` for 400, not its refinement
    `MalformedJSON`): its `description` says what the status means; None if undeclared."""
    return next((cls for cls in _DECLARED.values() if cls.status_code == status_code), None)


# A run's failure keeps the /invoke shape: its metadata and timing sit beside the error.
_RUN_FIELDS = ("metadata", "execution_time")


def error_body(error: Mapping[str, Any], **beside: Any) -> dict[str, Any]:
    """The one error body: `{"success": false, **beside, "error": error}`.

    `error` is the error object (`type`, `message`, details: `ServiceError.body()`);
    `beside` are top-level fields a route's callers read before it (Prophecy's `msg`).
    A run's `metadata` and `execution_time` move out of the error object beside it, with
    `"outputs": null`, as in a successful /invoke answer.
    """
    inner = dict(error)
    body: dict[str, Any] = {"success": False, **beside, "error": inner}
    for key in _RUN_FIELDS:
        if key in inner:
            body[key] = inner.pop(key)
    if "metadata" in body:
        body["outputs"] = None
    return body


class BadRequest(ServiceError):
    status_code = 400
    error_type = "bad_request"
    description = "Malformed JSON or a bad request."


class MalformedJSON(BadRequest):
    error_type = "malformed_json"
    description = "The body is not valid JSON."


class ValidationFailed(ServiceError):
    status_code = 422
    error_type = "validation_error"
    description = "The request does not fit the schema; `error.errors` lists each field."


class IdempotencyKeyReused(ValidationFailed):
    """IETF's Idempotency-Key draft answers this with 422."""

    error_type = "idempotency_key_reused"
    description = "The same Idempotency-Key came with another request body."


class Unauthorized(ServiceError):
    status_code = 401
    error_type = "unauthorized"
    description = "A missing or wrong auth key (when auth is on)."


class NotFound(ServiceError):
    status_code = 404
    error_type = "not_found"
    description = "Not found."


class MethodNotAllowed(ServiceError):
    """Starlette's own 405, answered in our body; `Allow` lists the methods the path takes."""

    status_code = 405
    error_type = "method_not_allowed"
    description = "The path does not take this method; `Allow` lists those it does."


class RequestTimeout(ServiceError):
    status_code = 408
    error_type = "request_timeout"
    description = "The request body stopped arriving; the connection is closed."

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, **details)
        # The rest of the body may still come: the connection cannot be reused.
        self.headers["Connection"] = "close"


class Conflict(ServiceError):
    status_code = 409
    error_type = "conflict"
    description = "The run is not in a state that allows it: cancel needs a run that has not ended, retry one that has."


class VersionChanged(Conflict):
    error_type = "version_changed"
    description = (
        "The run's checkpoints were made by another version of the pipeline: a retry "
        "would mix the outputs of two versions."
    )


class PayloadTooLarge(ServiceError):
    status_code = 413
    error_type = "payload_too_large"
    description = "The body is too large."


class RetryLater(ServiceError):
    """The request was not served (nothing ran), so it may be sent again: the answer
    says after how many seconds in `Retry-After`. Declares no error of its own."""

    def __init__(self, message: str, retry_after: int = 1, **details: Any) -> None:
        super().__init__(message, **details)
        self.headers["Retry-After"] = str(retry_after)


class TooManyRequests(RetryLater):
    status_code = 429
    error_type = "too_many_requests"
    description = "The run queue is full; retry after `Retry-After` seconds."


class ServiceUnavailable(RetryLater):
    status_code = 503
    error_type = "unavailable"
    description = "At capacity, starting or shutting down; retry after `Retry-After` seconds."


class StoreUnavailable(ServiceUnavailable):
    error_type = "store_unavailable"
    description = (
        "The run store stayed out of reach through the retries (`/invoke` still serves); "
        "retry after `Retry-After` seconds."
    )


class DeadlineExceeded(ServiceError):
    status_code = 504
    error_type = "timeout"
    description = "The invocation passed its deadline."


class StepFailed(ServiceError):
    """The pipeline's own failure, not the server's. The answer's `error.type` is the
    step's exception class (set per instance), so the client types it by `error.step`."""

    status_code = 500
    error_type = "step_failed"
    description = "A step raised; `error.step` names it, `error.type` is its exception's class."


class OutputNotSerializable(ServiceError):
    status_code = 500
    error_type = "output_not_serializable"
    description = "An output JSON cannot carry."
