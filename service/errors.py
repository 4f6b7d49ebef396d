"""Exceptions that carry their HTTP status; one handler in `app` renders them all."""

from __future__ import annotations

from typing import Any


class PipeserveError(Exception):
    """The root of every error pipeserve raises."""


class PipelineDefinitionError(PipeserveError):
    """A pipeline or step cannot be loaded: raised at load time, never per request."""


class ServiceError(PipeserveError):
    """An error answered to the client as `{"success": false, "error": {...}}`."""

    status_code: int = 500
    error_type: str = "internal_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return {"type": self.error_type, "message": self.message, **self.details}


class BadRequest(ServiceError):
    status_code = 400
    error_type = "bad_request"


class MalformedJSON(BadRequest):
    error_type = "malformed_json"


class ValidationFailed(ServiceError):
    status_code = 422
    error_type = "validation_error"


class IdempotencyKeyReused(ValidationFailed):
    """The same Idempotency-Key came with another request body (IETF draft: 422)."""

    error_type = "idempotency_key_reused"


class Unauthorized(ServiceError):
    status_code = 401
    error_type = "unauthorized"


class NotFound(ServiceError):
    status_code = 404
    error_type = "not_found"


class RequestTimeout(ServiceError):
    """The request body stopped arriving; the connection is closed after the answer."""

    status_code = 408
    error_type = "request_timeout"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.headers["Connection"] = "close"


class Conflict(ServiceError):
    status_code = 409
    error_type = "conflict"


class PayloadTooLarge(ServiceError):
    status_code = 413
    error_type = "payload_too_large"


class TooManyRequests(ServiceError):
    status_code = 429
    error_type = "too_many_requests"

    def __init__(self, message: str, retry_after: int = 1, **details: Any) -> None:
        super().__init__(message, **details)
        self.headers["Retry-After"] = str(retry_after)


class ServiceUnavailable(ServiceError):
    status_code = 503
    error_type = "unavailable"

    def __init__(self, message: str, retry_after: int = 1, **details: Any) -> None:
        super().__init__(message, **details)
        self.headers["Retry-After"] = str(retry_after)


class StoreUnavailable(ServiceUnavailable):
    """The run store stayed out of reach through the retries; `/invoke` still serves."""

    error_type = "store_unavailable"


class DeadlineExceeded(ServiceError):
    status_code = 504
    error_type = "timeout"


class StepFailed(ServiceError):
    """A step raised: the pipeline's own failure, not the server's."""

    status_code = 500
    error_type = "step_failed"


class OutputNotSerializable(ServiceError):
    status_code = 500
    error_type = "output_not_serializable"
