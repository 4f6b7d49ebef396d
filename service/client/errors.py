"""The client's errors: one exception a server error declaration (`service.errors`),
picked from an answer by its `error.type`, else by its status."""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from service import errors

# The answers that mean "not served, send it again": the server's `RetryLater` errors.
RETRY_STATUSES = frozenset(
    cls.status_code for cls in errors.declared() if issubclass(cls, errors.RetryLater)
)


# A server declaration -> the client exception that stands for it (see `APIError`);
# `error_class` looks up a status's general declaration here.
_TYPED: dict[type[errors.ServiceError], type[APIError]] = {}


class APIError(errors.PipeserveError):
    """The server answered an error: its status code and its JSON body.

    `body` is the whole answer (`{"success": false, "error": {...}, ...}`); `error` is
    its `error` object, with `error_type` and `message` read from it. A subclass stands
    for a server declaration (`class X(APIError, answers=errors.NotFound)`): its
    docstring then starts with the declaration's status and description.
    """

    def __init_subclass__(
        cls, answers: type[errors.ServiceError] | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if answers is not None:
            _TYPED[answers] = cls
            meaning = f"{answers.status_code} `{answers.error_type}`: {answers.description}"
            cls.__doc__ = f"{meaning}\n\n{cls.__doc__}" if cls.__doc__ else meaning

    def __init__(
        self, status_code: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        error = body.get("error")
        self.status_code = status_code
        self.body = body
        self.error: dict[str, Any] = error if isinstance(error, dict) else {}
        self.error_type: str = str(self.error.get("type", "http_error"))
        self.message: str = str(self.error.get("message", f"HTTP {status_code}"))
        self.headers: dict[str, str] = dict(headers or {})
        super().__init__(f"{status_code} {self.error_type}: {self.message}")

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked to wait (`Retry-After`), if it did."""
        return parse_retry_after(self.headers.get("retry-after"))

    @property
    def run_id(self) -> str | None:
        """The run an invocation error belongs to (a step failure, a timeout)."""
        metadata = self.body.get("metadata")
        return metadata.get("run_id") if isinstance(metadata, dict) else None


class BadRequestError(APIError, answers=errors.BadRequest):
    pass


class UnauthorizedError(APIError, answers=errors.Unauthorized):
    pass


class NotFoundError(APIError, answers=errors.NotFound):
    """Also a route that does not exist."""


class ConflictError(APIError, answers=errors.Conflict):
    pass


class PayloadTooLargeError(APIError, answers=errors.PayloadTooLarge):
    pass


class ValidationError(APIError, answers=errors.ValidationFailed):
    """`.errors` is that list of fields."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        return list(self.error.get("errors", []))


class RateLimitedError(APIError, answers=errors.TooManyRequests):
    """Retried by the client; `retry_after` is the server's hint."""


class UnavailableError(APIError, answers=errors.ServiceUnavailable):
    """Retried by the client; `retry_after` is the server's hint."""


class DeadlineExceededError(APIError, answers=errors.DeadlineExceeded):
    """`step` was running."""

    @property
    def step(self) -> str | None:
        return self.error.get("step")


class ServerError(APIError, answers=errors.ServiceError):
    """Also any other 5xx without a class of its own, e.g. an output JSON cannot carry."""


class StepFailedError(ServerError, answers=errors.StepFailed):
    """`step` names the step."""

    @property
    def step(self) -> str | None:
        return self.error.get("step")


class WaitTimeoutError(TimeoutError):
    """`wait()` gave up before the run ended; the run goes on."""

    def __init__(self, run_id: str, record: dict[str, Any]) -> None:
        self.run_id = run_id
        self.record = record
        super().__init__(f"run {run_id} is still {record.get('status')!r}")


def error_class(status: int, body: Mapping[str, Any]) -> type[APIError]:
    """The client exception of an error answer: that of the status its `error.type` is
    declared at (a refinement, e.g. `malformed_json`, answers as that status's general
    declaration, `bad_request`), else of its status (a body not ours, a type not declared).
    A step's failure is typed by the step's exception class, not declared: a 500 that
    names a `step` is one."""
    error = body.get("error")
    error = error if isinstance(error, dict) else {}
    if status == errors.StepFailed.status_code and error.get("step"):
        return StepFailedError
    declared = errors.by_type(str(error.get("type")))
    general = errors.for_status(declared.status_code if declared else status)
    cls = _TYPED.get(general) if general is not None else None
    return cls or (ServerError if status >= 500 else APIError)


def error_for(response: httpx.Response) -> APIError:
    body = error_body(response)
    return error_class(response.status_code, body)(response.status_code, body, response.headers)


def error_body(response: httpx.Response, error_type: str = "http_error") -> dict[str, Any]:
    """The server's JSON error body; one of its shape for an answer without one (e.g. a
    proxy's error page)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    text = response.text.strip()[:500] or "no body"
    message = f"HTTP {response.status_code} without a JSON object: {text}"
    return errors.error_body({"type": error_type, "message": message})


def check(response: httpx.Response, *ok: int) -> Any:
    """The JSON of an expected answer; the typed error of any other."""
    if response.status_code not in (ok or (200,)):
        raise error_for(response)
    try:
        return response.json()
    except ValueError:
        # Something other than pipeserve answered (a proxy, a page at this URL).
        raise APIError(
            response.status_code, error_body(response, "not_json"), response.headers
        ) from None


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None
