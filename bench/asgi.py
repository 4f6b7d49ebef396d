"""Drive an ASGI app in-process, without a socket: the app's own cost per request.

Both pipeserve and the floor sit on the same uvicorn, so what differs between them is
exactly what this measures, with no network, no load generator and far less noise.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TextIO

from starlette.applications import Starlette
from starlette.types import Message

from service import create_app
from service.cli.server import freeze_heap
from service.observe.logs import configure_logging
from service.sdk.pipeline import Pipeline
from service.server.lifecycle import ProcessHooks

from . import inprocess

ECHO_BODY = b'{"parameters": {"x": 1}}'


def _scope(path: str, body: bytes, headers: Sequence[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def request(
    app: Starlette, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> tuple[int, bytes]:
    """POST `body` to /invoke; the status and the response body."""
    messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    await app(_scope("/invoke", body, headers), receive, send)
    status = messages[0]["status"]
    return status, b"".join(m.get("body", b"") for m in messages[1:])


@asynccontextmanager
async def started(app: Starlette) -> AsyncIterator[Starlette]:
    """The app with its lifespan run, and (for pipeserve) its on_init finished."""
    async with app.router.lifespan_context(app):
        service = getattr(app.state, "service", None)
        deadline = time.monotonic() + 60
        while service is not None and service.runner is None:
            # Polling on would hang the caller: on_init or the run store failed, or is stuck.
            if service.init_error is not None:
                raise RuntimeError(f"pipeserve did not start: {service.init_error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("pipeserve did not start within 60 s")
            await asyncio.sleep(0.001)
        yield app


async def per_request_us(
    app: Starlette, body: bytes, n: int, headers: Sequence[tuple[bytes, bytes]] = ()
) -> float:
    """Mean CPU microseconds per /invoke over `n` sequential requests (after a warm-up).

    CPU time of the whole process (every thread), not wall time: other processes on a
    shared machine change it far less.
    """
    for _ in range(min(n, 200)):
        status, answer = await request(app, body, headers)
        if status != 200:
            raise RuntimeError(f"/invoke answered {status}: {answer!r}")
    t0 = time.process_time()
    for _ in range(n):
        await request(app, body, headers)
    return (time.process_time() - t0) / n * 1e6


@contextmanager
def server_logging(stream: TextIO) -> Iterator[None]:
    """Logging as `pipeserve serve` sets it up (JSON lines at info), written to `stream`."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("info", "json")
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


@asynccontextmanager
async def production_app(pipeline: Pipeline) -> AsyncIterator[Starlette]:
    """pipeserve's app as `pipeserve serve` runs it (JSON access log at info, to /dev/null;
    a fresh home), started, with run recording off as in the wrk workloads but
    echo-recording: driven in-process with no idle moment, the write-behind flush would
    never get a turn."""
    with tempfile.TemporaryDirectory() as home, open(os.devnull, "w") as devnull:
        # The heap frozen once ready, as the `pipeserve serve` process does.
        hooks = ProcessHooks(ready=freeze_heap)
        app = create_app(pipeline, home=home, record_invocations=False, hooks=hooks)
        with server_logging(devnull):
            async with started(app):
                yield app


async def best_us(app: Starlette, n: int, rounds: int) -> float:
    """The least CPU us per /invoke of `rounds` runs of `n` (per_request_us)."""
    return min([await per_request_us(app, ECHO_BODY, n) for _ in range(rounds)])


def compare(pipeline: Pipeline, floor_app: Starlette, n: int, rounds: int = 3) -> dict[str, Any]:
    """CPU per /invoke of pipeserve (production settings) and of its floor, best of `rounds`."""

    async def main() -> dict[str, float]:
        best = {"floor": float("inf"), "pipeserve": float("inf")}
        async with production_app(pipeline) as app, started(floor_app):
            for _ in range(rounds):
                # Alternated, so both see the same stretches of machine load.
                for kind, target in (("floor", floor_app), ("pipeserve", app)):
                    best[kind] = min(best[kind], await per_request_us(target, ECHO_BODY, n))
        return best

    best = inprocess.run(main())
    return {
        "floor_us": round(best["floor"], 1),
        "pipeserve_us": round(best["pipeserve"], 1),
        "added_us": round(best["pipeserve"] - best["floor"], 1),
        "requests": n,
    }
