"""The async client against the app in-process (httpx's ASGITransport): the typed answers
and errors of every call, in milliseconds. The real-server tests beside it stay."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from service import create_app
from service.client import AsyncClient, NotFoundError, StepFailedError, ValidationError
from tests.sample_pipelines import echo, failing
from tests.server.test_inprocess import served, wait_ready


def test_invoke_submit_and_wait_in_process(tmp_path: Path) -> None:
    app = create_app(echo, database_url=f"sqlite:///{tmp_path / 'runs.db'}", home=str(tmp_path))

    async def main() -> None:
        async with served(app) as http:
            await wait_ready(http)
            transport = httpx.ASGITransport(app=app)
            async with AsyncClient("http://app", transport=transport) as client:
                result = await client.invoke(x=1)
                assert result.outputs == {"y": 2}
                assert result.metadata["status"] == "succeeded"
                run = await client.submit({"x": 5})
                record = await run.wait(timeout=30, poll_interval=0.02)
                assert (record["status"], record["outputs"]) == ("succeeded", {"y": 6})
                with pytest.raises(NotFoundError):
                    await client.run("00000000-0000-4000-8000-000000000000").get()
                with pytest.raises(ValidationError) as refused:
                    await client.invoke(x="one")
                assert refused.value.status_code == 422

    asyncio.run(main())


def test_a_step_failure_is_the_clients_step_failed_error(tmp_path: Path) -> None:
    app = create_app(failing, home=str(tmp_path))

    async def main() -> None:
        async with served(app) as http:
            await wait_ready(http)
            transport = httpx.ASGITransport(app=app)
            async with AsyncClient("http://app", transport=transport, retries=0) as client:
                with pytest.raises(StepFailedError) as failed:
                    await client.invoke(message="no")
                assert failed.value.status_code == 500
                assert failed.value.error["type"] == "ValueError"

    asyncio.run(main())
