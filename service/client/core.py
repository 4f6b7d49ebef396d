"""The Python client's sans-IO core, shared by `Client` and `AsyncClient`.
Each API call is an *operation*: a generator that yields what to do next (send a
`Request`, or `Sleep`) and receives the result (an `httpx.Response`, or None). The sync
and the async client each drive operations with their own I/O, so request building,
answer decoding, typed errors, retries with backoff and run polling are written once.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from httpx_sse import ServerSentEvent

from service import errors
from service.client.errors import (
    RETRY_STATUSES,
    WaitTimeoutError,
    check,
    parse_retry_after,
)
from service.status import TERMINAL

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of 429 and 503 answers: exponential backoff, or the server's `Retry-After`.

    Both mean the request was not served (a full queue, no free slot, not started yet, or
    draining), so sending it again runs nothing twice. Every wait is capped at `max_delay`.
    """

    retries: int = 3
    backoff: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, response: httpx.Response) -> float | None:
        """Seconds to wait before sending again, or None to answer with this response."""
        if attempt >= self.retries or response.status_code not in RETRY_STATUSES:
            return None
        hinted = parse_retry_after(response.headers.get("retry-after"))
        wait = hinted if hinted is not None else self.backoff * 2**attempt
        return min(wait, self.max_delay)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    json: Any = None
    params: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Seconds to wait for the answer at least (an invocation's own deadline, plus slack).
    min_timeout: float | None = None
    retry: bool = True


@dataclass(frozen=True)
class Sleep:
    seconds: float


Effect = Request | Sleep


Operation = Generator[Effect, Any, T]


def send(request: Request, policy: RetryPolicy) -> Operation[httpx.Response]:
    attempt = 0
    while True:
        response: httpx.Response = yield request
        delay = policy.delay(attempt, response) if request.retry else None
        if delay is None:
            return response
        attempt += 1
        yield Sleep(delay)


def call(request: Request, policy: RetryPolicy, *ok: int) -> Operation[Any]:
    response = yield from send(request, policy)
    return check(response, *ok)


@dataclass(frozen=True)
class InvokeResult:
    """A successful `/invoke`: the pipeline's outputs, and the run's metadata."""

    outputs: dict[str, Any]
    execution_time: float
    metadata: dict[str, Any]
    body: dict[str, Any]

    @property
    def run_id(self) -> str:
        return str(self.metadata["run_id"])


def request_body(
    parameters: Mapping[str, Any] | None,
    extra: Mapping[str, Any],
    steps: Mapping[str, Any] | None,
    until: str | None,
    timeout: float | None,
) -> dict[str, Any]:
    """The `/invoke` (and `POST /runs`) body; `extra` are parameters given as keywords."""
    body: dict[str, Any] = {"parameters": {**(parameters or {}), **extra}}
    if steps is not None:
        body["steps"] = dict(steps)
    if until is not None:
        body["until"] = until
    if timeout is not None:
        body["timeout"] = timeout
    return body


# Beyond an invocation's own deadline, the server needs a moment to answer its 504.
_DEADLINE_SLACK = 5.0


def invoke(body: dict[str, Any], policy: RetryPolicy) -> Operation[InvokeResult]:
    deadline = body.get("timeout")
    request = Request(
        "POST",
        "/invoke",
        json=body,
        min_timeout=None if deadline is None else float(deadline) + _DEADLINE_SLACK,
    )
    answer = yield from call(request, policy)
    return InvokeResult(answer["outputs"], answer["execution_time"], answer["metadata"], answer)


def submit(
    body: dict[str, Any], webhook_url: str | None, idempotency_key: str | None, policy: RetryPolicy
) -> Operation[dict[str, Any]]:
    if webhook_url is not None:
        body = {**body, "webhook_url": webhook_url}
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    answer: dict[str, Any] = yield from call(
        Request("POST", "/runs", json=body, headers=headers), policy, 200, 201, 202
    )
    return answer


def run_path(run_id: str) -> str:
    return f"/runs/{urllib.parse.quote(run_id, safe='')}"


def get_run(run_id: str, policy: RetryPolicy) -> Operation[dict[str, Any]]:
    record: dict[str, Any] = yield from call(Request("GET", run_path(run_id)), policy)
    return record


def cancel(run_id: str, policy: RetryPolicy) -> Operation[dict[str, Any]]:
    request = Request("POST", run_path(run_id) + "/cancel")
    record: dict[str, Any] = yield from call(request, policy, 200, 202)
    return record


def retry(
    run_id: str, from_step: str | None, idempotency_key: str | None, policy: RetryPolicy
) -> Operation[dict[str, Any]]:
    query = "" if from_step is None else "?" + urllib.parse.urlencode({"from_step": from_step})
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    request = Request("POST", run_path(run_id) + "/retry" + query, headers=headers)
    answer: dict[str, Any] = yield from call(request, policy, 202)
    return answer


def wait(
    run_id: str, timeout: float | None, poll_interval: float, policy: RetryPolicy
) -> Operation[dict[str, Any]]:
    """Poll the run until it ends; its final record. Polls start fast and slow down."""
    deadline = None if timeout is None else time.monotonic() + timeout
    interval = min(0.05, poll_interval)
    while True:
        record = yield from get_run(run_id, policy)
        if record.get("status") in TERMINAL:
            return record
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeoutError(run_id, record)
            interval = min(interval, left)
        yield Sleep(interval)
        interval = min(interval * 2, poll_interval)


def info(policy: RetryPolicy) -> Operation[dict[str, Any]]:
    answer: dict[str, Any] = yield from call(Request("GET", "/info"), policy)
    return answer


def ready() -> Operation[bool]:
    response: httpx.Response = yield Request("GET", "/ready", retry=False)
    if response.status_code == errors.ServiceUnavailable.status_code:
        return False
    check(response)
    return True


class Pager:
    """Walks `GET /runs` page by page with its cursor, up to `limit` runs in all."""

    def __init__(self, status: str | None, limit: int | None, page_size: int) -> None:
        self.status = status
        self.left = limit
        self.page_size = page_size
        self.cursor: str | None = None
        self.done = limit is not None and limit <= 0

    def next_page(self, policy: RetryPolicy) -> Operation[list[dict[str, Any]]] | None:
        if self.done:
            return None
        size = self.page_size if self.left is None else min(self.page_size, self.left)
        params = {"limit": str(size)}
        if self.status:
            params["status"] = self.status
        if self.cursor:
            params["cursor"] = self.cursor
        return self._page(Request("GET", "/runs", params=params), policy)

    def _page(self, request: Request, policy: RetryPolicy) -> Operation[list[dict[str, Any]]]:
        answer = yield from call(request, policy)
        runs: list[dict[str, Any]] = answer["runs"]
        if self.left is not None:
            runs = runs[: self.left]
            self.left -= len(runs)
        self.cursor = answer.get("next_cursor")
        self.done = not self.cursor or self.left == 0 or not runs
        return runs


@dataclass(frozen=True)
class RunEvent:
    """One Server-Sent Event of `GET /runs/{id}/events`."""

    event: str
    data: dict[str, Any]
    id: str | None = None

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL


def run_event(sse: ServerSentEvent) -> RunEvent | None:
    """A `RunEvent` from an SSE event; None for one with no data, which the standard drops
    (httpx-sse yields one at a blank line once an id was seen, e.g. after a ping)."""
    if not sse.data:
        return None
    try:
        data = sse.json()
    except ValueError:
        data = {"text": sse.data}
    if not isinstance(data, dict):
        data = {"value": data}
    return RunEvent(sse.event, data, sse.id or None)


def events_request(run_id: str, last_event_id: str | None) -> Request:
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    return Request("GET", run_path(run_id) + "/events", headers=headers)


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
