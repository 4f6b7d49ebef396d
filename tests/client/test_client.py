"""The Python client (`service.client`) against real servers, sync and async.

Every test runs twice: with `Client`, and with `AsyncClient` seen through a blocking
facade (`Blocking`), so one test body checks both twins call for call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent
from prometheus_client.parser import text_string_to_metric_families

from service import errors
from service.auth import generate_key, hash_key
from service.client import (
    APIError,
    AsyncClient,
    AsyncRunHandle,
    BadRequestError,
    Client,
    ConflictError,
    DeadlineExceededError,
    InvokeResult,
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
from service.client.core import run_event
from service.client.errors import RETRY_STATUSES, check, error_class, parse_retry_after
from tests.conftest import ServerFactory, start_together

KEY = generate_key()
BODY_LIMIT = 4096


class Blocking:
    """An `AsyncClient` (or `AsyncRunHandle`) behind blocking calls, on one event loop."""

    def __init__(self, target: Any, runner: asyncio.Runner) -> None:
        self._target = target
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attribute(*args, **kwargs)
            if inspect.iscoroutine(result):
                result = self._runner.run(result)
            elif inspect.isasyncgen(result):
                result = iter(self._runner.run(_collect(result)))
            if isinstance(result, AsyncRunHandle):
                return Blocking(result, self._runner)
            return result

        return call


async def _collect(items: Any) -> list[Any]:
    return [item async for item in items]


MakeClient = Callable[..., Any]


@pytest.fixture(params=["sync", "async"])
def make_client(request: pytest.FixtureRequest) -> Iterator[MakeClient]:
    """Builds clients of one kind; all are closed at the end of the test."""
    closers: list[Callable[[], None]] = []
    runner = asyncio.Runner() if request.param == "async" else None

    def make(url: str, api_key: str | None = KEY, **options: Any) -> Any:
        if runner is None:
            sync_client = Client(url, api_key, **options)
            closers.append(sync_client.close)
            return sync_client
        async_client = AsyncClient(url, api_key, **options)
        closers.append(lambda: runner.run(async_client.aclose()))
        return Blocking(async_client, runner)

    try:
        yield make
    finally:
        for close in closers:
            close()
        if runner is not None:
            runner.close()


def _env(tmp: Path) -> dict[str, str]:
    return {"PIPESERVE_HOME": str(tmp), "PIPESERVE_AUTH_KEY_HASHES": f"tests:{hash_key(KEY)}"}


@pytest.fixture(scope="module")
def deployments(
    module_servers: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The servers, started at once; auth on."""
    # In on_init for as long as the module runs: /ready answers 503.
    starting = module_servers.start(
        "tests.sample_pipelines:slow_init",
        env={"TEST_INIT_SECONDS": "600", **_env(tmp_path_factory.mktemp("h"))},
        wait=None,
    )
    urls = start_together(
        module_servers,
        {
            # Every kind of parameter, and a failure on demand; bodies up to 4 KiB.
            "showcase": (
                "tests.ui_pipelines:showcase",
                ["--max-body-bytes", str(BODY_LIMIT)],
                _env(tmp_path_factory.mktemp("h")),
            ),
            # An output JSON cannot carry: a 500 that is not a step's failure.
            "unserializable": (
                "tests.sample_pipelines:unserializable", [], _env(tmp_path_factory.mktemp("h"))
            ),
            # One invocation at a time and no wait: a second one gets 503, Retry-After: 1.
            # One batch run at a time, at most one waiting: a second waiting one gets 429.
            "slow": (
                "tests.run_pipelines:slow",
                ["--max-concurrency", "1", "--queue-timeout", "0", "--run-workers", "1",
                 "--max-queued-runs", "1", "--poll-interval", "0.2"],
                _env(tmp_path_factory.mktemp("h")),
            ),
        },
    )  # fmt: skip
    starting.wait_for("/health")
    return {**urls, "starting": starting.url}


@pytest.fixture
def showcase(deployments: dict[str, str]) -> str:
    return deployments["showcase"]


@pytest.fixture
def unserializable(deployments: dict[str, str]) -> str:
    return deployments["unserializable"]


@pytest.fixture
def slow(deployments: dict[str, str]) -> str:
    return deployments["slow"]


