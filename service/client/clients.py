"""`Client` and `AsyncClient`: the I/O around the sans-IO operations of `core`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from httpx_sse import EventSource

from service import __version__
from service.client import core
from service.client.core import (
    InvokeResult,
    Operation,
    Pager,
    Request,
    RetryPolicy,
    RunEvent,
    Sleep,
    auth_headers,
)
from service.client.errors import (
    error_for,
)

T = TypeVar("T")

# The server's own default deadline is 300 s: wait a little longer for its answer.
DEFAULT_TIMEOUT = 310.0


class _Base:
    """A deployment at `url`. `timeout`: seconds to wait for an answer; `retries`: how many
    times a 429 or 503 is retried, waiting `Retry-After`, or `backoff` * 2**n seconds (each
    wait at most `max_backoff`). `transport`: an httpx transport, e.g.
    `httpx.HTTPTransport(retries=2)` to retry failed connections, or one over a Unix socket."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        transport: Any = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.policy = RetryPolicy(retries, backoff, max_backoff)
        self._open(
            base_url=self.url,
            headers={"User-Agent": f"pipeserve-client/{__version__}", **auth_headers(api_key)},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
        )

    def _open(self, **options: Any) -> None:
        raise NotImplementedError

    def _request(self, request: Request, stream: bool = False) -> dict[str, Any]:
        options: dict[str, Any] = {
            "method": request.method,
            "url": request.path,
            "json": request.json,
            "params": request.params,
            "headers": request.headers,
        }
        if stream:
            # Events may be minutes apart (a long step): no read timeout on the stream.
            options["timeout"] = httpx.Timeout(self.timeout, read=None)
        elif request.min_timeout is not None and request.min_timeout > self.timeout:
            options["timeout"] = httpx.Timeout(request.min_timeout, connect=10.0)
        return options


