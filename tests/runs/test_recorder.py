"""The write-behind buffer: a refusal is logged in one line, and the last flush at shutdown
gives up at its deadline against a database out of reach."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from service.observe.metrics import Metrics
from service.runs.calls import until_done
from service.runs.model import NewEvent
from service.runs.recorder import Recorder
from service.runs.records import Deployment
from service.runs.store import RunStore
from service.runs.store_health import first_line

T = TypeVar("T")


async def _call(func: Callable[..., T], *args: Any) -> T:
    return func(*args)


def _recorder(store: RunStore, metrics: Metrics) -> Recorder:
    deployment = Deployment("d", "p", "v1")
    return Recorder(store, deployment, 1000, _call, lambda: {}, metrics)


def _event(run_id: str) -> NewEvent:
    return NewEvent(run_id, 2, "step_started", {"run_id": run_id, "step": "s"}, time.time())


def test_a_refusal_is_logged_in_one_line_even_with_an_empty_message() -> None:
    # What the recorder logs for a refused record: an empty message must not break it
    # (an IndexError there once kept a refused batch in the buffer for ever).
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(ValueError("bad value\nDETAIL: more")) == "bad value"


def test_the_last_flush_gives_up_at_its_deadline(caplog: pytest.LogCaptureFixture) -> None:
    # A real PostgreSQL URL on a port nothing listens on: every write is refused at
    # connect, which is the database being out of reach (tried again until the deadline).
    store = RunStore("postgresql+psycopg://postgres@127.0.0.1:1/test", "d")
    recorder = _recorder(store, Metrics("p", "v1"))
    recorder.add_event(_event("a"))
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="pipeserve.runs"):
        asyncio.run(recorder.last_flush(time.time() + 0.5))
    assert time.monotonic() - started < 3.0
    [record] = [r for r in caplog.records if "they are lost" in r.getMessage()]
    assert (
        "connect" in record.__dict__["error"].lower()
        or "refused" in record.__dict__["error"].lower()
    )
    store.engine.dispose()


def test_until_done_raises_what_is_not_the_database_being_out_of_reach() -> None:
    tries = 0

    async def attempt() -> None:
        nonlocal tries
        tries += 1
        raise ConnectionError("down") if tries < 3 else KeyError("bad")

    with pytest.raises(KeyError):
        asyncio.run(until_done(attempt, max_wait=0.01))
    assert tries == 3


def test_a_refused_checkpoint_is_dropped_alone_and_its_events_still_written(
    postgres_url: str,
) -> None:
    """PostgreSQL refuses a step name beyond the column's 255 characters: the flush writes
    the batch again one run at a time, and then the run's events without its checkpoint."""
    from service.runs.model import Checkpoint
    from tests.runs.test_store import opened, queued_run

    store = opened(postgres_url, "d")
    run, first = queued_run()
    store.submit(run, first, 10)
    metrics = Metrics("p", "v1")
    recorder = _recorder(store, metrics)
    recorder.add_event(_event(run.run_id))
    recorder.add_checkpoint(Checkpoint(
        run_id=run.run_id, step="s" * 300, attempt=1, pipeline_version="v1",
        formats=["json"], sizes=[1], created_at=time.time(), data=b"1",
    ))  # fmt: skip
    asyncio.run(recorder.flush())
    assert [e.kind for e in store.events_after(run.run_id, 0)] == ["queued", "step_started"]
    assert store.checkpoints(run.run_id) == []
    assert metrics.registry is not None
    dropped = {"reason": "refused"}
    assert metrics.registry.get_sample_value("pipeserve_run_records_dropped_total", dropped) == 1
    store.close()