def test_info_and_ready(showcase: str, make_client: MakeClient) -> None:
    client = make_client(showcase)
    info = client.info()
    assert info["pipeline_name"] == "showcase"
    assert [s["name"] for s in info["steps"]] == ["prepare", "measure", "label", "combine"]
    assert info["parameters_schema"]["required"] == ["text"]
    assert client.ready() is True


def test_invoke_with_keywords_a_dict_and_options(showcase: str, make_client: MakeClient) -> None:
    client = make_client(showcase)
    result = client.invoke(text="hi", repeat=3, shout=True, colour="red")
    assert isinstance(result, InvokeResult)
    assert result.outputs["summary"] == "fast:red/8"
    assert result.outputs["echo"]["text"] == "HI HI HI"
    assert result.metadata["parameters_used"]["repeat"] == 3
    assert uuid.UUID(result.run_id).version == 4
    assert result.execution_time > 0
    # A dict for names that are options (or not identifiers); keywords win over it.
    merged = client.invoke(
        {"text": "a", "mode": "careful"},
        text="b",
        until="measure",
        steps={"prepare": {"parameters": {"repeat": 4}}},
        timeout=30,
    )
    assert merged.outputs == {"length": len("b b b b")}
    assert merged.metadata["parameters_used"]["text"] == "b"


def test_step_failure_is_typed_and_carries_the_body(showcase: str, make_client: MakeClient) -> None:
    client = make_client(showcase)
    with pytest.raises(StepFailedError) as caught:
        client.invoke(text="fail")
    error = caught.value
    assert error.status_code == 500
    assert error.step == "prepare"
    assert error.error_type == "ValueError"
    assert "asked to fail" in error.message
    assert error.body["success"] is False and error.body["outputs"] is None
    assert error.body["metadata"]["steps"]["prepare"]["status"] == "failed"
    # The run it names is recorded as failed, at that step.
    assert error.run_id is not None
    failed = client.run(error.run_id).wait(timeout=5)
    assert failed["status"] == "failed" and failed["error"]["step"] == "prepare"


def test_validation_error_lists_the_fields(showcase: str, make_client: MakeClient) -> None:
    client = make_client(showcase)
    with pytest.raises(ValidationError) as caught:
        client.invoke(repeat="many", colour="blue")
    error = caught.value
    assert error.status_code == 422 and error.error_type == "validation_error"
    locs = {tuple(e["loc"]) for e in error.errors}
    assert {("parameters", "text"), ("parameters", "repeat"), ("parameters", "colour")} <= locs
    with pytest.raises(ValidationError, match="until"):
        client.invoke(text="x", until="no_such_step")


def test_missing_or_wrong_key_is_unauthorized(showcase: str, make_client: MakeClient) -> None:
    for key in (None, KEY + "x"):
        with pytest.raises(UnauthorizedError) as caught:
            make_client(showcase, api_key=key).info()
        assert caught.value.status_code == 401
        assert caught.value.error_type == "unauthorized"
        assert caught.value.headers["www-authenticate"].startswith("Bearer")


def test_bad_and_too_large_bodies(showcase: str, make_client: MakeClient) -> None:
    client = make_client(showcase)
    deep: object = 0
    for _ in range(40):  # the server's limit is 32 levels
        deep = [deep]
    with pytest.raises(BadRequestError) as bad:
        client.invoke(text="x", extra={"n": deep})
    assert bad.value.status_code == 400 and bad.value.error_type == "bad_request"
    assert "nests deeper" in bad.value.message
    with pytest.raises(PayloadTooLargeError) as large:
        client.invoke(text="x" * 2 * BODY_LIMIT)
    assert large.value.status_code == 413 and large.value.error_type == "payload_too_large"
    # The same client goes on working.
    assert client.invoke(text="x").outputs["summary"] == "fast:green/3"


def test_a_server_error_that_is_not_a_step_failure(
    unserializable: str, make_client: MakeClient
) -> None:
    with pytest.raises(ServerError) as caught:
        make_client(unserializable).invoke()
    error = caught.value
    assert type(error) is ServerError  # not StepFailedError: no step failed
    assert error.status_code == 500 and error.error_type == "output_not_serializable"
    assert error.error["output"] == "opaque"


def test_not_ready_while_starting(deployments: dict[str, str], make_client: MakeClient) -> None:
    client = make_client(deployments["starting"])
    assert client.ready() is False
    with pytest.raises(UnavailableError) as caught:
        make_client(deployments["starting"], retries=0).invoke()
    assert caught.value.retry_after is not None