class Client(_Base):
    __doc__ = _Base.__doc__

    def _open(self, **options: Any) -> None:
        self._http = httpx.Client(**options)

    def _run(self, operation: Operation[T]) -> T:
        result: Any = None
        while True:
            try:
                effect = operation.send(result)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            if isinstance(effect, Sleep):
                time.sleep(effect.seconds)
                result = None
            else:
                result = self._http.request(**self._request(effect))

    def info(self) -> dict[str, Any]:
        """`GET /info`: the deployment, its steps and edges, its parameter schema."""
        return self._run(core.info(self.policy))

    def ready(self) -> bool:
        """`GET /ready`: True once the server can take work."""
        return self._run(core.ready())

    def invoke(
        self,
        parameters: Mapping[str, Any] | None = None,
        /,
        *,
        steps: Mapping[str, Any] | None = None,
        until: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> InvokeResult:
        """Run the pipeline and answer its outputs: `invoke(model_type="rf")`, or a dict.

        `steps` overrides step parameters (`{"train": {"parameters": {...}}}`), `until`
        runs only what that step needs, `timeout` is the run's deadline in seconds.
        """
        body = core.request_body(parameters, kwargs, steps, until, timeout)
        return self._run(core.invoke(body, self.policy))

    def submit(
        self,
        parameters: Mapping[str, Any] | None = None,
        /,
        *,
        steps: Mapping[str, Any] | None = None,
        until: str | None = None,
        timeout: float | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> RunHandle:
        """Queue a background run (`POST /runs`); a handle to follow it."""
        body = core.request_body(parameters, kwargs, steps, until, timeout)
        answer = self._run(core.submit(body, webhook_url, idempotency_key, self.policy))
        return RunHandle(self, answer["run_id"])

    def run(self, run_id: str) -> RunHandle:
        """A handle on an existing run (e.g. an invocation's `result.run_id`)."""
        return RunHandle(self, run_id)

    def retry(
        self, run_id: str, *, from_step: str | None = None, idempotency_key: str | None = None
    ) -> RunHandle:
        """Run an ended run again (`POST /runs/{id}/retry`): a new run that restores the
        original's checkpoints, but those of `from_step` and after; a handle to follow it.
        With an `idempotency_key`, asking twice queues one run."""
        answer = self._run(core.retry(run_id, from_step, idempotency_key, self.policy))
        return RunHandle(self, answer["run_id"])

    def runs(
        self, status: str | None = None, *, limit: int | None = None, page_size: int = 100
    ) -> Iterator[dict[str, Any]]:
        """Run records, newest first, fetched page by page; at most `limit` of them."""
        pager = Pager(status, limit, page_size)
        while (page := pager.next_page(self.policy)) is not None:
            yield from self._run(page)

    def _events(self, run_id: str, last_event_id: str | None) -> Iterator[RunEvent]:
        request = core.events_request(run_id, last_event_id)
        with self._http.stream(**self._request(request, stream=True)) as response:
            if response.status_code != 200:
                response.read()
                raise error_for(response)
            for sse in EventSource(response).iter_sse():
                if (event := core.run_event(sse)) is not None:
                    yield event

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class RunHandle:
    """One run of a `Client`: follow it, wait for it, cancel it."""

    def __init__(self, client: Client, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r})"

    def get(self) -> dict[str, Any]:
        """The run's record (`GET /runs/{id}`)."""
        return self.client._run(core.get_run(self.run_id, self.client.policy))

    def status(self) -> str:
        return str(self.get()["status"])

    def wait(self, timeout: float | None = None, poll_interval: float = 1.0) -> dict[str, Any]:
        """The run's final record; `WaitTimeoutError` if it has not ended within `timeout`."""
        return self.client._run(core.wait(self.run_id, timeout, poll_interval, self.client.policy))

    def cancel(self) -> dict[str, Any]:
        """Cancel the run: its record (`ConflictError` if it had already ended)."""
        return self.client._run(core.cancel(self.run_id, self.client.policy))

    def events(self, last_event_id: str | None = None) -> Iterator[RunEvent]:
        """The run's events as they happen (past ones first); ends with the run."""
        return self.client._events(self.run_id, last_event_id)


class AsyncClient(_Base):
    """`Client`'s twin for asyncio: the same methods, as coroutines."""

    def _open(self, **options: Any) -> None:
        self._http = httpx.AsyncClient(**options)

    async def _run(self, operation: Operation[T]) -> T:
        result: Any = None
        while True:
            try:
                effect = operation.send(result)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            if isinstance(effect, Sleep):
                await asyncio.sleep(effect.seconds)
                result = None
            else:
                result = await self._http.request(**self._request(effect))

    async def info(self) -> dict[str, Any]:
        return await self._run(core.info(self.policy))

    async def ready(self) -> bool:
        return await self._run(core.ready())

    async def invoke(
        self,
        parameters: Mapping[str, Any] | None = None,
        /,
        *,
        steps: Mapping[str, Any] | None = None,
        until: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> InvokeResult:
        body = core.request_body(parameters, kwargs, steps, until, timeout)
        return await self._run(core.invoke(body, self.policy))

    async def submit(
        self,
        parameters: Mapping[str, Any] | None = None,
        /,
        *,
        steps: Mapping[str, Any] | None = None,
        until: str | None = None,
        timeout: float | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> AsyncRunHandle:
        body = core.request_body(parameters, kwargs, steps, until, timeout)
        answer = await self._run(core.submit(body, webhook_url, idempotency_key, self.policy))
        return AsyncRunHandle(self, answer["run_id"])

    def run(self, run_id: str) -> AsyncRunHandle:
        return AsyncRunHandle(self, run_id)

    async def retry(
        self, run_id: str, *, from_step: str | None = None, idempotency_key: str | None = None
    ) -> AsyncRunHandle:
        answer = await self._run(core.retry(run_id, from_step, idempotency_key, self.policy))
        return AsyncRunHandle(self, answer["run_id"])

    async def runs(
        self, status: str | None = None, *, limit: int | None = None, page_size: int = 100
    ) -> AsyncIterator[dict[str, Any]]:
        pager = Pager(status, limit, page_size)
        while (page := pager.next_page(self.policy)) is not None:
            for record in await self._run(page):
                yield record

    async def _events(self, run_id: str, last_event_id: str | None) -> AsyncIterator[RunEvent]:
        request = core.events_request(run_id, last_event_id)
        async with self._http.stream(**self._request(request, stream=True)) as response:
            if response.status_code != 200:
                await response.aread()
                raise error_for(response)
            async for sse in EventSource(response).aiter_sse():
                if (event := core.run_event(sse)) is not None:
                    yield event

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class AsyncRunHandle:
    """One run of an `AsyncClient`: `RunHandle`'s methods, as coroutines."""

    def __init__(self, client: AsyncClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"AsyncRunHandle({self.run_id!r})"

    async def get(self) -> dict[str, Any]:
        return await self.client._run(core.get_run(self.run_id, self.client.policy))

    async def status(self) -> str:
        return str((await self.get())["status"])

    async def wait(
        self, timeout: float | None = None, poll_interval: float = 1.0
    ) -> dict[str, Any]:
        return await self.client._run(
            core.wait(self.run_id, timeout, poll_interval, self.client.policy)
        )

    async def cancel(self) -> dict[str, Any]:
        return await self.client._run(core.cancel(self.run_id, self.client.policy))

    def events(self, last_event_id: str | None = None) -> AsyncIterator[RunEvent]:
        return self.client._events(self.run_id, last_event_id)
