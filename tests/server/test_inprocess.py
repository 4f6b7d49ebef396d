"""The app in-process (httpx's ASGITransport, no server, no socket): what `create_app`
builds, embedded as another ASGI server would embed it."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from service import create_app
from service.auth import generate_key, hash_key
from service.server.lifecycle import ProcessHooks
from tests.sample_pipelines import echo

Check = Callable[[httpx.AsyncClient], Awaitable[None]]


@asynccontextmanager
async def served(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run, and a client that talks to it in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client


async def wait_ready(client: httpx.AsyncClient, want: str = "ready") -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        body: dict[str, Any] = (await client.get("/ready")).json()
        if body["status"] == want or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.01)


def run(app: Starlette, check: Check) -> None:
    async def main() -> None:
        async with served(app) as client:
            await check(client)

    asyncio.run(main())


def test_create_app_changes_nothing_in_the_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A callable handler, as a server embedding the app has: one the app could chain onto.
    def handler(sig: int, frame: Any) -> None:
        raise AssertionError("not sent")

    previous = signal.signal(signal.SIGTERM, handler)
    # From a working directory not on sys.path, by spec: the loader must not add it.
    monkeypatch.chdir(tmp_path)
    frozen = gc.get_freeze_count()
    path = list(sys.path)
    environ = dict(os.environ)
    try:
        app = create_app("tests.sample_pipelines:echo", home=str(tmp_path))
        _serve_once(app, handler, frozen)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert sys.path == path
    assert dict(os.environ) == environ


def _serve_once(app: Starlette, handler: Any, frozen: int) -> None:

    async def check(client: httpx.AsyncClient) -> None:
        assert (await wait_ready(client))["status"] == "ready"
        answer = await client.post("/invoke", json={"parameters": {"x": 41}})
        assert answer.status_code == 200 and answer.json()["outputs"] == {"y": 42}
        # Started and ready: still no signal handler, no frozen heap.
        assert signal.getsignal(signal.SIGTERM) is handler
        assert gc.get_freeze_count() == frozen

    run(app, check)
    assert signal.getsignal(signal.SIGTERM) is handler
    assert gc.get_freeze_count() == frozen


def test_an_embedded_app_that_cannot_serve_says_so_and_tells_its_hooks(tmp_path: Path) -> None:
    failures: list[BaseException] = []
    app = create_app(
        "tests.sample_pipelines:broken_init",
        home=str(tmp_path),
        hooks=ProcessHooks(failed=failures.append),
    )

    async def check(client: httpx.AsyncClient) -> None:
        assert (await wait_ready(client, "failed"))["status"] == "failed"
        health = await client.get("/health")
        assert (health.status_code, health.json()) == (503, {"status": "failed"})
        refused = await client.post("/invoke", json={})
        assert refused.status_code == 503
        assert refused.json()["error"]["message"] == "on_init failed; the server is stopping"

    run(app, check)
    assert [str(e) for e in failures] == ["cannot load the model"]


def test_bad_requests_get_their_4xx_in_process(tmp_path: Path) -> None:
    app = create_app(echo, home=str(tmp_path))

    async def check(client: httpx.AsyncClient) -> None:
        await wait_ready(client)
        malformed = await client.post(
            "/invoke", content=b"{", headers={"content-type": "application/json"}
        )
        assert (malformed.status_code, malformed.json()["error"]["type"]) == (400, "malformed_json")
        wrong = await client.post("/invoke", json={"parameters": {"x": "one"}})
        assert wrong.status_code == 422
        assert wrong.json()["error"]["errors"][0]["loc"] == ["parameters", "x"]
        missing = await client.get("/nowhere")
        assert (missing.status_code, missing.json()["error"]["type"]) == (404, "not_found")
        method = await client.get("/invoke")
        assert (method.status_code, method.json()["error"]["type"]) == (405, "method_not_allowed")

    run(app, check)


def test_a_batch_run_goes_through_the_store_in_process(tmp_path: Path) -> None:
    app = create_app(echo, database_url=f"sqlite:///{tmp_path / 'runs.db'}", home=str(tmp_path))

    async def check(client: httpx.AsyncClient) -> None:
        await wait_ready(client)
        accepted = await client.post("/runs", json={"parameters": {"x": 1}})
        assert accepted.status_code == 202
        run_id = accepted.json()["run_id"]
        deadline = time.monotonic() + 30
        record = (await client.get(f"/runs/{run_id}")).json()
        while record["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            record = (await client.get(f"/runs/{run_id}")).json()
        assert (record["status"], record["outputs"]) == ("succeeded", {"y": 2})

    run(app, check)


def test_every_route_is_documented_as_it_is_served(tmp_path: Path) -> None:
    app = create_app(echo, home=str(tmp_path))

    async def check(client: httpx.AsyncClient) -> None:
        paths = (await client.get("/openapi.json")).json()["paths"]
        served = {
            route.path: {m.lower() for m in route.methods or ()} - {"head"}
            for route in app.routes
            if isinstance(route, Route)
            and route.path not in ("/", "/docs", "/openapi.json", "/metrics")
        }
        assert {path: set(operations) for path, operations in paths.items()} == served

    run(app, check)


def test_the_document_says_which_routes_need_a_key_as_the_server_answers(tmp_path: Path) -> None:
    key = generate_key()
    app = create_app(echo, home=str(tmp_path), auth_key_hashes=hash_key(key))

    async def check(client: httpx.AsyncClient) -> None:
        headers = {"Authorization": f"Bearer {key}"}
        paths = (await client.get("/openapi.json", headers=headers)).json()["paths"]
        for path, operations in paths.items():
            url = path.replace("{run_id}", "00000000-0000-4000-8000-000000000000")
            for method, operation in operations.items():
                answer = await client.request(method, url, json={})
                needs_key = operation.get("security") != []
                assert (answer.status_code == 401) == needs_key, (method, path)
                assert ("401" in operation["responses"]) == needs_key, (method, path)

    run(app, check)