def test_a_2xx_that_is_not_json_is_a_clear_error(showcase: str) -> None:
    # The dashboard's page: a 200, but HTML, as from a proxy or a wrong URL.
    page = httpx.get(showcase + "/")
    assert page.status_code == 200
    with pytest.raises(APIError) as caught:
        check(page)
    # One `except PipeserveError` catches the client's errors with the server's.
    assert isinstance(caught.value, errors.PipeserveError)
    assert caught.value.status_code == 200 and caught.value.error_type == "not_json"
    assert "<!doctype html>" in caught.value.message.lower()


def test_unknown_run_is_not_found(showcase: str, make_client: MakeClient) -> None:
    with pytest.raises(NotFoundError) as caught:
        make_client(showcase).run("00000000-0000-0000-0000-000000000000").get()
    assert caught.value.status_code == 404
    assert caught.value.error_type == "not_found"


def test_deadline_exceeded_names_the_running_step(slow: str, make_client: MakeClient) -> None:
    with pytest.raises(DeadlineExceededError) as caught:
        make_client(slow).invoke(seconds=5, timeout=0.2)
    error = caught.value
    assert error.status_code == 504 and error.error_type == "timeout"
    assert error.step == "block"
    assert error.body["metadata"]["status"] == "timed_out"
    # Answered at the deadline, while the 5 s step still ran: not when it returned.
    assert error.body["metadata"]["steps"]["block"]["status"] == "running"


def test_submit_wait_follow_and_list(slow: str, make_client: MakeClient) -> None:
    client = make_client(slow)
    key = f"nightly-{time.time_ns()}"
    run = client.submit(seconds=0.05, idempotency_key=key)
    record = run.wait(timeout=15)
    assert record["run_id"] == run.run_id
    assert record["status"] == "succeeded" and record["kind"] == "batch"
    assert record["outputs"] == {"slept": 0.05}
    assert record["parameters_used"] == {"seconds": 0.05}
    assert run.status() == "succeeded"
    assert run.get()["steps"]["block"]["status"] == "completed"
    events = list(run.events())
    assert [e.event for e in events] == ["queued", "step_started", "step_finished", "succeeded"]
    assert events[-1].terminal and events[2].data["step"] == "block"
    assert [e.id for e in events] == ["1", "2", "3", "4"]
    assert [e.event for e in run.events(last_event_id="2")] == ["step_finished", "succeeded"]
    # The same Idempotency-Key gives the same run back.
    assert client.submit(seconds=0.05, idempotency_key=key).run_id == run.run_id

    # Listing walks the cursor pages, newest first, up to `limit`.
    second = client.submit(seconds=0.01)
    second.wait(timeout=15)
    listed = list(client.runs(page_size=1, limit=2))
    assert [r["run_id"] for r in listed] == [second.run_id, run.run_id]
    succeeded = list(client.runs(status="succeeded", page_size=1))
    ids = [r["run_id"] for r in succeeded]
    assert ids[:2] == [second.run_id, run.run_id] and len(ids) == len(set(ids))
    assert {r["status"] for r in succeeded} == {"succeeded"}


def test_cancel_then_conflict(slow: str, make_client: MakeClient) -> None:
    client = make_client(slow)
    run = client.submit(seconds=20)
    deadline = time.monotonic() + 10
    while run.status() != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(WaitTimeoutError) as waited:
        run.wait(timeout=0.2)
    assert waited.value.record["status"] == "running"
    record = run.cancel()
    assert record["cancel_requested"] is True
    final = run.wait(timeout=10)
    assert final["status"] == "cancelled"
    with pytest.raises(ConflictError) as caught:
        run.cancel()
    assert caught.value.status_code == 409 and caught.value.error_type == "conflict"
    with pytest.raises(NotFoundError):
        client.run("no-such-run").cancel()


