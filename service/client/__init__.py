"""A typed Python client for a pipeserve deployment: `Client`, and its twin `AsyncClient`.

    from service.client import Client

    with Client("http://127.0.0.1:8000", api_key=key) as client:
        result = client.invoke(model_type="gradient_boosting")
        run = client.submit(model_type="random_forest")
        record = run.wait(timeout=60)

Errors are typed (`service.client.StepFailedError`, ...) and carry the server's body.
429 and 503 answers are retried with exponential backoff, or after `Retry-After`. Both
clients only do I/O: the logic is in `service.client.core`, written once.

May import: `service.errors` (the error declarations it maps answers to) and
`service.status` (the run statuses). Nothing from the server, the run store or the SDK (a
test pins it), so that a caller imports only what talking to a deployment needs.
"""

from service.client.clients import AsyncClient, AsyncRunHandle, Client, RunHandle
from service.client.core import InvokeResult, RunEvent
from service.client.errors import (
    APIError,
    BadRequestError,
    ConflictError,
    DeadlineExceededError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    ServerError,
    StepFailedError,
    UnauthorizedError,
    UnavailableError,
    ValidationError,
    WaitTimeoutError,
)

__all__ = [
    "APIError",
    "AsyncClient",
    "AsyncRunHandle",
    "BadRequestError",
    "Client",
    "ConflictError",
    "DeadlineExceededError",
    "InvokeResult",
    "NotFoundError",
    "PayloadTooLargeError",
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
