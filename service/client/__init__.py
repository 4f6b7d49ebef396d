"""A typed Python client for a pipeserve deployment: `Client`, and its twin `AsyncClient`.

    from service.client import Client

    with Client("http://127.0.0.1:8000", api_key=key) as client:
        result = client.invoke(model_type="gradient_boosting")
        run = client.submit(model_type="random_forest")
        record = run.wait(timeout=60)

Errors are typed (`service.client.StepFailedError`, ...) and carry the server's body.
429 and 503 answers are retried with exponential backoff, or after `Retry-After`. Both
clients only do I/O: the logic is in `service.client.core`, written once.

This package imports nothing from the server, the run store or the SDK (a test pins it),
so that a caller installs and imports only what talking to a deployment needs.
"""

from service.client.clients import (
    AsyncClient,
    AsyncRunHandle,
    BadRequestError,
    Client,
    ConflictError,
    DeadlineExceededError,
    InvokeResult,
    NotFoundError,
    PayloadTooLargeError,
    PipeserveError,
    RateLimitedError,
    RunEvent,
    RunHandle,
    ServerError,
    StepFailedError,
    UnauthorizedError,
    UnavailableError,
    ValidationError,
    WaitTimeoutError,
)

__all__ = [
    "AsyncClient",
    "AsyncRunHandle",
    "BadRequestError",
    "Client",
    "ConflictError",
    "DeadlineExceededError",
    "InvokeResult",
    "NotFoundError",
    "PayloadTooLargeError",
    "PipeserveError",
    "RateLimitedError",
    "RunEvent",
    "RunHandle",
    "ServerError",
    "StepFailedError",
    "UnauthorizedError",
    "UnavailableError",
    "ValidationError",
    "WaitTimeoutError",
]