def test_full_queue_429_is_retried_after_retry_after(slow: str, make_client: MakeClient) -> None:
    client = make_client(slow, retries=0)
    # Long enough that the queue is still full when `late` first tries, on a loaded machine.
    running = client.submit(seconds=3)
    deadline = time.monotonic() + 10
    while running.status() != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    waiting = client.submit(seconds=0)  # the one place in the queue
    with pytest.raises(RateLimitedError) as caught:
        client.submit(seconds=0)
    assert caught.value.status_code == 429
    assert caught.value.error_type == "too_many_requests"
    assert caught.value.retry_after == 1.0
    # Retried after Retry-After (1 s), by when the queue has room again.
    started = time.monotonic()
    late = make_client(slow, retries=8, backoff=0.01).submit(seconds=0)
    assert time.monotonic() - started >= 0.9
    for run in (running, waiting, late):
        assert run.wait(timeout=15)["status"] == "succeeded"


def test_invocations_are_runs_too(showcase: str, make_client: MakeClient) -> None:
    client = make_client(showcase)
    result = client.invoke(text="recorded")
    record = client.run(result.run_id).get()
    assert record["kind"] == "invoke" and record["status"] == "succeeded"
    assert record["parameters_used"]["text"] == "recorded"


def _occupy(url: str, seconds: float) -> concurrent.futures.Future[httpx.Response]:
    """Hold the server's only slot for `seconds`, from another thread."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    body = {"parameters": {"seconds": seconds}}
    headers = {"Authorization": f"Bearer {KEY}"}
    future: concurrent.futures.Future[httpx.Response] | None = None
    deadline = time.monotonic() + 5
    try:
        while time.monotonic() < deadline:
            if future is None or future.done():  # a probe took the slot first: again
                future = pool.submit(httpx.post, url + "/invoke", json=body, headers=headers)
                time.sleep(0.05)
            probe = httpx.post(
                url + "/invoke", json={"parameters": {"seconds": 0}}, headers=headers
            )
            if probe.status_code == 503 and not future.done():
                return future
    finally:
        pool.shutdown(wait=False)
    raise AssertionError("the slot was never taken")


def test_503_is_retried_after_retry_after(slow: str, make_client: MakeClient) -> None:
    busy = _occupy(slow, 2.0)
    # A tiny backoff: only the server's Retry-After (1 s) can make it wait long enough.
    client = make_client(slow, retries=3, backoff=0.01)
    started = time.monotonic()
    result = client.invoke(seconds=0)
    waited = time.monotonic() - started
    assert result.outputs == {"slept": 0}
    assert waited >= 0.9, waited
    assert busy.result().status_code == 200


def _refused_invocations(url: str) -> float:
    """How many /invoke calls the server refused with 503, from its own metrics."""
    text = httpx.get(url + "/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "pipeserve_http_requests_total"
                and labels.get("route") == "/invoke"
                and labels.get("status") == "503"
            ):
                return sample.value
    return 0.0


def test_503_retries_are_bounded(slow: str, make_client: MakeClient) -> None:
    # Held long enough for a loaded machine (the tries below take well under a second).
    busy = _occupy(slow, 4)
    refused = _refused_invocations(slow)
    started = time.monotonic()
    with pytest.raises(UnavailableError) as caught:
        # Each wait capped at 50 ms: three quick tries, all while the slot is taken.
        make_client(slow, retries=2, max_backoff=0.05).invoke(seconds=0)
    # The cap worked: waiting the server's Retry-After (1 s) twice takes 2 s.
    assert time.monotonic() - started < 1.9
    assert not busy.done()
    assert _refused_invocations(slow) - refused == 3  # the first try and two retries
    assert caught.value.status_code == 503
    assert caught.value.retry_after == 1.0
    assert caught.value.error_type == "unavailable"
    with pytest.raises(UnavailableError):
        make_client(slow, retries=0).invoke(seconds=0)
    busy.result()


def test_retry_after_and_event_parsing() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after("soon") is None
    # The blank line after a ping comment, once an id was seen: no event.
    assert run_event(ServerSentEvent(data="", id="3")) is None


# -- the server's declarations, read by the client ------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        # A declared `error.type`: a refinement answers as its status's general class.
        (400, {"type": "malformed_json"}, BadRequestError),
        (422, {"type": "idempotency_key_reused"}, ValidationError),
        (503, {"type": "store_unavailable"}, UnavailableError),
        (500, {"type": "output_not_serializable", "output": "x"}, ServerError),
        (408, {"type": "request_timeout"}, APIError),  # declared, no class of its own
        # The type decides, not the status, when it is declared at another status.
        (409, {"type": "not_found"}, NotFoundError),
        (500, {"type": "unauthorized"}, UnauthorizedError),
        # A type not declared (or none): the status decides.
        (404, {"type": "gone"}, NotFoundError),
        (429, {"type": "slow_down"}, RateLimitedError),
        (418, {"type": "teapot"}, APIError),
        (404, None, NotFoundError),  # not our body (a proxy's page)
        (502, None, ServerError),
        # A step's failure: a 500 naming a `step`, whatever its type (the step's
        # exception class); without a `step`, a 500 is the server's own.
        (500, {"type": "ValueError", "step": "prepare"}, StepFailedError),
        (500, {"type": "conflict", "step": "prepare"}, StepFailedError),
        (500, {"type": "ValueError"}, ServerError),
        (500, {"type": "step_failed"}, ServerError),
        (504, {"type": "timeout", "step": "prepare"}, DeadlineExceededError),
    ],
)
def test_errors_are_typed_by_the_bodys_declared_type_else_the_status(
    status: int, error: dict[str, Any] | None, expected: type[APIError]
) -> None:
    body: dict[str, Any] = {"success": False} if error is None else {"error": error}
    assert error_class(status, body) is expected


def test_each_client_error_stands_for_a_server_declaration() -> None:
    typed = {
        BadRequestError: errors.BadRequest,
        UnauthorizedError: errors.Unauthorized,
        NotFoundError: errors.NotFound,
        ConflictError: errors.Conflict,
        PayloadTooLargeError: errors.PayloadTooLarge,
        ValidationError: errors.ValidationFailed,
        RateLimitedError: errors.TooManyRequests,
        UnavailableError: errors.ServiceUnavailable,
        DeadlineExceededError: errors.DeadlineExceeded,
        ServerError: errors.ServiceError,
        StepFailedError: errors.StepFailed,
    }
    for cls, declared in typed.items():
        assert issubclass(cls, APIError) and issubclass(cls, errors.PipeserveError)
        error = {"type": declared.error_type}
        if declared is errors.StepFailed:
            error["step"] = "s"  # a step's failure is typed by the step it names
        assert error_class(declared.status_code, {"error": error}) is cls
        # The meaning is written once, in service.errors; the client's docs read it.
        assert (cls.__doc__ or "").startswith(f"{declared.status_code} `{declared.error_type}`")
        assert declared.description in (cls.__doc__ or "")
    assert RETRY_STATUSES == {429, 503}


def test_the_declarations_are_enumerable() -> None:
    declared = errors.declared()
    assert declared[0] is errors.ServiceError
    assert len({cls.error_type for cls in declared}) == len(declared)
    assert all(cls.description and "\n" not in cls.description for cls in declared)
    assert errors.by_type("malformed_json") is errors.MalformedJSON
    assert errors.by_type("ValueError") is None
    # A status's general declaration, not a refinement of it.
    assert errors.for_status(400) is errors.BadRequest
    assert errors.for_status(500) is errors.ServiceError
    assert errors.for_status(503) is errors.ServiceUnavailable
    assert errors.for_status(418) is None
    # Both Retry-After answers come from the one mechanism.
    assert errors.TooManyRequests("full", retry_after=3).headers == {"Retry-After": "3"}
    assert errors.StoreUnavailable("down").headers == {"Retry-After": "1"}
    with pytest.raises(TypeError, match="without a description"):

        class Undescribed(errors.ServiceError):
            error_type = "undescribed"


def test_the_one_error_body() -> None:
    assert errors.error_body({"type": "not_found", "message": "m"}) == {
        "success": False,
        "error": {"type": "not_found", "message": "m"},
    }
    # Prophecy's `msg` comes before `error`, as it always did (key order is kept).
    prophecy = errors.error_body({"type": "conflict", "message": "m"}, msg="m")
    assert list(prophecy) == ["success", "msg", "error"]
    # A run's failure keeps the /invoke shape: its metadata and timing beside the error.
    failure = errors.StepFailed("boom", step="s", metadata={"run_id": "r"}, execution_time=1.5)
    body = errors.error_body(failure.body())
    assert list(body) == ["success", "error", "metadata", "execution_time", "outputs"]
    assert body["error"] == {"type": "step_failed", "message": "boom", "step": "s"}
    assert body["metadata"] == {"run_id": "r"} and body["outputs"] is None
    assert failure.details["metadata"] == {"run_id": "r"}  # the error itself is untouched
