"""How the run loops go on: a piece of work tried again and again, and waiting on
`asyncio.Event`s with a timeout, to sleep until woken."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

from service.runs.store_health import is_transient

logger = logging.getLogger("pipeserve.runs")


async def forever(
    work: Callable[[], Awaitable[object]], pause: Callable[[], Awaitable[object]], failed: str
) -> NoReturn:
    """`work`, then `pause`, and again, until cancelled. A failure of `work` never ends
    the loop: it is logged as `failed`, unless it is the database being out of reach
    (the store's health tells that once, not at every try)."""
    while True:
        try:
            await work()
        except Exception as exc:
            if not is_transient(exc):
                logger.exception(failed)
        await pause()


async def wait_and_clear(event: asyncio.Event, timeout: float) -> None:
    """Until `event` is set or `timeout` passes; then clear it for the next wait."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        pass
    event.clear()


async def wait_events(waiting: list[asyncio.Event], timeout: float) -> None:
    """Until every one of `waiting` is set, or `timeout` passes."""
    pending = [e for e in waiting if not e.is_set()]
    if not pending:
        return
    tasks = [asyncio.ensure_future(e.wait()) for e in pending]
    try:
        await asyncio.wait(tasks, timeout=timeout)
    finally:
        for task in tasks:
            task.cancel()
